"""Fused and fp8 block weights filled tensor by tensor while the files are read.

Fusing q/k/v and w1/w3 after loading (``fuse_rows``) concatenates each block's weights into a new tensor
while the originals still exist: on a GPU the freed pieces stay in the caching allocator (they are too
small for the next fused tensor), so the process reserves the block weights twice. Converting to fp8
after loading likewise holds the bf16 weights first. Here each block's fused buffer is allocated once,
at its final size, on the device, and every stored tensor is copied (or quantized) straight into its
rows as it is read. Rowwise fp8 scales are per output row, so quantizing q, k and v one by one gives
the same bits as quantizing the fused qkv weight after loading.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor, nn

from zimage_mcp.engine.dit.layers import set_unregistered
from zimage_mcp.engine.weights.fp8 import FP8, Float8Linear, released, rowwise

# (module under a block, its checkpoint-named linears, the unregistered fused attribute)
FUSED_GROUPS = (("attention", ("to_q", "to_k", "to_v"), "qkv"), ("feed_forward", ("w1", "w3"), "w13"))
FP8_SINGLES = ("attention.to_out.0", "feed_forward.w2")  # swapped in place, checkpoint name kept


class _Slot:
    """One destination buffer (fused rows, or a single fp8 weight) and where each stored key goes in it."""

    def __init__(self, module: str, attr: str | None, rows: dict[str, tuple[int, int]], shape: tuple[int, int]):
        self.module, self.attr, self.rows, self.shape = module, attr, rows, shape
        self.data: Tensor | None = None
        self.scale: Tensor | None = None
        self.lock = threading.Lock()


class FusedLoad:
    """The placement hook for ``read_files`` (``place``) and the module surgery after ``load_strict`` (``attach``)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], device: torch.device, dtype: torch.dtype, fp8: bool):
        self.device, self.dtype, self.fp8 = device, dtype, fp8
        self.slots: dict[str, _Slot] = {}
        for key in shapes:
            for sub, parts, fused in FUSED_GROUPS:
                suffix = f".{sub}.{parts[0]}.weight"
                if key.endswith(suffix):
                    self._group(shapes, key[: -len(suffix)] + f".{sub}", parts, fused)
            if fp8:
                for single in FP8_SINGLES:
                    if key.endswith(f".{single}.weight") and len(shapes[key]) == 2:
                        name = key[: -len(".weight")]
                        self._add(_Slot(name, None, {key: (0, shapes[key][0])}, shapes[key]))

    def _group(self, shapes: dict[str, tuple[int, ...]], module: str, parts: tuple[str, ...], fused: str) -> None:
        keys = [f"{module}.{p}.weight" for p in parts]
        found = [shapes.get(k) for k in keys]
        if any(s is None or len(s) != 2 or s[1] != found[0][1] for s in found):  # type: ignore[index]
            return  # not a whole group: left to the strict audit
        rows, start = {}, 0
        for k, s in zip(keys, found, strict=True):
            rows[k] = (start, start + s[0])  # type: ignore[index]
            start += s[0]  # type: ignore[index]
        self._add(_Slot(module, fused, rows, (start, found[0][1])))  # type: ignore[index]

    def _add(self, slot: _Slot) -> None:
        for key in slot.rows:
            self.slots[key] = slot

    def _buffers(self, slot: _Slot) -> tuple[Tensor, Tensor | None]:
        with slot.lock:  # the first of the slot's tensors to arrive allocates it, at its final size
            if slot.data is None:
                slot.data = torch.empty(slot.shape, device=self.device, dtype=FP8 if self.fp8 else self.dtype)
                if self.fp8:
                    slot.scale = torch.empty(slot.shape[0], 1, device=self.device, dtype=torch.float32)
        return slot.data, slot.scale

    def place(self, key: str, t: Tensor) -> Tensor | None:
        """Copy (or quantize) one stored tensor into its rows; returns the state-dict entry, None if not ours."""
        slot = self.slots.get(key)
        if slot is None:
            return None
        data, scale = self._buffers(slot)
        a, b = slot.rows[key]
        if tuple(t.shape) != (b - a, slot.shape[1]):
            return None  # the header said otherwise: the strict audit reports it
        if not self.fp8:
            data[a:b].copy_(t)  # cast on the way; on a GPU, straight into the fused buffer
            return data[a:b]
        assert scale is not None
        q, s = rowwise(t.to(device=self.device, dtype=self.dtype))  # bf16 first, as the model held it
        data[a:b].copy_(q)
        scale[a:b].copy_(s)
        # A stand-in with the right shape for the audit and one element of memory; attach() empties it.
        return torch.empty((), device=self.device, dtype=self.dtype).expand(t.shape)

    def complete(self) -> bool:
        return all(slot.data is not None for slot in self.slots.values())

    def attach(self, model: nn.Module) -> None:
        """After ``load_strict``: set the fused projections (and the fp8 layers) the loaded weights live in."""
        for slot in dict.fromkeys(self.slots.values()):
            assert slot.data is not None
            owner = model.get_submodule(slot.module)
            if not self.fp8:
                fused = nn.Linear(slot.shape[1], slot.shape[0], bias=False, device="meta")
                fused.weight = nn.Parameter(slot.data, requires_grad=False)
                set_unregistered(owner, slot.attr, fused)  # the checkpoint-named weights are views of it
                continue
            assert slot.scale is not None
            if slot.attr is not None:
                set_unregistered(owner, slot.attr, Float8Linear(None, quantized=(slot.data, slot.scale)))
                for key in slot.rows:
                    lin = model.get_submodule(key[: -len(".weight")])
                    lin.weight = released(lin.weight)
            else:
                parent_name, _, child = slot.module.rpartition(".")
                parent = model.get_submodule(parent_name)
                layer = Float8Linear(None, released(owner.weight), quantized=(slot.data, slot.scale))
                if isinstance(parent, (nn.ModuleList, nn.Sequential)):
                    parent[int(child)] = layer
                else:
                    setattr(parent, child, layer)
        if self.fp8:
            model.precision = "fp8"

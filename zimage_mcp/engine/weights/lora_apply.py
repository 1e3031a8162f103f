"""Apply a set of LoRAs (each with its own scale) to the transformer and optionally the text encoder.

Mechanism: in-place merge with saved originals of the touched weights.

- For every weight a LoRA touches, a copy of the original is saved once (``backup_device="auto"``: on
  the GPU while it has room, so a swap is device-local copies; else in pinned host memory, restored
  with asynchronous copies), then ``W = W0 + sum_i scale_i * delta_i`` is computed in fp32 and
  written back with ``param.copy_``. Switching sets restores from those copies first, so nothing
  accumulates; ``clear()`` copies every original back, which makes the weights BIT-IDENTICAL to before
  (no ``W + d - d`` round trip in bf16).
- Zero per-step cost: the denoising loop runs plain ``nn.Linear``s.
- No ``torch.compile`` recompilation: parameters are mutated in place, so tensor identity, shape,
  dtype and device never change and a compiled graph keeps reading the same storage.
- The base weights are never reloaded from disk.
- Everything is validated before the first write (scales, files, module names, shapes); an error in
  the middle of a write restores the originals before it propagates.

The alternative, a runtime low-rank path (``x @ A.T @ B.T`` beside each Linear), costs extra matmuls
every step and changes the module tree (a compiled graph would recompile); it is not provided.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from zimage_mcp.engine.errors import InvalidArgument, WeightsError
from zimage_mcp.engine.weights.lora_dialects import Delta, LoraDelta, NormalizedLora, load_lora

SCALE_MIN, SCALE_MAX = -4.0, 4.0  # per-adapter strength accepted by ``set_adapters``
_GPU_HEADROOM = 4 * 2**30  # keep this much device memory free for activations when backing up on the GPU

_Target = tuple[str, str]  # (component, module name)
_Stamp = tuple[int, int]  # (mtime_ns, size) of a file


def check_scale(scale: float) -> float:
    scale = float(scale)
    if not SCALE_MIN <= scale <= SCALE_MAX:  # also refuses NaN
        raise InvalidArgument("loras", f"LoRA scale {scale} is outside the allowed range {SCALE_MIN}..{SCALE_MAX}")
    return scale


def _stamp(path: Path) -> _Stamp:
    try:
        st = path.stat()
    except OSError as e:
        raise WeightsError(f"LoRA file not found: {path}") from e
    return (st.st_mtime_ns, st.st_size)


class LoraManager:
    """Owns the LoRA state of one model (and its text encoder); see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        text_encoder: nn.Module | None = None,
        *,
        backup_device: torch.device | str = "auto",
        cache_size: int = 8,
    ) -> None:
        self._roots: dict[str, nn.Module | None] = {"transformer": model, "text_encoder": text_encoder}
        self._backup_device = None if backup_device == "auto" else torch.device(backup_device)
        self._cache_size = cache_size
        self._cache: OrderedDict[Path, tuple[_Stamp, NormalizedLora]] = OrderedDict()
        self._originals: dict[_Target, Tensor] = {}
        self._active: tuple[tuple[Path, _Stamp, float], ...] = ()

    @property
    def active(self) -> tuple[tuple[Path, float], ...]:
        """The merged adapters as (resolved path, scale), in the order given."""
        return tuple((path, scale) for path, _, scale in self._active)

    def set_adapters(self, adapters: Sequence[tuple[str | Path, float]]) -> None:
        """Make exactly ``adapters`` active; a no-op when the same files and scales already are."""
        wanted = [(Path(p).expanduser().resolve(), check_scale(s)) for p, s in adapters]
        request = tuple((path, _stamp(path), scale) for path, scale in wanted)
        if request == self._active:
            return
        loras = [self._load(path, stamp) for path, stamp, _ in request]
        plan = self._plan(loras, [scale for _, _, scale in request])
        with torch.no_grad():
            try:
                for target in [t for t in self._originals if t not in plan]:
                    self._param(target).copy_(self._originals.pop(target), non_blocking=True)
                for target, terms in plan.items():
                    self._merge(target, terms)
            except BaseException:
                self.clear()
                raise
        self._active = request

    def clear(self) -> None:
        """Remove every adapter: the touched weights get their saved originals back, bit for bit."""
        with torch.no_grad():
            for target, original in self._originals.items():
                self._param(target).copy_(original, non_blocking=True)
        self._originals.clear()
        self._active = ()

    def _backup(self, param: Tensor) -> Tensor:
        """A copy of ``param`` where restoring it is cheapest: the GPU if it has headroom, else pinned RAM."""
        device = self._backup_device
        if device is None:
            device = torch.device("cpu")
            if param.is_cuda:
                free, _ = torch.cuda.mem_get_info(param.device)
                if free > param.numel() * param.element_size() + _GPU_HEADROOM:
                    device = param.device
        if device.type == "cpu" and param.is_cuda:
            host = torch.empty(param.shape, dtype=param.dtype, device="cpu", pin_memory=True)
            return host.copy_(param.detach())
        return param.detach().to(device, copy=True)

    def _load(self, path: Path, stamp: _Stamp) -> NormalizedLora:
        cached = self._cache.get(path)
        if cached is not None and cached[0] == stamp:
            self._cache.move_to_end(path)
            return cached[1]
        lora = load_lora(path)
        self._cache[path] = (stamp, lora)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return lora

    def _param(self, target: _Target) -> Tensor:
        component, name = target
        root = self._roots[component]
        assert root is not None
        for candidate in (name, f"model.{name}"):  # Qwen3ForCausalLM nests Qwen3Model under ``model.``
            try:
                return root.get_submodule(candidate).weight
            except AttributeError:
                continue
        raise KeyError(name)

    def _plan(self, loras: list[NormalizedLora], scales: list[float]) -> dict[_Target, list[tuple[Delta, float]]]:
        """Group the deltas by weight and check every name and shape, before anything is modified."""
        plan: dict[_Target, list[tuple[Delta, float]]] = {}
        for lora, scale in zip(loras, scales, strict=False):
            missing: list[str] = []
            for component, deltas in lora.deltas.items():
                if deltas and self._roots[component] is None:
                    raise WeightsError(
                        f"{lora.source}: holds {len(deltas)} {component} LoRA modules but no {component} was given"
                    )
                for name, delta in deltas.items():
                    try:
                        param = self._param((component, name))
                    except (KeyError, AttributeError):
                        missing.append(f"{component}.{name}")
                        continue
                    if tuple(param.shape) != delta.shape:
                        raise WeightsError(
                            f"{lora.source}: key {delta.key!r} gives a delta of shape {delta.shape} but "
                            f"{component} weight {name}.weight has shape {tuple(param.shape)}; "
                            "the LoRA was made for another architecture or size"
                        )
                    plan.setdefault((component, name), []).append((delta, scale))
            if missing:
                more = f" (and {len(missing) - 20} more)" if len(missing) > 20 else ""
                raise WeightsError(
                    f"{lora.source}: {len(missing)} LoRA modules do not exist in the model "
                    f"(another architecture or size?): {missing[:20]}{more}"
                )
        return plan

    def _merge(self, target: _Target, terms: list[tuple[Delta, float]]) -> None:
        param = self._param(target)
        if target not in self._originals:
            self._originals[target] = self._backup(param)
        w = self._originals[target].to(device=param.device, non_blocking=True).to(torch.float32, copy=True)
        for delta, scale in terms:
            if isinstance(delta, LoraDelta):  # W += s * up @ down without materialising the delta first
                up, down = (m.to(param.device, torch.float32, non_blocking=True) for m in (delta.up, delta.down))
                w.addmm_(up, down, alpha=scale * delta.scale)
            else:
                w.add_(delta.weight(param.device), alpha=scale)
        param.copy_(w)


__all__ = ["LoraManager", "SCALE_MIN", "SCALE_MAX", "check_scale"]

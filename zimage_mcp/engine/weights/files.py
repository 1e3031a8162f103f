"""Reading safetensors (single files and sharded indexes), key-name dialects, and strict loading.

Modules are built on the meta device and filled with ``load_state_dict(assign=True)``. Every key is
accounted for: missing, unexpected or mis-shaped keys raise ``WeightsError`` naming the file and keys.
Only ``.safetensors`` files are read (``require_safetensors``).
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from zimage_mcp.engine.errors import WeightsError
from zimage_mcp.engine.weights import spans as file_reading
from zimage_mcp.engine.weights.spans import DTYPES, Span, file_spans, open_for_reading, read_span
from zimage_mcp.engine.weights.staging import PinnedUploader, release_pinned, uploader_for

StateDict = dict[str, Tensor]
# (index, single file) of a component folder, in diffusers' and in transformers' naming
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors")
HF_WEIGHTS = ("model.safetensors.index.json", "model.safetensors")


def require_safetensors(path: Path) -> None:
    """The engine's one file rule: it reads ``.safetensors`` files and nothing else."""
    if Path(path).suffix.lower() != ".safetensors":
        raise WeightsError(
            f"{path}: only .safetensors files are loaded; pickle is never loaded because it can "
            "execute code (convert the file to .safetensors)"
        )


def read_safetensors(path: Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> StateDict:
    """Read one file tensor by tensor, casting as we go so fp32 files never sit whole in memory."""
    return read_files([path], dtype, device, workers=1)


def place(t: Tensor, dtype: torch.dtype | None, device: torch.device, *, owned: bool = False) -> Tensor:
    """One tensor read from a file (an mmap view, a CPU tensor of its own when ``owned``, or already uploaded
    to ``device``) in its place: ``device``, ``dtype`` (floating point only)."""
    cast = dtype is not None and t.is_floating_point() and t.dtype != dtype
    if device.type == "cpu":
        # Own, aligned storage: mmap views sit at arbitrary file offsets, and CPU kernels pick
        # different code paths by alignment, so results would depend on the file layout.
        return t.to(dtype) if cast else t if owned else t.clone()
    # Copy the stored bytes, then cast on the device: the GPU casts for free, and only this one tensor is
    # ever held in the wider dtype (never a whole fp32 copy of the model).
    t = t.to(device)  # a no-op for a tensor the reader already uploaded
    return t.to(dtype) if cast else t


def shard_files(folder: Path, index_name: str, single_name: str) -> list[Path]:
    """The files of a component folder: the shards named by ``index_name`` or the single file."""
    index = folder / index_name
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise WeightsError(f"{index}: not a valid safetensors index ({e})") from e
        files = sorted({folder / name for name in weight_map.values()})
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise WeightsError(f"{index} lists shards that are missing: {missing}")
        return files
    single = folder / single_name
    if single.is_file():
        return [single]
    raise WeightsError(f"no weights in {folder}: looked for {index_name} and {single_name}")


def read_shapes(files: Iterable[Path]) -> dict[str, tuple[int, ...]]:
    """Every key's shape from the files' headers; no tensor data is read."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        for key, shape, _ in _header(Path(path)):
            shapes[key] = shape
    return shapes


# A placement hook: (file key, the tensor as stored, an mmap view) -> the state-dict entry, or None for
# "not mine" (the tensor is then cast and moved as usual). The fused and fp8 loaders fill their own buffers.
Placer = Callable[[str, Tensor], Tensor | None]
CHUNK_BYTES = 256 << 20  # a unit of parallel reading: big enough to stream, small enough to spread
GPU_READERS = 8  # reader threads per load onto a GPU (benchmarks/bench_load.py measures others)


def read_files(
    files: Iterable[Path],
    dtype: torch.dtype | None,
    device: str | torch.device = "cpu",
    *,
    select: Callable[[str], str | None] | None = None,
    placer: Placer | None = None,
    workers: int | None = None,
) -> StateDict:
    """Read every tensor of ``files`` straight to ``device`` in ``dtype``, in parallel over shards and chunks.

    Each worker opens its own mmap of a file and reads a run of keys; ``select`` maps a file key to its
    state-dict name (None: skip it unread). The result is in file order then key order, whatever the
    threads did, and bit-identical to reading the files one tensor at a time.
    """
    dev = torch.device(device)
    units: list[tuple[Path, list[tuple[str, str]]]] = []
    for path in files:
        path = Path(path)
        run: list[tuple[str, str]] = []
        size = 0
        for key, _, nbytes in _header(path):
            name = key if select is None else select(key)
            if name is None:
                continue
            run.append((key, name))
            size += nbytes
            if size >= CHUNK_BYTES:
                units.append((path, run))
                run, size = [], 0
        if run or not units or units[-1][0] != path:
            units.append((path, run))
    if workers is None:
        workers = min(GPU_READERS, len(units)) if dev.type == "cuda" else min(4, os.cpu_count() or 1, len(units))

    # Byte ranges from our own header parse, so tensors are read with preadv rather than copied out of mmaps
    # (spans.py says why); a dtype torch lacks, or an OS without preadv, takes safetensors' views.
    located = {path: file_spans(path) for path in {u[0] for u in units}} if file_reading.PREAD else {}
    local = threading.local()  # each reader thread's pinned uploader (GPU only)
    made: list[PinnedUploader] = []

    def read(unit: tuple[Path, list[tuple[str, str]]]) -> list[tuple[str, Tensor]]:
        path, keys = unit
        out = []
        if not hasattr(local, "uploader"):
            local.uploader = uploader_for(dev)
            if local.uploader is not None:
                made.append(local.uploader)
        up = local.uploader
        spans = located.get(path, {})
        fd = open_for_reading(path) if spans else -1
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for key, name in keys:
                    span = spans.get(key)
                    t, owned = _read_one(f, key, fd, span, up)
                    placed = placer(name, t) if placer is not None else None
                    out.append((name, place(t, dtype, dev, owned=owned) if placed is None else placed))
        except (SafetensorError, OSError, ValueError, RuntimeError, WeightsError) as e:
            raise WeightsError(f"{path}: cannot read safetensors file (truncated or corrupt?): {e}") from e
        finally:
            if fd >= 0:
                os.close(fd)
        return out

    try:
        if workers <= 1:
            parts = [read(u) for u in units]
        else:
            with ThreadPoolExecutor(max(1, workers), thread_name_prefix="zimage-load") as pool:
                parts = list(pool.map(read, units))
    finally:
        for uploader in made:
            uploader.close()
        if made:
            release_pinned()
    return {name: t for part in parts for name, t in part}


def _read_one(f: Any, key: str, fd: int, span: Span | None, up: PinnedUploader | None) -> tuple[Tensor, bool]:
    """One tensor, and whether it is a CPU tensor of its own: through the uploader to the device when there is
    one, else into host memory (read at its span, or an mmap view that ``place`` copies)."""
    if span is not None:
        return (up.read(fd, span), False) if up is not None else (read_span(fd, span), True)
    t = f.get_tensor(key)
    return (up.upload(t), False) if up is not None else (t, False)  # once, in the stored dtype


# Bytes per element of each safetensors dtype: torch's for those it has (spans.DTYPES), and the unsigned wider
# integers it lacks; anything else is counted as one byte.
_ITEM_BYTES = {**{name: dtype.itemsize for name, dtype in DTYPES.items()}, "U16": 2, "U32": 4, "U64": 8}


def _header(path: Path) -> list[tuple[str, tuple[int, ...], int]]:
    """(key, shape, bytes) of every tensor in a safetensors header, in the file's key order."""
    require_safetensors(path)
    if not path.is_file():
        raise WeightsError(f"missing weights file: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            out = []
            for key in f.keys():
                sl = f.get_slice(key)
                shape = tuple(int(n) for n in sl.get_shape())
                out.append((key, shape, math.prod(shape) * _ITEM_BYTES.get(sl.get_dtype(), 1)))
            return out
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{path}: cannot read safetensors file (truncated or corrupt?): {e}") from e


def load_strict(module: nn.Module, sd: StateDict, source: str, ignore: Callable[[str], bool] = lambda k: False) -> None:
    """Audit keys and shapes against ``module``, then assign. ``ignore`` names tolerated extra keys."""
    expected = module.state_dict(keep_vars=True)
    unexpected = sorted(k for k in sd if k not in expected and not ignore(k))
    missing = sorted(k for k in expected if k not in sd)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys {missing[:10]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys {unexpected[:10]}")
        raise WeightsError(f"{source}: " + "; ".join(parts))
    bad = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in expected.items() if sd[k].shape != v.shape]
    if bad:
        k, got, want = bad[0]
        raise WeightsError(f"{source}: {len(bad)} tensors with wrong shapes, first {k}: file {got}, model {want}")
    module.load_state_dict({k: sd[k] for k in expected}, strict=True, assign=True)


# -- ComfyUI / Lumina2 single-file transformer dialect --------------------------------------------
COMFY_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
COMFY_PREFIX_RENAMES = (("x_embedder.", "all_x_embedder.2-1."), ("final_layer.", "all_final_layer.2-1."))
COMFY_INFIX_RENAMES = (  # (comfy, ours) inside block keys
    (".attention.out.", ".attention.to_out.0."),
    (".attention.q_norm.", ".attention.norm_q."),
    (".attention.k_norm.", ".attention.norm_k."),
)
COMFY_DROPPED = ("norm_final.weight",)  # a Lumina leftover some files carry; unused


def strip_prefix(sd: StateDict, prefixes: tuple[str, ...]) -> StateDict:
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in sd):
            return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in sd.items()}
    return sd


def is_comfy_transformer(sd: StateDict) -> bool:
    keys = strip_prefix(sd, COMFY_PREFIXES)
    return any(k.endswith("attention.qkv.weight") or k.startswith("x_embedder.") for k in keys)


def convert_comfy_transformer(sd: StateDict) -> StateDict:
    """ComfyUI names -> ours: split fused qkv (rows q | k | v), renames from the table, drop leftovers."""
    out: StateDict = {}
    for key, t in strip_prefix(sd, COMFY_PREFIXES).items():
        if key in COMFY_DROPPED:
            continue
        if key.endswith(".attention.qkv.weight"):
            base = key[: -len("qkv.weight")]
            q, k, v = (part.clone() for part in t.chunk(3, dim=0))  # (3D, D) -> three (D, D), own storage
            out[base + "to_q.weight"], out[base + "to_k.weight"], out[base + "to_v.weight"] = q, k, v
            continue
        out[_rename(key, reverse=False)] = t
    return out


def _rename(key: str, reverse: bool) -> str:
    """Apply the ComfyUI <-> ours tables to one key (``reverse``: ours -> ComfyUI)."""
    for comfy, ours in COMFY_PREFIX_RENAMES:
        src, dst = (ours, comfy) if reverse else (comfy, ours)
        if key.startswith(src):
            key = dst + key[len(src) :]
    for comfy, ours in COMFY_INFIX_RENAMES:
        src, dst = (ours, comfy) if reverse else (comfy, ours)
        key = key.replace(src, dst)
    return key


def to_comfy_transformer(sd: StateDict, prefix: str = "") -> StateDict:
    """Ours -> ComfyUI names (the inverse of ``convert_comfy_transformer``); used by the tiny writer."""
    out: StateDict = {}
    for key, t in sd.items():
        if key.endswith(".attention.to_q.weight"):
            base = key[: -len("to_q.weight")]
            out[prefix + base + "qkv.weight"] = torch.cat([sd[base + n + ".weight"] for n in ("to_q", "to_k", "to_v")])
            continue
        if key.endswith((".attention.to_k.weight", ".attention.to_v.weight")):
            continue
        out[prefix + _rename(key, reverse=True)] = t
    return out

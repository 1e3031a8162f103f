"""Where each tensor's bytes lie in a safetensors file, and reading them into memory we own.

safetensors' reader hands out views of an mmap. Copying out of one faults in every 4 KiB page of the file
on the thread that touches it: about 5 million faults for the 20 GB of a Z-Image folder. Knowing each
tensor's byte range, a reader can instead ``preadv`` it into a buffer of its own (a pinned bounce buffer,
or the CPU tensor itself): the kernel copies from the page cache in large requests, with the GIL released.

The format: 8 bytes of little-endian header length N, N bytes of JSON
``{key: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the data, with the
offsets counted from its start.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from zimage_mcp.engine.errors import WeightsError

# Where the OS has no preadv (Windows), readers copy out of safetensors' mmap views as before.
# benchmarks/bench_load.py turns it off for the A/B against those copies.
PREAD = hasattr(os, "preadv")

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit


@dataclass(frozen=True)
class Span:
    """One tensor of a file: its bytes at [offset, offset + nbytes), stored as ``dtype`` in ``shape``."""

    offset: int
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]


def file_spans(path: Path) -> dict[str, Span]:
    """Every tensor of ``path`` whose dtype torch has, by key; other dtypes are left to safetensors' reader."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (header_bytes,) = struct.unpack("<Q", f.read(8))
            if not 0 < header_bytes <= min(MAX_HEADER_BYTES, size - 8):
                raise ValueError(f"header length {header_bytes} does not fit a {size}-byte file")
            header = json.loads(f.read(header_bytes))
        if not isinstance(header, dict):
            raise ValueError(f"the header is a JSON {type(header).__name__}, not an object")
    except (OSError, struct.error, ValueError) as e:  # json's errors are ValueErrors
        raise WeightsError(f"{path}: cannot read safetensors header (truncated or corrupt?): {e}") from e
    start = 8 + header_bytes
    spans: dict[str, Span] = {}
    for key, info in header.items():
        if key == "__metadata__" or not isinstance(info, dict) or info.get("dtype") not in DTYPES:
            continue
        try:
            begin, end = (int(n) for n in info["data_offsets"])
            shape = tuple(int(n) for n in info["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"{path}: tensor {key!r} has a malformed header entry: {e}") from e
        dtype = DTYPES[info["dtype"]]
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes or begin < 0 or start + end > size:
            raise WeightsError(
                f"{path}: tensor {key!r} claims bytes {begin}-{end} of the data for {nbytes} bytes of "
                f"{info['dtype']}{list(shape)}; the file has {size - start} (truncated or corrupt?)"
            )
        spans[key] = Span(start + begin, nbytes, dtype, shape)
    return spans


def byte_view(t: Tensor) -> memoryview:
    """A writable view of a contiguous CPU tensor's bytes, for ``os.preadv`` (without numpy). The caller
    keeps ``t`` alive while the view is in use."""
    n = t.numel() * t.element_size()
    return memoryview((ctypes.c_ubyte * n).from_address(t.data_ptr())).cast("B")


def read_exactly(fd: int, view: memoryview, offset: int) -> None:
    """Fill ``view`` with the file's bytes from ``offset``; a short file is an error, not zeros."""
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise WeightsError(f"file ended {len(view) - done} bytes early at offset {offset + done} (truncated?)")
        done += n


def read_span(fd: int, span: Span) -> Tensor:
    """One tensor into a new CPU tensor of its own (aligned storage, as ``torch.empty`` gives)."""
    out = torch.empty(span.nbytes, dtype=torch.uint8)
    if span.nbytes:
        read_exactly(fd, byte_view(out), span.offset)
    return out.view(span.dtype).reshape(span.shape)  # (nbytes,) uint8 -> shape in the stored dtype


def open_for_reading(path: Path) -> int:
    """A file descriptor for ``read_span``; the OS is told the reads go front to back (readahead on a cold
    page cache)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    return fd

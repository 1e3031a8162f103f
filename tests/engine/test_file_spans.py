"""Reading tensors at their byte ranges (``weights/spans.py``): the same bits as safetensors' own reader for
every dtype the published checkpoints use, and a clear error, never zeros, for a damaged file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from zimage_mcp.engine.errors import WeightsError
from zimage_mcp.engine.weights import spans as spans_mod
from zimage_mcp.engine.weights.files import read_files
from zimage_mcp.engine.weights.spans import file_spans, open_for_reading, read_span


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "bf16": torch.randn(7, 5, generator=g).to(torch.bfloat16),
        "f32": torch.randn(3, 4, 2, generator=g),
        "f16": torch.randn(11, generator=g).to(torch.float16),
        "fp8": torch.randn(4, 4, generator=g).to(torch.float8_e4m3fn),
        "i64": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "u8": torch.arange(9, dtype=torch.uint8),
        "flags": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def test_each_span_reads_the_bits_safetensors_reads(tmp_path: Path) -> None:
    path = tmp_path / "mixed.safetensors"
    save_file(_tensors(), str(path), metadata={"format": "pt"})
    spans = file_spans(path)
    assert set(spans) == set(_tensors())
    fd = open_for_reading(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key, span in spans.items():
                want, got = f.get_tensor(key), read_span(fd, span)
                assert got.dtype == want.dtype and got.shape == want.shape, key
                assert torch.equal(_bits(got), _bits(want)), key
    finally:
        os.close(fd)


def test_reads_by_span_equal_reads_from_mmap_views(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mixed.safetensors"
    save_file(_tensors(), str(path))
    by_span = read_files([path], torch.bfloat16)
    monkeypatch.setattr(spans_mod, "PREAD", False)  # where there is no preadv: safetensors' views
    from_views = read_files([path], torch.bfloat16)
    assert list(by_span) == list(from_views)
    for key, t in from_views.items():
        assert by_span[key].dtype == t.dtype and torch.equal(_bits(by_span[key]), _bits(t))


def test_a_truncated_file_is_refused_naming_the_file_and_tensor(tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    save_file({"a": torch.ones(64), "b": torch.ones(64)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-100])  # the last tensor loses its tail
    with pytest.raises(WeightsError, match=r"cut\.safetensors.*'b'"):
        file_spans(path)
    with pytest.raises(WeightsError, match=r"cut\.safetensors"):
        read_files([path], None)


@pytest.mark.parametrize("head", [b"", b"\x05\x00", (1 << 40).to_bytes(8, "little"), (40).to_bytes(8, "little")])
def test_a_broken_header_is_refused_naming_the_file(tmp_path: Path, head: bytes) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(head + b"{not json" + b"\0" * 40)
    with pytest.raises(WeightsError, match=r"broken\.safetensors"):
        file_spans(path)


def test_a_header_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "listed.safetensors"
    header = b"[1, 2, 3]"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    with pytest.raises(WeightsError, match=r"listed\.safetensors.*not an object"):
        file_spans(path)


def test_a_file_that_shrinks_under_the_reader_is_an_error_not_zeros(tmp_path: Path) -> None:
    path = tmp_path / "shrinks.safetensors"
    save_file({"w": torch.ones(1024)}, str(path))
    span = file_spans(path)["w"]
    os.truncate(path, span.offset + 100)  # after the header was read: another process rewriting the file
    fd = open_for_reading(path)
    try:
        with pytest.raises(WeightsError, match="ended .* early"):
            read_span(fd, span)
    finally:
        os.close(fd)

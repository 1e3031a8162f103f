"""Pillow's encoders through a file descriptor (``store/pillow_encode.py``): the very bytes a ``BytesIO`` gets."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from zimage_mcp.store.pillow_encode import encode_without_gil


def _image() -> Image.Image:
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 256, (96, 160, 3), dtype=np.uint8))


def _via_bytesio(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


@pytest.mark.parametrize(("fmt", "params"), [("JPEG", {"quality": 85}), ("JPEG", {"quality": 95}), ("WEBP", {})])
def test_same_bytes_as_pillow_into_memory(fmt: str, params: dict[str, object]) -> None:
    img = _image()
    data = encode_without_gil(img, fmt, **params)
    assert data == _via_bytesio(img, fmt, **params)
    assert Image.open(io.BytesIO(data)).size == (160, 96)


def test_without_memfd_a_temporary_file_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the OS has no ``memfd_create`` (macOS, Windows), an unnamed temporary file gives the same bytes."""
    img = _image()
    expected = _via_bytesio(img, "JPEG", quality=85)
    monkeypatch.delattr(os, "memfd_create", raising=False)
    assert encode_without_gil(img, "JPEG", quality=85) == expected


def _scratch_files_open() -> int:
    """How many of this process's descriptors are the encoder's scratch memfds."""
    fds = "/proc/self/fd"
    names = []
    for fd in os.listdir(fds):
        try:
            names.append(os.readlink(os.path.join(fds, fd)))
        except OSError:  # closed meanwhile
            pass
    return sum("zimage-encode" in name for name in names)


@pytest.mark.skipif(not (hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")), reason="Linux memfd")
def test_a_failing_encode_leaves_no_descriptor_open() -> None:
    """A save that raises (here an RGBA image as JPEG) closes its scratch file: a server that refuses many bad
    requests must not run out of file descriptors."""
    rgba = Image.new("RGBA", (8, 8))
    for _ in range(20):
        with pytest.raises(OSError):
            encode_without_gil(rgba, "JPEG")
    encode_without_gil(_image(), "JPEG", quality=85)
    assert _scratch_files_open() == 0


def test_a_refused_memfd_falls_back_to_a_temporary_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sandbox (seccomp) or an old kernel may refuse ``memfd_create``: the preview is still made."""
    img = _image()

    def refused(*args: object) -> int:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "memfd_create", refused, raising=False)
    assert encode_without_gil(img, "JPEG", quality=85) == _via_bytesio(img, "JPEG", quality=85)

"""Input resolution for edit_image: ids, URIs, paths, folder allow-list, safe decoding."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from zimage_mcp.contract import InvalidRequestError, Pixels
from zimage_mcp.server.input_images import MAX_PIXELS, load_input, load_mask, open_image, resolve_path
from zimage_mcp.store import ImageStore


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "out")


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    return folder


def _png_bytes(mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG")
    return buf.getvalue()


def test_ids_uris_paths_and_file_uris(store: ImageStore, inputs: Path) -> None:
    stored = store.save(Pixels(40, 30, bytes(40 * 30 * 3)), "png", {"created": "1"})
    assert resolve_path(stored.id, "image", store, (inputs,)) == stored.path
    assert resolve_path(stored.uri, "image", store, (inputs,)) == stored.path
    f = inputs / "photo one.png"
    f.write_bytes(_png_bytes())
    assert resolve_path(str(f), "image", store, (inputs,)) == f.resolve()
    assert resolve_path(f.as_uri(), "image", store, (inputs,)) == f.resolve()
    loaded = load_input(stored.id, "image", store, (inputs,))
    assert loaded.parent_id == stored.id and loaded.image.mode == "RGB"


@pytest.mark.parametrize(
    "ref, words",
    [
        ("0123456789ab", "no image with id"),
        ("zimage://images/../../etc", "not a valid image URI"),
        ("relative/path.png", "must be absolute"),
        ("data:image/png;base64,AAAA", "no base64"),
        ("https://example.com/a.png", "no base64 or URLs"),
    ],
)
def test_bad_references_name_the_field(store: ImageStore, inputs: Path, ref: str, words: str) -> None:
    with pytest.raises(InvalidRequestError, match=words) as info:
        resolve_path(ref, "mask", store, (inputs,))
    assert info.value.field == "mask"


def test_outside_folders_dotdot_and_symlinks_are_refused(tmp_path: Path, store: ImageStore, inputs: Path) -> None:
    outside = tmp_path / "secret.png"
    outside.write_bytes(_png_bytes())
    with pytest.raises(InvalidRequestError, match="outside the allowed folders"):
        resolve_path(str(outside), "image", store, (inputs,))
    with pytest.raises(InvalidRequestError, match="outside the allowed folders"):
        resolve_path(str(inputs / ".." / "secret.png"), "image", store, (inputs,))
    link = inputs / "link.png"
    os.symlink(outside, link)
    with pytest.raises(InvalidRequestError, match="outside the allowed folders"):
        resolve_path(str(link), "image", store, (inputs,))
    with pytest.raises(InvalidRequestError, match="does not exist"):
        resolve_path(str(inputs / "missing.png"), "image", store, (inputs,))


def test_not_an_image_and_bombs(tmp_path: Path, inputs: Path) -> None:
    text = inputs / "notes.png"
    text.write_text("hello")
    with pytest.raises(InvalidRequestError, match="not a readable image"):
        open_image(text, "image")
    bomb = inputs / "bomb.png"
    side = int((MAX_PIXELS * 2.5) ** 0.5)
    Image.new("1", (side, side)).save(bomb, "PNG")  # tiny on disk, huge when decoded
    with pytest.raises(InvalidRequestError, match="too large"):
        open_image(bomb, "image")


@pytest.mark.parametrize("mode", ["CMYK", "L", "RGBA", "P", "LA"])
def test_modes_become_rgb(inputs: Path, mode: str) -> None:
    path = inputs / f"m.{'jpg' if mode == 'CMYK' else 'png'}"
    Image.new(mode, (20, 10)).save(path)
    assert open_image(path, "image").mode == "RGB"


def test_animated_uses_first_frame(inputs: Path) -> None:
    path = inputs / "anim.gif"
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert open_image(path, "image").getpixel((0, 0))[0] > 200


def test_mask_size_and_aspect(store: ImageStore, inputs: Path) -> None:
    same = inputs / "same.png"
    Image.new("L", (80, 60), 255).save(same)
    assert load_mask(str(same), store, (inputs,), (40, 30)).size == (40, 30)
    wrong = inputs / "wrong.png"
    Image.new("L", (50, 50)).save(wrong)
    with pytest.raises(InvalidRequestError, match="aspect ratio") as info:
        load_mask(str(wrong), store, (inputs,), (40, 30))
    assert info.value.field == "mask"

"""The output store: atomic writes, sidecars, PNG text chunks, an index that survives and rebuilds."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zimage_mcp.contract import Pixels
from zimage_mcp.store import ImageStore, atomic_write, image_store, png


def _pixels(color: tuple[int, int, int] = (10, 20, 30)) -> Pixels:
    return Pixels(32, 16, Image.new("RGB", (32, 16), color).tobytes())


def test_save_writes_image_sidecar_and_png_chunks(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    stored = store.save(_pixels(), "png", {"prompt": "a cat", "seed": 7, "created": "1"})
    assert len(stored.id) == 12 and stored.path.is_file()
    assert stored.uri == f"zimage://images/{stored.id}"
    sidecar = json.loads((stored.path.parent / f"{stored.id}.json").read_text())
    assert sidecar["prompt"] == "a cat" and sidecar["seed"] == 7 and sidecar["mime_type"] == "image/png"
    with Image.open(stored.path) as img:
        assert json.loads(img.text["parameters"])["seed"] == 7
    assert not [p for p in stored.path.parent.iterdir() if p.name.startswith(".tmp-")]


def test_formats_and_mime(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    webp = store.save(_pixels(), "webp", {"created": "1"})
    jpeg = store.save(_pixels(), "jpeg", {"created": "2"})
    assert webp.path.suffix == ".webp" and store.get(webp.id).mime_type == "image/webp"
    assert jpeg.path.suffix == ".jpg" and store.read_bytes(jpeg.id)[1] == "image/jpeg"


def test_index_survives_restart_and_rebuilds_when_corrupt(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    first = store.save(_pixels(), "png", {"created": "2026-01-01T00:00:00"})
    second = store.save(_pixels(), "png", {"created": "2026-01-02T00:00:00"})
    assert [i.id for i in ImageStore(tmp_path).recent()] == [second.id, first.id]
    (tmp_path / "index.txt").write_text("{not an index")
    (tmp_path / "images" / ".tmp-abc123").write_bytes(b"partial")  # a crashed write never counts
    (tmp_path / "images" / ".tmp-zzz.json").write_text("{}")
    assert [i.id for i in ImageStore(tmp_path).recent()] == [second.id, first.id]
    (tmp_path / "index.txt").unlink()
    assert [i.id for i in ImageStore(tmp_path).recent()] == [second.id, first.id]
    with (tmp_path / "index.txt").open("a") as f:
        f.write(first.id[:5])  # a line torn by a power cut
    assert [i.id for i in ImageStore(tmp_path).recent()] == [second.id, first.id]


def test_a_save_appends_one_line_and_processes_see_each_others_images(tmp_path: Path) -> None:
    server, cli = ImageStore(tmp_path), ImageStore(tmp_path)  # two processes on one folder, in effect
    first = server.save(_pixels(), "png", {"created": "1"})
    assert [i.id for i in cli.recent()] == [first.id]
    before = (tmp_path / "index.txt").read_bytes()
    second = cli.save(_pixels(), "png", {"created": "2"})
    third = server.save(_pixels(), "png", {"created": "3"})
    assert (tmp_path / "index.txt").read_bytes() == before + f"{second.id}\n{third.id}\n".encode()
    for store in (server, cli):
        assert [i.id for i in store.recent()] == [third.id, second.id, first.id]


def test_the_whole_list_index_of_earlier_versions_is_replaced(tmp_path: Path) -> None:
    import json

    first = ImageStore(tmp_path).save(_pixels(), "png", {"created": "1"})
    (tmp_path / "index.txt").unlink()
    (tmp_path / "index.json").write_text(json.dumps({"version": 1, "ids": [first.id]}))
    store = ImageStore(tmp_path)
    assert store.recover() == [first.id]
    assert not (tmp_path / "index.json").exists()
    assert (tmp_path / "index.txt").read_text() == first.id + "\n"


def test_lookups_never_leave_the_store(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    (tmp_path / "secret.json").write_text("{}")
    (tmp_path / "secret.png").write_bytes(b"\x89PNG not ours")
    for bad in ("../secret", "../../etc/passwd", "/etc/passwd", "secret", "ABCDEF123456", "", "a" * 12):
        assert store.get(bad) is None
        assert store.read_bytes(bad) is None
    assert store.id_for_path(tmp_path / "secret.png") is None


def test_files_get_the_users_umask_not_0600(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        stored = ImageStore(tmp_path).save(_pixels(), "png", {"created": "1"})
    finally:
        os.umask(old)
    for path in (stored.path, stored.path.with_suffix(".json"), tmp_path / "index.txt"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_png_and_sidecar_hold_no_absolute_path(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    parent = store.save(_pixels(), "png", {"created": "1"})
    outside = tmp_path / "private" / "holiday.png"
    edit = {
        "mode": "inpaint",
        "source": str(outside),
        "mask": f"file://{tmp_path}/private/mask.png",
        "control": {"type": "canny", "image": str(parent.path), "scale": 1.0},
        "reference_images": [parent.id, str(outside)],
    }
    child = store.save(_pixels(), "png", {"created": "2", "parent": None, "edit": edit, "path": "/somewhere/x.png"})
    with Image.open(child.path) as img:
        chunk = img.text["parameters"]
    sidecar = child.path.with_suffix(".json").read_text()
    for text in (chunk, sidecar):
        assert str(tmp_path) not in text and "/somewhere" not in text
    saved = json.loads(chunk)["edit"]
    assert saved["source"] == "holiday.png" and saved["mask"] == "mask.png"
    assert saved["control"]["image"] == parent.id and saved["reference_images"] == [parent.id, "holiday.png"]
    assert json.loads(chunk)["file"] == child.path.name
    assert store.get(child.id).metadata["path"] == str(child.path)  # what callers see, not what is stored


def test_a_png_whose_sidecar_was_lost_gets_it_back_from_its_own_parameters(tmp_path: Path) -> None:
    """A PNG's sidecar is not flushed to the disk (the PNG carries the same parameters): after a power cut
    left it empty, or a kill came between the image and its sidecar, the next start restores it."""
    store = ImageStore(tmp_path)
    emptied = store.save(_pixels(), "png", {"prompt": "a cat", "seed": 7, "created": "1"})
    removed = store.save(_pixels((1, 2, 3)), "png", {"prompt": "a dog", "seed": 8, "created": "2"})
    kept_jpeg = store.save(_pixels(), "jpeg", {"prompt": "a cow", "created": "3"})
    sidecar = {s.id: s.path.with_suffix(".json") for s in (emptied, removed, kept_jpeg)}
    original = {i: json.loads(p.read_text()) for i, p in sidecar.items()}
    sidecar[emptied.id].write_bytes(b"")
    sidecar[removed.id].unlink()
    (tmp_path / "index.txt").unlink()

    restarted = ImageStore(tmp_path)
    assert restarted.recover() == [kept_jpeg.id, removed.id, emptied.id]  # newest first
    for image_id in (emptied.id, removed.id):
        assert json.loads(sidecar[image_id].read_text()) == original[image_id]
        assert restarted.get(image_id).metadata["prompt"] == original[image_id]["prompt"]


def test_a_jpeg_without_its_sidecar_stays_unlisted_and_a_foreign_png_is_left_alone(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    jpeg = store.save(_pixels(), "jpeg", {"created": "1"})
    jpeg.path.with_suffix(".json").unlink()
    foreign = tmp_path / "images" / "0123456789ab.png"
    Image.new("RGB", (8, 8)).save(foreign)  # an id-shaped PNG without our parameters
    restarted = ImageStore(tmp_path)
    restarted.recover()
    assert restarted.recent() == [] and restarted.get(jpeg.id) is None
    assert not foreign.with_suffix(".json").exists()


def _noise(width: int, height: int) -> Pixels:
    rng = np.random.default_rng(3)
    return Pixels(width, height, rng.integers(0, 256, width * height * 3, dtype=np.uint8).tobytes())


def test_a_png_is_written_strip_by_strip_with_its_writeback_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PNG goes to disk in pieces as its strips are deflated, each piece's writeback started as it lands:
    the ranges cover the file end to end, and the file is the very PNG ``encode_png`` makes."""
    monkeypatch.setattr(png, "STRIP_ROWS", 16)
    ranges: list[tuple[int, int]] = []
    real = image_store.start_writeback
    monkeypatch.setattr(image_store, "start_writeback", lambda fd, at, n: (ranges.append((at, n)), real(fd, at, n)))
    pixels = _noise(40, 64)
    stored = ImageStore(tmp_path).save(pixels, "png", {"prompt": "strips", "created": "1"})
    data = stored.path.read_bytes()
    assert len(ranges) == 2 + min(png.STRIPS, 64 // 16)  # the header, each strip, the trailer
    assert [at for at, _ in ranges] == [0, *(at + n for at, n in ranges[:-1])] and sum(n for _, n in ranges) == len(
        data
    )
    assert stored.size_bytes == len(data) and {"image_encode", "save"} <= set(stored.timings)
    text = {"parameters": json.dumps(json.loads(Image.open(stored.path).text["parameters"]), sort_keys=True)}
    assert data == png.encode_png(pixels, {**text, "Software": "zimage-mcp"})
    with Image.open(stored.path) as img:
        assert img.tobytes() == pixels.data


def test_a_write_that_fails_half_way_leaves_nothing_behind(tmp_path: Path) -> None:
    def pieces() -> Iterator[bytes]:
        yield b"first half"
        raise OSError("disk full")

    folder = tmp_path / "images"
    folder.mkdir()
    target = folder / "image.png"
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, pieces())
    assert not list(folder.iterdir())
    assert atomic_write(target, iter([b"ab", b"", b"cde"])) == 5 and target.read_bytes() == b"abcde"


def test_a_file_system_that_refuses_the_writeback_advice_still_gets_the_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``posix_fadvise`` is advice: where a file system refuses it, the PNG is saved all the same."""

    def refused(*args: object) -> None:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "posix_fadvise", refused, raising=False)
    pixels = _noise(40, 64)
    stored = ImageStore(tmp_path).save(pixels, "png", {"prompt": "advice", "created": "1"})
    with Image.open(stored.path) as img:
        assert img.tobytes() == pixels.data

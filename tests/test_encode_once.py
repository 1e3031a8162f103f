"""Issue 17: pixels come back from the GPU part, the lock is released, and each image is encoded once.

Order and state only, no timing thresholds: a held encoder proves the next job's GPU part runs meanwhile.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from PIL import Image

import zimage_mcp.store.image_store as image_store
from tests.server_fixtures import (  # noqa: F401
    anyio_backend,
    input_dir,
    registry_file,
    settings,
    tiny_model_dir,
)
from zimage_mcp.contract import GenerationCancelled
from zimage_mcp.registry.settings import Settings
from zimage_mcp.server import build_server
from zimage_mcp.server.jobs import JobManager, SplitWork

SMALL = {"width": 256, "height": 256, "steps": 2}


@pytest.mark.anyio
async def test_next_job_takes_the_gpu_while_the_first_encodes(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, order = image_store.encode_image, []
    first_encoding, release = threading.Event(), threading.Event()

    def held_encoder(pixels: Any, fmt: str, meta: dict) -> bytes:
        if not first_encoding.is_set():
            first_encoding.set()
            order.append("first encoding")
            release.wait(60)
            order.append("first encoded")
        else:
            order.append("second encoding")
            release.set()
        return real(pixels, fmt, meta)

    monkeypatch.setattr(image_store, "encode_image", held_encoder)
    server = build_server(settings)
    results: dict[str, Any] = {}
    async with Client(server) as client:

        async def call(name: str, seed: int) -> None:
            results[name] = await client.call_tool("generate_image", {"prompt": name, "seed": seed, **SMALL})

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "first", 1)
            await anyio.to_thread.run_sync(first_encoding.wait, 120)
            lock_free = not server.state.jobs.lock.held  # the first job is in its CPU part, the GPU is free
            tg.start_soon(call, "second", 2)
    assert lock_free
    assert order == ["first encoding", "second encoding", "first encoded"], order
    for result in results.values():
        assert not result.is_error and Path(result.structured_content["images"][0]["path"]).is_file()


@pytest.mark.anyio
async def test_one_encode_per_image_no_decode_and_the_file_is_what_the_resource_returns(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, calls = image_store.encode_image, []

    def counting(pixels: Any, fmt: str, meta: dict) -> bytes:
        calls.append(meta["id"])
        return real(pixels, fmt, meta)

    def no_decoding(*args: Any, **kwargs: Any) -> Image.Image:
        raise AssertionError("nothing decodes an image file while generating")

    monkeypatch.setattr(image_store, "encode_image", counting)
    async with Client(build_server(settings)) as client:
        with monkeypatch.context() as m:
            m.setattr(Image, "open", no_decoding)
            result = await client.call_tool("generate_image", {"prompt": "a fox", "seed": 5, "count": 2, **SMALL})
        assert not result.is_error, result.content
        images = result.structured_content["images"]
        assert sorted(calls) == sorted(i["id"] for i in images)  # exactly one encode per image
        assert [b.type for b in result.content].count("image") == 2  # previews, from the pixels
        timings = result.structured_content["timings"]
        assert {"gpu", "image_encode", "save", "decode", "total", "queue_wait"} <= set(timings)
        for info in images:
            blob = (await client.read_resource(info["uri"])).contents[0].blob
            on_disk = Path(info["path"]).read_bytes()
            assert base64.b64decode(blob) == on_disk
            with Image.open(io.BytesIO(on_disk)) as png:
                assert png.size == (256, 256) and png.text["Software"] == "zimage-mcp"
                assert json.loads(png.text["parameters"])["id"] == info["id"]


def test_split_work_runs_its_cpu_part_with_the_lock_released() -> None:
    jobs = JobManager(max_queue=4, timeout_seconds=60)
    seen: list[tuple[str, bool]] = []
    values: list[float] = []

    def gpu(progress: Any, should_stop: Any) -> str:
        seen.append(("gpu", jobs.lock.held))
        progress("decoding", 1, 1, "decoded")
        return "pixels"

    def cpu(pixels: str, progress: Any, should_stop: Any) -> str:
        seen.append(("cpu", jobs.lock.held))
        progress("saving", 0, 1, "saving")
        return pixels + " saved"

    job = jobs.create("m", 2)
    assert jobs.execute(job, SplitWork(gpu, cpu), lambda v, t, m: values.append(v)) == "pixels saved"
    assert seen == [("gpu", True), ("cpu", False)] and job.state == "done"
    assert values == sorted(values) and values[-1] == job.total


def test_a_cancel_before_the_cpu_part_saves_nothing() -> None:
    jobs = JobManager(max_queue=4, timeout_seconds=60)
    job = jobs.create("m", 2)
    ran: list[str] = []

    def gpu(progress: Any, should_stop: Any) -> str:
        job.stop.set()  # cancelled once the pixels are on the host
        return "pixels"

    with pytest.raises(GenerationCancelled):
        jobs.execute(job, SplitWork(gpu, lambda *a: ran.append("cpu")), lambda *a: None)
    assert ran == [] and job.state == "cancelled" and not jobs.lock.held


def test_bench_encode_tiny_measures_every_setting() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_encode import SETTINGS, main

    rows = main(["--tiny"])
    assert len(rows) == len(SETTINGS) and all(r["bytes"] > 0 and r["ms"] >= 0 for r in rows)


@pytest.mark.anyio
async def test_the_backends_pixels_are_made_after_the_gpu_lock_is_released(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine backend hands over its decoded images unconverted (on the GPU, not yet copied to the host):
    waiting for the pixels, copying them out and the PNG row filter run in the job's CPU part, with the GPU
    lock free for the next request."""
    import zimage_builtins.engine_backend as bridge

    real, lock_held = bridge._pixels, []
    server = build_server(settings)

    def observed(arrays: Any, index: int) -> Any:
        lock_held.append(server.state.jobs.lock.held)
        return real(arrays, index)

    monkeypatch.setattr(bridge, "_pixels", observed)
    async with Client(server) as client:
        result = await client.call_tool("generate_image", {"prompt": "a kite", "seed": 3, "count": 2, **SMALL})
    assert not result.is_error
    assert lock_held == [False, False]
    for image in result.structured_content["images"]:
        with Image.open(image["path"]) as im:
            assert im.size == (256, 256)

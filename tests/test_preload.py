"""[runtime] preload: variants load (and compile) at server start in the background, through the real
registry, plugins and engine; failures are reported, never fatal; requests are served meanwhile."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.server_fixtures import (  # noqa: F401
    anyio_backend,
    input_dir,
    make_settings,
    registry_file,
    tiny_model_dir,
)
from zimage_mcp.registry import Registry
from zimage_mcp.server import ZImageServer, build_server
from zimage_mcp.server.jobs import FifoLock
from zimage_mcp.server.preload import parse_sizes, preload_variants

pytestmark = pytest.mark.anyio
SMALL = {"width": 256, "height": 256, "steps": 2, "seed": 7}


async def _preloaded(server: ZImageServer, timeout: float = 120) -> dict[str, str]:
    with anyio.fail_after(timeout):
        while server.state.preload is None:
            await anyio.sleep(0.05)
    return server.state.preload


async def test_preloaded_variant_is_loaded_before_any_request(
    tmp_path: Path, registry_file: Path, input_dir: Path
) -> None:
    server = build_server(make_settings(tmp_path, registry_file, input_dir, preload=("z-image-turbo",)))
    async with Client(server) as client:
        assert await _preloaded(server) == {"z-image-turbo": "ready"}
        models = (await client.call_tool("list_models", {})).structured_content
        assert next(v for v in models["variants"] if v["id"] == "z-image-turbo")["loaded"]
        result = await client.call_tool("generate_image", {"prompt": "a cat", **SMALL})
        assert not result.is_error


async def test_a_request_at_start_is_served_while_preloading(
    tmp_path: Path, registry_file: Path, input_dir: Path
) -> None:
    server = build_server(make_settings(tmp_path, registry_file, input_dir, preload=("z-image-turbo",)))
    async with Client(server) as client:
        result = await client.call_tool("generate_image", {"prompt": "a cat", **SMALL})
        assert not result.is_error
        assert await _preloaded(server) == {"z-image-turbo": "ready"}
    assert not server.state.jobs.lock.held


async def test_bad_preloads_are_reported_and_the_server_serves(
    tmp_path: Path, registry_file: Path, input_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="zimage_mcp.server.preload")
    settings = make_settings(
        tmp_path, registry_file, input_dir, preload=("no-such-model", "z-image-turbo"), warm_sizes=("256x250",)
    )
    server = build_server(settings)
    async with Client(server) as client:
        outcome = await _preloaded(server)
        assert "no-such-model" in outcome["no-such-model"]
        assert "height: must be a multiple of 16" in outcome["z-image-turbo"]  # loaded, then the size refused
        assert "preloading no-such-model failed" in caplog.text
        assert not (await client.call_tool("list_models", {})).is_error
        assert not (await client.call_tool("generate_image", {"prompt": "a cat", **SMALL})).is_error


async def test_shutdown_stops_a_preload_waiting_for_the_gpu(
    tmp_path: Path, registry_file: Path, input_dir: Path
) -> None:
    registry = Registry.from_settings(make_settings(tmp_path, registry_file, input_dir))
    lock, stopping = FifoLock(), threading.Event()
    assert lock.try_acquire()  # a job holds the GPU
    try:
        with anyio.fail_after(120):  # a preload that ignores the stop would hang the suite
            async with anyio.create_task_group() as tg:
                done: dict[str, dict[str, str]] = {}

                async def run() -> None:
                    done["outcome"] = await preload_variants(registry, lock, ["z-image-turbo"], [], stopping)

                tg.start_soon(run)
                with anyio.fail_after(60):  # the preload is in line for the GPU before it is told to stop
                    while lock.waiting == 0:
                        await anyio.sleep(0.01)
                stopping.set()
        assert done["outcome"] == {} and not registry.is_loaded("z-image-turbo")
    finally:
        lock.release()


def test_sizes_are_parsed() -> None:
    assert parse_sizes(["1280x720", "720X1280"]) == [(1280, 720), (720, 1280)]

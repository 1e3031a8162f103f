"""[runtime] compile_in_background: a request never waits for the compiler. The first request at a shape
runs eagerly; the server compiles that shape while the GPU is idle; the next request finds it compiled.
Through the real SDK client, registry, plugins and engine (CPU Inductor on the tiny model)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import torch
from mcp import Client
from PIL import Image
from zimage_builtins.engine_backend import EngineBackend

from tests.server_fixtures import anyio_backend, input_dir, make_settings, registry_file, tiny_model_dir  # noqa: F401
from zimage_mcp import hookimpl
from zimage_mcp.registry import Registry
from zimage_mcp.registry.plugin_manager import plugin_manager_from_settings
from zimage_mcp.server import build_server

pytestmark = pytest.mark.anyio
SMALL = {"prompt": "a cat on a mat", "width": 256, "height": 256, "steps": 2, "seed": 5}


def _graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


async def _variant(client: Client, variant_id: str = "z-image-turbo") -> dict[str, Any]:
    models = (await client.call_tool("list_models", {})).structured_content
    return next(v for v in models["variants"] if v["id"] == variant_id)


async def _until_compiled(client: Client, variant_id: str = "z-image-turbo", timeout: float = 600) -> None:
    with anyio.fail_after(timeout):
        while (await _variant(client, variant_id))["compiling"]:
            await anyio.sleep(0.2)


def _pixels(result: Any) -> np.ndarray:
    return np.asarray(Image.open(result.structured_content["images"][0]["path"]).convert("RGB"), dtype=np.int16)


@pytest.mark.slow
async def test_the_first_request_runs_eagerly_and_idle_time_compiles_for_the_next(
    tmp_path: Path, registry_file: Path, input_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="zimage_mcp.server.background_compile")
    torch._dynamo.reset()  # graphs other tests compiled for the same block code would be reused
    server = build_server(make_settings(tmp_path, registry_file, input_dir, optimize="compile"))
    async with Client(server) as client:
        before = _graphs()
        first = await client.call_tool("generate_image", SMALL)
        assert not first.is_error, first.content[0].text
        assert _graphs() == before  # the request compiled nothing
        assert (await _variant(client))["compiling"]  # its shapes wait for the idle GPU

        await _until_compiled(client)
        assert "compiled z-image-turbo in the background: dit at 256x256" in caplog.text
        assert "compiled z-image-turbo in the background: vae at 256x256" in caplog.text
        compiled = _graphs()
        assert compiled > before

        second = await client.call_tool("generate_image", SMALL)
        assert not second.is_error, second.content[0].text
        assert _graphs() == compiled  # it found every part compiled
        assert not (await _variant(client))["compiling"]
    assert not server.state.jobs.lock.held
    # eager and compiled give the same image (fp32 on the CPU: at most one level apart)
    assert np.abs(_pixels(first) - _pixels(second)).max() <= 1


@pytest.mark.slow
async def test_with_it_off_the_request_that_needs_a_compilation_waits_for_it(
    tmp_path: Path, registry_file: Path, input_dir: Path
) -> None:
    torch._dynamo.reset()
    settings = make_settings(tmp_path, registry_file, input_dir, optimize="compile", compile_in_background=False)
    async with Client(build_server(settings)) as client:
        before = _graphs()
        result = await client.call_tool("generate_image", SMALL)
        assert not result.is_error, result.content[0].text
        assert _graphs() > before
        assert not (await _variant(client))["compiling"]


async def test_a_failing_compilation_is_logged_once_and_requests_still_run(
    tmp_path: Path, registry_file: Path, input_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A plugin's backend whose compilation unit raises: one warning, no retry loop, the server serves."""
    caplog.set_level(logging.INFO, logger="zimage_mcp.server.background_compile")

    class CompilerCrashes(EngineBackend):
        units = 0

        def compile_next(self) -> str | None:
            CompilerCrashes.units += 1
            raise RuntimeError("inductor: ptxas ran out of registers")

    settings = make_settings(tmp_path, registry_file, input_dir, optimize="compile")
    turbo = Registry.from_settings(settings).resolve("z-image-turbo").spec

    class Plugin:
        @hookimpl
        def zimage_register_variants(self, register: Any, catalog: Any) -> None:
            register(replace(turbo, id="crashy", title="crashy"), CompilerCrashes, aliases=())

    pm = plugin_manager_from_settings(settings)
    pm.register(Plugin(), name="crashy_plugin")
    server = build_server(settings, Registry.from_settings(settings, pm=pm))
    async with Client(server) as client:
        for seed in (1, 2):
            result = await client.call_tool("generate_image", {**SMALL, "model": "crashy", "seed": seed})
            assert not result.is_error, result.content[0].text
            await anyio.sleep(1.5)  # three idle periods: a retry loop would have run again
        # nothing takes the GPU lock for it any more (each unit's release would restart the idle clock)
        assert server.state.jobs.lock.idle_for() > 1.0
        warnings = [r for r in caplog.records if "background compilation of crashy failed" in r.getMessage()]
    assert CompilerCrashes.units == 1 and len(warnings) == 1
    assert "RuntimeError: inductor: ptxas ran out of registers" in warnings[0].getMessage()

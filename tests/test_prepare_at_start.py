"""``serve`` prepares the engine in the background at start (zimage_prepare), and a plugin that fails to
prepare changes nothing but a warning."""

from __future__ import annotations

import logging

import anyio
import pytest
from mcp import Client

from tests.server_fixtures import anyio_backend, input_dir, registry_file, settings, tiny_model_dir  # noqa: F401
from zimage_mcp import hookimpl
from zimage_mcp.registry import Registry
from zimage_mcp.registry.plugin_manager import load_plugins
from zimage_mcp.registry.settings import Settings
from zimage_mcp.server import build_server

pytestmark = pytest.mark.anyio
SMALL = {"width": 256, "height": 256, "steps": 2, "seed": 3}


async def _logged(caplog: pytest.LogCaptureFixture, words: str) -> bool:
    for _ in range(200):
        if any(words in r.getMessage() for r in caplog.records):
            return True
        await anyio.sleep(0.05)
    return False


async def test_the_engine_is_prepared_in_the_background_while_the_server_answers(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with Client(build_server(settings)) as client:
        assert (await client.list_tools()).tools  # answered at once, whatever the preparation is doing
        assert await _logged(caplog, "engine ready for a first load")
        result = await client.call_tool("generate_image", {"prompt": "a lighthouse", **SMALL})
    assert not result.is_error, result.content[0].text


async def test_a_plugin_that_fails_to_prepare_changes_nothing_but_a_warning(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    class Unprepared:
        @hookimpl
        def zimage_prepare(self, context):  # type: ignore[no-untyped-def]
            raise RuntimeError("no GPU driver found")

    pm = load_plugins()
    pm.register(Unprepared(), name="unprepared")
    caplog.set_level(logging.INFO)
    async with Client(build_server(settings, Registry.from_settings(settings, pm))) as client:
        assert await _logged(caplog, "plugin unprepared could not prepare: RuntimeError: no GPU driver found")
        result = await client.call_tool("generate_image", {"prompt": "a lighthouse", **SMALL})
        models = await client.call_tool("list_models", {})
    assert not result.is_error, result.content[0].text
    assert "unprepared" not in models.content[0].text  # not a registration problem: nothing to list

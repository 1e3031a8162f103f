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


class _Counting:
    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def zimage_prepare(self, context):  # type: ignore[no-untyped-def]
        self.calls += 1


async def test_serve_starts_preparing_before_the_server_exists_and_only_once(settings: Settings) -> None:
    from zimage_mcp.cli.serve import _local_registry

    counting = _Counting()
    pm = load_plugins()
    pm.register(counting, name="counting")
    registry = _local_registry(settings, pm)
    for _ in range(200):  # on its own thread, with no server built yet
        if counting.calls:
            break
        await anyio.sleep(0.05)
    assert counting.calls == 1
    registry.prepare_in_background()
    async with Client(build_server(settings, registry)) as client:  # the server's start asks again
        assert (await client.list_tools()).tools
    assert counting.calls == 1


def test_the_command_line_imports_no_mcp_stack_before_serve_starts_preparing() -> None:
    """What lets `serve` run the plugins' imports first and alone: the CLI's own import pulls in none of the
    MCP stack (about a second of imports on a GPU host, which would hold the GIL against torch's)."""
    import subprocess
    import sys

    code = "import sys, zimage_mcp.cli; print(sorted(m for m in ('mcp', 'pydantic', 'starlette') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_serve_lets_the_preparation_run_alone_first_but_never_waits_on_a_hung_one(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plugins' imports run before the MCP stack's, not beside them (both hold the GIL); a preparation
    that hangs holds the start up for ``PREPARE_ALONE_SECONDS`` at most, then goes on beside the server."""
    import threading
    import time

    from zimage_mcp.cli import serve

    release = threading.Event()
    done: list[float] = []

    class Slow:
        def __init__(self, seconds: float) -> None:
            self.seconds = seconds

        @hookimpl
        def zimage_prepare(self, context):  # type: ignore[no-untyped-def]
            release.wait(self.seconds)
            done.append(time.perf_counter())

    monkeypatch.setattr(serve, "PREPARE_ALONE_SECONDS", 2.0)
    quick = load_plugins(block=["zimage_builtins"])
    quick.register(Slow(0.3), name="slow")
    serve._local_registry(settings, quick)
    returned = time.perf_counter()
    assert done and done[0] <= returned  # the preparation had ended before the server would be imported

    done.clear()
    stuck = load_plugins(block=["zimage_builtins"])
    stuck.register(Slow(120), name="stuck")
    started = time.perf_counter()
    try:
        registry = serve._local_registry(settings, stuck)
        assert 1.9 <= time.perf_counter() - started < 10 and not done  # waited its two seconds, no more
        assert not registry.preparation.wait(0)
    finally:
        release.set()

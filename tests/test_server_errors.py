"""Backend failures become readable ToolErrors, the GPU lock is freed, and the server keeps serving.

An inline plugin (llm-style, registered on the plugin manager) adds failing variants next to the real ones.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from tests.server_fixtures import anyio_backend, input_dir, registry_file, settings, tiny_model_dir  # noqa: F401
from zimage_mcp import hookimpl
from zimage_mcp.contract import Capabilities, OutOfMemoryError, UnsupportedEditError, WeightsLocation
from zimage_mcp.registry import Registry
from zimage_mcp.registry.plugin_manager import plugin_manager_from_settings
from zimage_mcp.registry.settings import Settings
from zimage_mcp.server import build_server

pytestmark = pytest.mark.anyio


class Failing:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def generate(self, request: Any, progress: Any, should_stop: Any) -> Any:
        raise self.exc

    def unload(self) -> None:
        pass

    def vram_bytes(self) -> int:
        return 0


def _plugin(model_dir: Path, base_spec: Any) -> object:
    class FailingVariants:
        @hookimpl
        def zimage_register_variants(self, register: Any, catalog: Any) -> None:
            for vid, exc in (
                ("oom-test", OutOfMemoryError("CUDA out of memory at 64x64")),
                ("crash-test", RuntimeError("kaboom\nsecret traceback line")),
                ("edit-test", UnsupportedEditError("img2img is not implemented in the engine")),
            ):
                spec = replace(
                    base_spec,
                    id=vid,
                    title=vid,
                    kind="turbo",
                    weights=WeightsLocation(path=str(model_dir)),
                    capabilities=Capabilities(img2img=True),
                )
                register(spec, lambda s, ctx, e=exc: Failing(e), aliases=())

    return FailingVariants()


@pytest.fixture
def server_with_failures(settings: Settings, tiny_model_dir: Path) -> Any:
    turbo = Registry.from_settings(settings).resolve("z-image-turbo").spec
    pm = plugin_manager_from_settings(settings)
    pm.register(_plugin(tiny_model_dir, turbo), name="failing_test_plugin")
    return build_server(settings, Registry.from_settings(settings, pm=pm))


async def test_backend_errors_are_tool_errors(server_with_failures: Any) -> None:
    args = {"prompt": "x", "width": 256, "height": 256, "steps": 2}
    async with Client(server_with_failures) as client:
        oom = await client.call_tool("generate_image", {**args, "model": "oom-test"})
        assert (
            oom.is_error and "out of GPU memory" in oom.content[0].text and "Lower width/height" in oom.content[0].text
        )
        crash = await client.call_tool("generate_image", {**args, "model": "crash-test"})
        text = crash.content[0].text
        assert crash.is_error and "RuntimeError" in text and "kaboom" in text and "secret" not in text
        made = await client.call_tool("generate_image", {**args, "model": "oom-test", "wait": False})
        failed = await client.call_tool("get_job", {"job_id": made.structured_content["job_id"], "wait_seconds": 10})
        assert failed.is_error and "out of GPU memory" in failed.content[0].text
        assert not server_with_failures.state.jobs.lock.held
        ok = await client.call_tool("list_models", {})
        assert not ok.is_error


async def test_unsupported_edit_path_is_named(server_with_failures: Any, input_dir: Path) -> None:
    from PIL import Image

    source = input_dir / "src.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(source)
    async with Client(server_with_failures) as client:
        result = await client.call_tool("edit_image", {"image": str(source), "prompt": "x", "model": "edit-test"})
    assert result.is_error
    assert "not available in the engine yet" in result.content[0].text and "img2img" in result.content[0].text

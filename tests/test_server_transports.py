"""Real subprocess transports: stdio, and the --attach stdio front forwarding to an HTTP daemon."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mcp import Client, StdioServerParameters

from tests.server_fixtures import (  # noqa: F401
    REPO,
    anyio_backend,
    http_server,
    input_dir,
    registry_file,
    server_env,
    settings,
    tiny_model_dir,
)
from zimage_mcp.registry.settings import Settings

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_stdio_subprocess(settings: Settings) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "zimage_mcp", "serve"], env=server_env(settings), cwd=str(REPO)
    )
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with Client(params, read_timeout_seconds=120) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert "generate_image" in tools
        result = await client.call_tool(
            "generate_image",
            {"prompt": "a tree", "width": 256, "height": 256, "steps": 2},
            progress_callback=on_progress,
        )
        assert not result.is_error, result.content
        image_id = result.structured_content["images"][0]["id"]
        read = await client.read_resource(f"zimage://images/{image_id}")
        assert read.contents[0].mime_type == "image/png"
    assert progress and progress == sorted(progress)


async def test_attach_forwards_tools_resources_and_progress(
    settings: Settings, http_server: tuple[str, subprocess.Popen[bytes]]
) -> None:
    base, _ = http_server
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "zimage_mcp", "serve", "--attach", f"{base}/mcp"],
        env=server_env(settings),
        cwd=str(REPO),
    )
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with Client(params, mode="legacy", read_timeout_seconds=120) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert {"generate_image", "edit_image", "list_models", "get_job", "cancel_job"} <= set(tools)
        assert tools["generate_image"].output_schema
        result = await client.call_tool(
            "generate_image",
            {"prompt": "a tree", "width": 256, "height": 256, "steps": 2},
            progress_callback=on_progress,
        )
        assert not result.is_error, result.content
        image_id = result.structured_content["images"][0]["id"]
        templates = (await client.list_resource_templates()).resource_templates
        assert any(t.uri_template == "zimage://images/{id}" for t in templates)
        read = await client.read_resource(f"zimage://images/{image_id}/metadata")
        assert image_id in read.contents[0].text
    assert progress and progress == sorted(progress)


def test_stdio_stdout_carries_only_protocol(settings: Settings) -> None:
    init = (
        '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
        '"capabilities":{},"clientInfo":{"name":"t","version":"0"}}}\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "zimage_mcp", "serve"],
        input=init.encode(),
        env=server_env(settings, ZIMAGE_MCP_LOG_LEVEL="DEBUG"),
        cwd=str(REPO),
        capture_output=True,
        timeout=60,
    )
    lines = [line for line in proc.stdout.decode().splitlines() if line.strip()]
    assert lines, proc.stderr.decode()[-2000:]
    assert all(json.loads(line)["jsonrpc"] == "2.0" for line in lines)
    assert b"[req " in proc.stderr  # logs went to stderr, with a request-id field

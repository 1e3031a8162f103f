"""The HTTP daemon as a subprocess: MCP over streamable HTTP, Origin/token checks, body limit, /metrics."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx2
import pytest
from mcp import Client

from tests.server_fixtures import (  # noqa: F401
    anyio_backend,
    free_port,
    http_server,
    input_dir,
    registry_file,
    settings,
    start_http_server,
    stop,
    tiny_model_dir,
)
from zimage_mcp.registry.settings import Settings
from zimage_mcp.server.attach import daemon_client

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_generate_over_http_with_progress_and_metrics(
    http_server: tuple[str, subprocess.Popen[bytes]], mode: str
) -> None:
    base, _ = http_server
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with Client(f"{base}/mcp", mode=mode) as client:
        result = await client.call_tool(
            "generate_image",
            {"prompt": "a boat", "width": 256, "height": 256, "steps": 2},
            progress_callback=on_progress,
        )
        bad = await client.call_tool("generate_image", {"prompt": "a boat", "model": "nope"})
    assert not result.is_error, result.content
    assert bad.is_error
    assert progress == sorted(progress) and progress
    metrics = httpx2.get(f"{base}/metrics", timeout=5)
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'zimage_requests_total{tool="generate_image",variant="z-image-turbo"}' in text
    assert 'zimage_generation_seconds_count{variant="z-image-turbo"}' in text
    assert "zimage_failures_total{" in text and "zimage_queue_depth 0" in text


def test_origin_and_body_limit(http_server: tuple[str, subprocess.Popen[bytes]]) -> None:
    base, _ = http_server
    foreign = httpx2.post(f"{base}/mcp", json=INIT, headers={**HEADERS, "Origin": "https://evil.example"}, timeout=5)
    assert foreign.status_code == 403
    local = httpx2.post(f"{base}/mcp", json=INIT, headers={**HEADERS, "Origin": "http://localhost:3000"}, timeout=5)
    assert local.status_code == 200
    huge = httpx2.post(f"{base}/mcp", content=b"x" * (5 * 1024 * 1024), headers=HEADERS, timeout=10)
    assert huge.status_code == 413


@pytest.fixture
def token_server(settings: Settings) -> Iterator[str]:
    port = free_port()
    proc = start_http_server(settings, port, ZIMAGE_MCP_TOKEN="s3cret", ZIMAGE_MCP_ALLOWED_ORIGINS="https://ok.example")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


async def test_bearer_token(token_server: str) -> None:
    base = token_server
    assert httpx2.post(f"{base}/mcp", json=INIT, headers=HEADERS, timeout=5).status_code == 401
    wrong = httpx2.post(f"{base}/mcp", json=INIT, headers={**HEADERS, "Authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 401
    assert httpx2.get(f"{base}/metrics", timeout=5).status_code == 401
    allowed = {**HEADERS, "Authorization": "Bearer s3cret", "Origin": "https://ok.example"}
    assert httpx2.post(f"{base}/mcp", json=INIT, headers=allowed, timeout=5).status_code == 200
    async with daemon_client(f"{base}/mcp", "s3cret") as client:
        assert (await client.call_tool("list_models", {})).structured_content["default_model"] == "z-image-turbo"

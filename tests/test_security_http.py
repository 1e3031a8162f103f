"""HTTP daemon security: loopback bind by default, Origin 403, bearer token 401 (constant time), body limit."""

from __future__ import annotations

import hmac
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.server_fixtures import (  # noqa: F401
    free_port,
    input_dir,
    registry_file,
    settings,
    start_http_server,
    stop,
    tiny_model_dir,
)
from zimage_mcp.cli import _parser, main
from zimage_mcp.registry.settings import Settings
from zimage_mcp.server import http_app
from zimage_mcp.server.http_app import GuardMiddleware
from zimage_mcp.server.metrics import Metrics

pytestmark = pytest.mark.slow
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
TOKEN = "correct-horse-battery-staple"


@pytest.fixture
def daemon(settings: Settings) -> Iterator[tuple[str, subprocess.Popen[bytes], int]]:
    port = free_port()
    proc = start_http_server(settings, port, ZIMAGE_MCP_TOKEN=TOKEN)
    try:
        yield f"http://127.0.0.1:{port}", proc, port
    finally:
        stop(proc)


def _listening(port: int) -> list[str]:
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if int(hex_port, 16) == port and state == "0A":
                found.append(address)
    return found


def test_default_bind_is_loopback(daemon: tuple[str, Any, int]) -> None:
    assert _parser().parse_args(["serve"]).host == "127.0.0.1"
    _, _, port = daemon
    assert _listening(port) == ["0100007F"]  # 127.0.0.1 only, not 0.0.0.0 or ::


def test_non_loopback_bind_without_token_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--transport", "http", "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "ZIMAGE_MCP_TOKEN" in capsys.readouterr().err


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "null",
        "http://localhost.evil.example",
        "http://127.0.0.1.nip.io",
        "file://",
        "http://[::2]",
    ],
)
def test_foreign_origin_gets_403(daemon: tuple[str, Any, int], origin: str) -> None:
    base, _, _ = daemon
    auth = {**HEADERS, "Authorization": f"Bearer {TOKEN}", "Origin": origin}
    assert httpx2.post(f"{base}/mcp", json=INIT, headers=auth, timeout=5).status_code == 403
    ok = {**HEADERS, "Authorization": f"Bearer {TOKEN}", "Origin": "http://localhost:6274"}
    assert httpx2.post(f"{base}/mcp", json=INIT, headers=ok, timeout=5).status_code == 200


@pytest.mark.parametrize(
    "auth", [None, "Bearer nope", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer", ""]
)
def test_missing_or_wrong_token_gets_401(daemon: tuple[str, Any, int], auth: str | None) -> None:
    base, _, _ = daemon
    headers = dict(HEADERS) if auth is None else {**HEADERS, "Authorization": auth}
    reply = httpx2.post(f"{base}/mcp", json=INIT, headers=headers, timeout=5)
    assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer"
    assert httpx2.get(f"{base}/metrics", headers=headers, timeout=5).status_code == 401


def test_body_limit_holds(daemon: tuple[str, Any, int]) -> None:
    base, _, _ = daemon
    auth = {**HEADERS, "Authorization": f"Bearer {TOKEN}"}
    huge = httpx2.post(f"{base}/mcp", content=b"x" * (5 * 1024 * 1024), headers=auth, timeout=10)
    assert huge.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed size is counted
        for _ in range(6):
            yield b"y" * (1024 * 1024)

    streamed = httpx2.post(f"{base}/mcp", content=chunks(), headers=auth, timeout=10)
    assert streamed.status_code == 413
    assert httpx2.get(f"{base}/metrics", headers=auth, timeout=5).status_code == 200  # still serving


async def _asgi(app: Any, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> int:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/mcp", "headers": headers}
    await app(scope, receive, send)
    return int(sent[0]["status"])


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch, anyio_backend: str) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(http_app.hmac, "compare_digest", spy)

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = GuardMiddleware(inner, metrics=Metrics(), token=TOKEN, allowed_origins=(), max_body_bytes=1024)
    assert await _asgi(app, [(b"authorization", b"Bearer wrong")]) == 401
    assert await _asgi(app, [(b"authorization", f"Bearer {TOKEN}".encode())]) == 200
    assert len(calls) == 2 and all(isinstance(a, bytes) for a, _ in calls)  # hmac.compare_digest on every check
    assert await _asgi(app, [(b"authorization", f"Bearer {TOKEN}".encode()), (b"content-length", b"2048")]) == 413

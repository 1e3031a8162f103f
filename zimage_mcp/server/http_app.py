"""The streamable-HTTP daemon: the SDK's app wrapped in Origin, token and body-size checks, plus /metrics.

One daemon keeps one copy of the weights for many clients. Checks, in order, for every HTTP request:

1. ``Origin``: absent, ``http(s)://localhost``, ``127.0.0.1`` or ``[::1]`` (any port), or one of
   ``settings.allowed_origins`` -> allowed; anything else -> 403 (browser DNS-rebinding defence).
2. Bearer token, when ``settings.token`` is set: ``Authorization: Bearer <token>`` compared with
   ``hmac.compare_digest``; missing or wrong -> 401.
3. Body size: a declared or streamed body over ``max_body_bytes`` -> 413.

``GET /metrics`` (behind the same checks) returns Prometheus text.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

from zimage_mcp.server.metrics import Metrics

Message = MutableMapping[str, Any]
MAX_BODY_BYTES = 4 * 1024 * 1024
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    if origin is None:
        return True
    origin = origin.strip().rstrip("/")
    if origin in {o.rstrip("/") for o in allowed}:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and (parts.hostname or "") in LOCAL_HOSTS


class GuardMiddleware:
    """Pure ASGI middleware (lifespan passes through untouched, so the SDK's session manager starts)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        token: str | None,
        allowed_origins: tuple[str, ...],
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.token = token
        self.allowed_origins = allowed_origins
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not origin_allowed(headers.get("origin"), self.allowed_origins):
            await _plain(send, 403, "Forbidden: Origin not allowed")
            return
        if self.token is not None and not self._token_ok(headers.get("authorization", "")):
            await _plain(send, 401, "Unauthorized: bearer token required", [(b"www-authenticate", b"Bearer")])
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _plain(send, 413, f"Request body over {self.max_body_bytes} bytes")
            return
        if scope["path"].rstrip("/") == "/metrics" and scope["method"] == "GET":
            body = self.metrics.render().encode()
            await _plain(send, 200, body, content_type=b"text/plain; version=0.0.4; charset=utf-8")
            return
        await self._forward_limited(scope, receive, send)

    def _token_ok(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        expected = self.token or ""
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), expected.encode())

    async def _forward_limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the whole body first (MCP messages are small), refusing it as soon as it passes the limit.

        Counting while the SDK reads would let an over-long chunked body surface as a 500 from inside
        the app; reading it up front answers 413 before the app sees a byte.
        """
        if scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body = message.get("body", b"")
            seen += len(body)
            if seen > self.max_body_bytes:
                await _plain(send, 413, f"Request body over {self.max_body_bytes} bytes")
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _plain(
    send: Callable[[Message], Awaitable[None]],
    status: int,
    body: str | bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = b"text/plain; charset=utf-8",
) -> None:
    data = body.encode() if isinstance(body, str) else body
    headers = [(b"content-type", content_type), (b"content-length", str(len(data)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def build_http_app(mcp: Any, *, host: str = "127.0.0.1", max_body_bytes: int = MAX_BODY_BYTES) -> ASGIApp:
    """Wrap ``mcp.streamable_http_app()``; Origin/Host checks are ours (the SDK's rebinding check is off)."""
    state = mcp.state
    inner = mcp.streamable_http_app(
        streamable_http_path="/mcp",
        max_request_body_size=max_body_bytes,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        host=host,
    )
    return GuardMiddleware(
        inner,
        metrics=state.metrics,
        token=state.settings.token,
        allowed_origins=tuple(state.settings.allowed_origins),
        max_body_bytes=max_body_bytes,
    )


def serve_http(mcp: Any, host: str, port: int, log_level: str = "info") -> None:
    import uvicorn

    app = build_http_app(mcp, host=host)
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), access_log=False, lifespan="on")

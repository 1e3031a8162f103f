"""``zimage-mcp serve --attach URL``: a stdio front for a running HTTP daemon.

Hosts that only speak stdio (Claude Desktop) get the daemon's single copy of the weights. This is a
low-level ``Server`` whose handlers forward tools, resources and templates to an ``mcp.Client``
connected to the daemon; progress notifications of a forwarded tool call are relayed back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp import Client
from mcp.server import Server, ServerRequestContext
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import (
    CallToolRequestParams,
    CallToolResult,
    ListResourcesResult,
    ListResourceTemplatesResult,
    ListToolsResult,
    PaginatedRequestParams,
    ReadResourceRequestParams,
    ReadResourceResult,
)

from zimage_mcp import __version__
from zimage_mcp.contract import ZImageMCPError


class DaemonUnavailable(ZImageMCPError):
    """The daemon behind ``--attach`` cannot be used; the message says why and what to do."""


async def check_daemon(url: str, token: str | None = None, serve_hint: str = "zimage-mcp serve") -> None:
    """Connect once before serving, so a daemon that is down or refuses the token is one clear error."""
    hello = {"jsonrpc": "2.0", "id": 0, "method": "ping"}
    headers = {"Accept": "application/json, text/event-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        async with create_mcp_http_client(headers=headers) as http:
            status = (await http.post(url, json=hello)).status_code
        if status in (401, 403):
            raise DaemonUnavailable(describe_daemon_failure(url, PermissionError(f"HTTP {status}"), serve_hint))
        async with daemon_client(url, token) as client:
            await client.list_tools()
    except DaemonUnavailable:
        raise
    except Exception as exc:
        raise DaemonUnavailable(describe_daemon_failure(url, exc, serve_hint)) from exc


def describe_daemon_failure(url: str, exc: BaseException, serve_hint: str = "zimage-mcp serve") -> str:
    """One or two lines for a failed connection to the daemon: the cause and the fix."""
    leaves = list(_leaves(exc))  # httpx or httpx2 errors, matched by name (the SDK picks the package)
    status = next(
        (
            getattr(e.response, "status_code", None)
            for e in leaves
            if hasattr(e, "response") and type(e).__name__ == "HTTPStatusError"
        ),
        None,
    )
    if status is None:
        status = next(
            (int(str(e)[5:]) for e in leaves if isinstance(e, PermissionError) and str(e) in ("HTTP 401", "HTTP 403")),
            None,
        )
    if status == 401:
        return (
            f"the daemon refused the token: set ZIMAGE_MCP_TOKEN to the daemon's token (the one {url} was started with)"
        )
    if status == 403:
        return f"the daemon at {url} refused this client (403): check ZIMAGE_MCP_ALLOWED_ORIGINS on the daemon"
    if any(isinstance(e, ConnectionError) or type(e).__name__ in ("ConnectError", "ConnectTimeout") for e in leaves):
        return (
            f"no zimage-mcp daemon at {url}: start it with "
            f"`{serve_hint} --transport http --host 127.0.0.1 --port <port>`, or fix the URL"
        )
    first = leaves[0] if leaves else exc
    detail = (str(first).strip().splitlines() or [""])[0][:200]
    return f"cannot use the zimage-mcp daemon at {url}: {type(first).__name__}: {detail}"


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups and their causes."""
    found: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
            continue
        found.append(e)
        if e.__cause__ is not None and e.__cause__ not in found:
            todo.append(e.__cause__)
    return found


def daemon_client(url: str, token: str | None = None) -> Client:
    """An SDK client for the daemon at ``url`` (``http://127.0.0.1:8765/mcp``), with the bearer token if any."""
    if token is None:
        return Client(url)
    from mcp.client.streamable_http import streamable_http_client

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    return Client(streamable_http_client(url, http_client=http))


def build_attach_server(url: str, token: str | None = None) -> Server[Client]:
    @asynccontextmanager
    async def lifespan(_: Server[Client]) -> AsyncIterator[Client]:
        async with daemon_client(url, token) as client:
            yield client

    async def list_tools(ctx: ServerRequestContext[Client], params: PaginatedRequestParams | None) -> ListToolsResult:
        return await ctx.lifespan_context.list_tools()

    async def call_tool(ctx: ServerRequestContext[Client], params: CallToolRequestParams) -> CallToolResult:
        async def relay(progress: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(progress, total, message)

        result = await ctx.lifespan_context.call_tool(params.name, params.arguments, progress_callback=relay)
        return _strip_meta(result)

    async def list_resources(
        ctx: ServerRequestContext[Client], params: PaginatedRequestParams | None
    ) -> ListResourcesResult:
        return _strip_meta(await ctx.lifespan_context.list_resources())

    async def list_templates(
        ctx: ServerRequestContext[Client], params: PaginatedRequestParams | None
    ) -> ListResourceTemplatesResult:
        return _strip_meta(await ctx.lifespan_context.list_resource_templates())

    async def read_resource(ctx: ServerRequestContext[Client], params: ReadResourceRequestParams) -> ReadResourceResult:
        return _strip_meta(await ctx.lifespan_context.read_resource(params.uri))

    return Server(
        "zimage-mcp-attach",
        version=__version__,
        instructions=f"Forwards to the zimage-mcp daemon at {url}.",
        lifespan=lifespan,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
    )


def _strip_meta(result: Any) -> Any:
    """Drop the daemon's serverInfo ``_meta`` so the front reports its own identity."""
    meta = getattr(result, "meta", None)
    if meta:
        kept = {k: v for k, v in meta.items() if not k.startswith("io.modelcontextprotocol/")}
        return result.model_copy(update={"meta": kept or None})
    return result

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

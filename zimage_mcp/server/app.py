"""The MCP server: image tools and resources on top of the variant registry, the store and the GPU queue.

Never imports torch or ``zimage_mcp.engine``: backends come from the registry, lazily, on the first
generation (never in the lifespan), and hand back PNG bytes.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
from mcp import MCPError
from mcp.server import MCPServer
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp.types import INVALID_PARAMS, CallToolResult, InputRequiredResult
from pydantic import ValidationError

from zimage_mcp import __version__
from zimage_mcp.registry import Registry, Settings
from zimage_mcp.server.app_state import AppState
from zimage_mcp.server.background_compile import compile_when_idle
from zimage_mcp.server.jobs import JobManager
from zimage_mcp.server.preload import preload_variants
from zimage_mcp.server.prompts import register_prompts
from zimage_mcp.server.tool_models import describe_models
from zimage_mcp.server.tools import ImageTools, register_tools, request_id_var
from zimage_mcp.server.wording import QUOTE_LIMIT, describe_validation, did_you_mean, quote, unknown_arguments
from zimage_mcp.store import ImageStore

log = logging.getLogger(__name__)
TOOL_NAMES = frozenset({"generate_image", "edit_image", "list_models", "get_job", "cancel_job"})
RESOURCE_KINDS = "resources are zimage://images/<12 hex id>, its /metadata, zimage://gallery/recent, zimage://models"
IMAGE_URI = re.compile(r"^zimage://images/([0-9a-f]{12})$")
MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"RIFF", "image/webp"))
INSTRUCTIONS = """Local image generation with the Z-Image family on this machine's GPU.
Call list_models to see variants, LoRAs and what is installed. generate_image makes images from
text; edit_image changes an earlier result (refer to it by its id or zimage://images/<id> URI) or
an image file. Every result is saved to disk: the text names the absolute path and the seed. For
long runs on hosts with a ~60 s limit pass wait=false and poll get_job."""


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (the MCP request id of the current tool call) to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class ZImageServer(MCPServer):
    """``MCPServer`` that serves stored images with their real MIME type and counts every tool call.

    ``zimage_tool_calls_total{tool, outcome}`` counts each call once: ``ok``, ``error`` (a ToolError,
    including argument validation) or ``cancelled`` (the caller cancelled or timed out).
    """

    state: AppState

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        tool = name if name in TOOL_NAMES else "unknown"
        try:
            schema = self._checked_schema(name, arguments or {})
            try:
                result = await super().call_tool(name, arguments, context)
            except ToolError as exc:
                if isinstance(exc.__cause__, ValidationError):
                    raise ToolError(describe_validation(name, exc.__cause__, schema)) from exc.__cause__
                raise
        except anyio.get_cancelled_exc_class():
            self.state.metrics.record_call(tool, "cancelled")
            raise
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError) or getattr(exc, "bad_names", False):
                self.state.metrics.record_failure(
                    tool, str((arguments or {}).get("model") or "default")[:64], "arguments"
                )
            self.state.metrics.record_call(tool, "error")
            raise
        except BaseException:
            self.state.metrics.record_call(tool, "error")
            raise
        is_error = isinstance(result, CallToolResult) and result.is_error
        self.state.metrics.record_call(tool, "error" if is_error else "ok")
        return result

    def _checked_schema(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The tool's input schema, after refusing an unknown tool (JSON-RPC -32602) or unknown argument names."""
        found = self._tool_manager.get_tool(name)
        if found is None:
            names = ", ".join(sorted(t.name for t in self._tool_manager.list_tools()))
            hint = did_you_mean(name, TOOL_NAMES)
            raise MCPError(code=INVALID_PARAMS, message=f"unknown tool {quote(name, 80)}{hint}; tools: {names}")
        valid = list(found.parameters.get("properties", {}))
        unknown = [key for key in arguments if key not in valid]
        if unknown:
            error = ToolError(unknown_arguments(name, unknown, valid))
            error.bad_names = True  # type: ignore[attr-defined]
            raise error
        return found.parameters

    async def get_prompt(self, name: str, arguments: dict[str, Any] | None = None, context: Any = None) -> Any:
        """An unknown prompt name or bad prompt arguments answer JSON-RPC -32602 (no traceback in the log)."""
        found = self._prompt_manager.get_prompt(name)
        if found is None:
            names = ", ".join(p.name for p in self._prompt_manager.list_prompts())
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"unknown prompt {quote(name, 80)}"
                f"{did_you_mean(name, [p.name for p in self._prompt_manager.list_prompts()])}; "
                f"prompts: {names}",
            )
        valid = [a.name for a in found.arguments or []]
        unknown = [key for key in arguments or {} if key not in valid]
        missing = [a.name for a in found.arguments or [] if a.required and a.name not in (arguments or {})]
        if unknown or missing:
            problems = [f"missing {', '.join(missing)}"] if missing else []
            problems += [f"unknown {quote(k, 60)}{did_you_mean(k, valid)}" for k in unknown]
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"prompt {name}: {'; '.join(problems)}; arguments: {', '.join(valid) or 'none'}",
            )
        return await super().get_prompt(name, arguments, context)

    async def read_resource(
        self, uri: Any, context: Any = None
    ) -> Iterable[ReadResourceContents] | InputRequiredResult:
        try:
            results = await super().read_resource(uri, context)
        except ResourceNotFoundError as exc:
            # The SDK would echo the whole URI (message, error data and log line); a caller may send 100 kB.
            message = str(exc)
            if len(str(uri)) > QUOTE_LIMIT:
                message = f"no resource at {quote(str(uri))}; {RESOURCE_KINDS}"
            log.info("resource %s not found", quote(str(uri), 80))
            raise MCPError(code=INVALID_PARAMS, message=message, data={"uri": quote(str(uri))}) from None
        if isinstance(results, InputRequiredResult) or not IMAGE_URI.match(str(uri)):
            return results
        fixed = []
        for item in results:
            data = item.content
            mime = next((m for magic, m in MAGIC if isinstance(data, bytes) and data.startswith(magic)), None)
            fixed.append(ReadResourceContents(content=data, mime_type=mime or item.mime_type, meta=item.meta))
        return fixed


def _not_found(image_id: str) -> str:
    shown = image_id if image_id.isalnum() else repr(image_id)[:80]
    return f"no image with id {shown} (ids are 12 lowercase hex characters, as returned by generate_image)"


def _register_resources(mcp: ZImageServer, state: AppState) -> None:
    store = state.store

    @mcp.resource("zimage://images/{id}", name="image", title="Generated image", mime_type="image/png")
    def image(id: str) -> bytes:
        """A saved image at full resolution (PNG, WebP or JPEG as generated)."""
        found = store.read_bytes(id)
        if found is None:
            raise ResourceNotFoundError(_not_found(id))
        return found[0]

    @mcp.resource(
        "zimage://images/{id}/metadata", name="image_metadata", title="Image parameters", mime_type="application/json"
    )
    def image_metadata(id: str) -> dict[str, Any]:
        """Every parameter an image was made with (prompt, model, seed, steps, LoRAs, parent...)."""
        found = store.get(id)
        if found is None:
            raise ResourceNotFoundError(_not_found(id))
        return found.metadata

    @mcp.resource("zimage://gallery/recent", name="gallery", title="Recent images", mime_type="application/json")
    def gallery() -> dict[str, Any]:
        """The 50 most recent images, newest first."""
        keys = ("id", "uri", "path", "prompt", "model", "seed", "width", "height", "created", "parent")
        return {"images": [{k: img.metadata.get(k) for k in keys} for img in store.recent(50)]}

    @mcp.resource("zimage://models", name="models", title="Model catalogue", mime_type="application/json")
    def models() -> dict[str, Any]:
        """The same catalogue list_models returns."""
        return describe_models(state.registry, str(store.root)).model_dump()


def build_server(settings: Settings, registry: Registry | None = None) -> ZImageServer:
    """A ready server. ``registry`` defaults to ``Registry.from_settings(settings)`` (cheap: no weights)."""
    if registry is None:
        registry = Registry.from_settings(settings)
    store = ImageStore(settings.output_dir)
    store.recover()  # after a crash: drop stale temp files, rebuild the index if it misses sidecars
    state = AppState(
        settings=settings,
        registry=registry,
        store=store,
        # Ray Serve's registry (zimage_mcp.scale) runs several generations at once; a local GPU runs one.
        jobs=JobManager(
            settings.max_queue,
            settings.job_timeout_seconds,
            max_concurrent=getattr(registry, "max_concurrent", 1),
            on_device=registry.run_on_device,
        ),
    )
    state.metrics.queue_depth = lambda: state.jobs.queue_depth

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[AppState]:
        stopping = threading.Event()  # tells a preload waiting in a worker thread to give up
        # Imports and the device context ahead of the first request (plugins' zimage_prepare); `serve` has
        # usually started it already, before importing this server (Registry.prepare_in_background).
        if settings.prepare_at_start:
            state.registry.prepare_in_background()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_idle_unloader, state)
            if settings.compile_in_background:
                tg.start_soon(compile_when_idle, state.registry, state.jobs.lock, stopping)
            if settings.preload:
                tg.start_soon(_preload, state, stopping)
            try:
                yield state
            finally:
                stopping.set()
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_unload_all, state)

    mcp = ZImageServer(
        name="zimage-mcp",
        title="Z-Image",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
    )
    mcp.state = state
    register_tools(mcp, ImageTools(state))
    _register_resources(mcp, state)
    register_prompts(mcp)
    return mcp


async def _idle_unloader(state: AppState) -> None:
    """Free idle weights now and then, but never while a job holds or waits for the GPU."""
    period = max(1.0, min(30.0, float(state.settings.idle_unload_seconds) / 2 or 30.0))
    while True:
        await anyio.sleep(period)
        if state.jobs.lock.try_acquire():
            try:
                released = await anyio.to_thread.run_sync(state.registry.release_idle, time.monotonic())
                if released:
                    log.info("unloaded idle variants: %s", ", ".join(released))
            except Exception:
                log.exception("idle unload failed")
            finally:
                state.jobs.lock.release()


async def _preload(state: AppState, stopping: threading.Event) -> None:
    state.preload = await preload_variants(
        state.registry, state.jobs.lock, state.settings.preload, state.settings.warm_sizes, stopping
    )


def _unload_all(state: AppState) -> None:
    try:
        state.registry.unload_all()
    except Exception:
        log.exception("unloading at shutdown failed")

"""The MCP tool functions; their docstrings are the tool descriptions the calling model reads.

Every argument is checked before any GPU work (pydantic bounds in the schema, then
``zimage_mcp.server.preparation``); every refusal is a ``ToolError`` whose text names the field and what is
allowed. Never imports torch.
"""

from __future__ import annotations

import contextvars
import inspect
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from zimage_mcp.contract import InvalidRequestError, UnknownLoraError, UnknownVariantError, ZImageMCPError
from zimage_mcp.server.generation import Outcome, describe_failure, make_work
from zimage_mcp.server.jobs import Job, QueueFullError
from zimage_mcp.server.preparation import MAX_PROMPT_CHARS, Prepared, prepare_edit, prepare_generate
from zimage_mcp.server.preview import build_content
from zimage_mcp.server.tool_models import (
    ControlInput,
    Count,
    Format,
    Guidance,
    ImageResult,
    LoraList,
    Model,
    ModelsInfo,
    OutputFormat,
    PreviewArg,
    PreviewMode,
    Seed,
    Size,
    Steps,
    Strength,
    Wait,
    WaitSeconds,
    describe_models,
)
from zimage_mcp.server.wording import quote

if TYPE_CHECKING:
    from mcp.server import MCPServer

    from zimage_mcp.server.app_state import AppState

log = logging.getLogger(__name__)
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("zimage_request_id", default="-")
Prompt = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description=f"What to draw (1-{MAX_PROMPT_CHARS} characters, any language)",
    ),
]


def asks_for_progress(ctx: Context, token_in_meta: bool) -> bool:
    """Whether a call may want progress notifications. ``token_in_meta`` (``AppState.progress_token_in_meta``):
    the transport puts a wanted progress token in the request's ``_meta``, and without one the SDK would
    drop every report."""
    return not token_in_meta or "progress_token" in (ctx.request_context.meta or {})


class ImageTools:
    """The tool functions, bound to the shared ``AppState``."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def generate_image(
        self,
        ctx: Context,
        prompt: Prompt,
        model: Model = None,
        negative_prompt: Annotated[
            str | None, Field(max_length=MAX_PROMPT_CHARS, description="What to avoid (CFG variants only)")
        ] = None,
        width: Size = None,
        height: Size = None,
        steps: Steps = None,
        guidance: Guidance = None,
        seed: Seed = None,
        count: Count = 1,
        loras: LoraList = [],  # noqa: B006 (pydantic copies defaults)
        output_format: Format = "png",
        preview: PreviewArg = "thumbnail",
        wait: Wait = True,
    ) -> Annotated[CallToolResult, ImageResult]:
        """Generate images from a text prompt on the local GPU.

        Width and height must be multiples of 16 within the variant's limits (see list_models;
        typically 256-2048, default 1024x1024). steps/guidance default per variant (Turbo: 8 steps,
        guidance 0; Base: more steps with CFG). seed: 0-4294967295. The result names the absolute
        file path, the seed and the time; it links zimage://images/<id> and shows a small preview.
        Pass the returned id to edit_image to change the picture. Slow hosts: wait=false returns a
        job_id; poll get_job.

        Prompts: 1-4000 characters in any language or script (Chinese, Japanese, Korean and emoji
        are fine). Longer prompts are refused, never truncated. Control characters (other than
        newline and tab) are removed before use; a prompt that is empty after that is refused.
        """
        self._bind(ctx)
        with self._refusals("generate_image", model):
            prepared = prepare_generate(
                self.state.registry,
                model=model,
                loras=loras,
                prompt=prompt,
                negative_prompt=negative_prompt,
                width=width,
                height=height,
                steps=steps,
                guidance=guidance,
                seed=seed,
                count=count,
            )
        return await self._run(ctx, "generate_image", prepared, output_format, preview, wait)

    async def edit_image(
        self,
        ctx: Context,
        image: Annotated[
            str, Field(max_length=4096, description="Image id, zimage://images/<id>, absolute path or file:// URI")
        ],
        prompt: Annotated[
            str | None, Field(max_length=MAX_PROMPT_CHARS, description="What the edited image should show")
        ] = None,
        instruction: Annotated[str | None, Field(max_length=MAX_PROMPT_CHARS, description="Alias of prompt")] = None,
        model: Model = None,
        strength: Strength = None,
        mask: Annotated[
            str | None, Field(max_length=4096, description="Inpaint mask (white = repaint), same size/aspect")
        ] = None,
        control: Annotated[ControlInput | None, Field(description="Structural hint {type, image, scale}")] = None,
        reference_images: Annotated[list[str] | None, Field(max_length=8, description="Extra reference images")] = None,
        seed: Seed = None,
        steps: Steps = None,
        guidance: Guidance = None,
        loras: LoraList = [],  # noqa: B006
        output_format: Format = "png",
        preview: PreviewArg = "thumbnail",
        wait: Wait = True,
    ) -> Annotated[CallToolResult, ImageResult]:
        """Edit an existing image: an earlier result (by id) or an image file in an allowed folder.

        Routing: reference_images or an edit variant (z-image-edit) -> reference edit; control ->
        control; mask -> inpaint; otherwise img2img with strength (0-1, default per variant). The
        output keeps the input's size (snapped to multiples of 16 and the variant's limits). Only
        variants whose list_models edit_modes include the mode accept it. Base64 and URLs are not
        accepted. The result records the parent image id and the edit parameters.

        Inputs: files must lie in the output store or a folder configured in ZIMAGE_MCP_INPUT_DIRS
        (after resolving symlinks); anything else is refused. PNG, JPEG, WebP, GIF and BMP files up
        to 64 megapixels are read; CMYK, grayscale, palette and transparent images are converted to
        RGB (transparency on white), and animated images use their first frame. Prompt rules are
        those of generate_image.
        """
        self._bind(ctx)
        text = prompt if prompt is not None else instruction
        if not text:
            self.state.metrics.record_failure("edit_image", model or "default", "invalid")
            raise ToolError("prompt: required (1-4000 characters; or give it as instruction)")
        st = self.state
        with self._refusals("edit_image", model):
            prepared = prepare_edit(
                st.registry,
                st.store,
                st.settings.input_dirs,
                image=image,
                model=model,
                prompt=text,
                strength=strength,
                mask=mask,
                control=control,
                reference_images=reference_images,
                steps=steps,
                guidance=guidance,
                seed=seed,
                loras=loras,
            )
        return await self._run(ctx, "edit_image", prepared, output_format, preview, wait)

    async def list_models(self, ctx: Context) -> Annotated[CallToolResult, ModelsInfo]:
        """List the image variants and LoRAs: kind, edit modes, defaults, size/step limits, whether
        installed (and where) or how to install, whether loaded, and failed variants. Use the ids as
        the model argument of generate_image/edit_image and the LoRA names in loras."""
        self._bind(ctx)
        info = describe_models(self.state.registry, str(self.state.store.root))
        lines = [f"default model: {info.default_model}"]
        for v in info.variants:
            where = f"installed at {v.location}" if v.installed else f"NOT installed: {v.how_to_install}"
            modes = ", ".join(v.edit_modes) or "none"
            failed = f"; FAILED to load: {v.failed}" if v.failed else ""
            lines.append(f"- {v.id} ({v.kind}): {where}; loaded={v.loaded}; edit modes: {modes}{failed}")
        lines += [f"- LoRA {lora.name} (base {lora.base or 'any'})" for lora in info.loras]
        lines += [f"problem: {p}" for p in info.problems]
        data = info.model_dump(mode="json")
        content = [TextContent(type="text", text="\n".join(lines)), TextContent(type="text", text=json.dumps(data))]
        return CallToolResult(content=content, structured_content=data)

    async def get_job(
        self,
        ctx: Context,
        job_id: Annotated[str, Field(max_length=64, description="job_id returned by a wait=false call")],
        wait_seconds: WaitSeconds = 0,
    ) -> Annotated[CallToolResult, ImageResult]:
        """Status of a wait=false job; when done, the same result generate_image would have returned.
        wait_seconds (0-50) blocks until it finishes, sending progress meanwhile."""
        self._bind(ctx)
        job = self._job(job_id)
        deadline, last = time.monotonic() + wait_seconds, -1.0
        while not job.finished.is_set() and time.monotonic() < deadline:
            if job.progress > last:
                last = job.progress
                await ctx.report_progress(job.progress, job.total, job.message)
            await anyio.sleep(0.05)
        return self._job_result(job)

    async def cancel_job(
        self,
        ctx: Context,
        job_id: Annotated[str, Field(max_length=64, description="job_id of a wait=false call")],
    ) -> Annotated[CallToolResult, ImageResult]:
        """Cancel a queued or running wait=false job; the engine stops within one step.

        The answer is final: 'cancelled' (stopped, no image, nothing more will come) or 'already
        finished' (the job ended first: its result or error is returned). No need to poll get_job."""
        self._bind(ctx)
        job = self._job(job_id, "nothing to cancel")
        if job.finished.is_set():
            return self._finished_before_cancel(job)
        self.state.jobs.cancel(job_id)
        with anyio.move_on_after(10):
            while not job.finished.is_set():
                await anyio.sleep(0.05)
        if job.state in ("done", "failed"):  # it finished on its own before the stop took effect
            return self._finished_before_cancel(job)
        return self._job_result(job, cancel="cancelled" if job.finished.is_set() else "stopping")

    def _finished_before_cancel(self, job: Job) -> CallToolResult:
        note = f"job {job.id} had already finished ({job.state}) before cancel_job; nothing was cancelled"
        try:
            result = self._job_result(job, cancel="already finished")
        except ToolError as exc:
            raise ToolError(f"{note}. It failed: {exc}. Nothing more will come.") from None
        result.content.insert(0, TextContent(type="text", text=f"{note}. Its result follows; nothing more will come."))
        return result

    # -- helpers --------------------------------------------------------------------------------

    def _bind(self, ctx: Context) -> None:
        try:
            request_id_var.set(str(ctx.request_id))
        except Exception:
            request_id_var.set("-")

    def _job(self, job_id: str, consequence: str = "") -> Job:
        job = self.state.jobs.get(job_id)
        if job is None:
            tail = f"; {consequence}" if consequence else ""
            raise ToolError(
                f"job_id: no job {quote(job_id, 80)}{tail} (a 12-hex job_id from a wait=false call; "
                "jobs live in memory until the server restarts)"
            )
        return job

    @contextmanager
    def _refusals(self, tool: str, model: str | None) -> Iterator[None]:
        """Turn a refused argument into a ``ToolError`` naming the field (and count it)."""
        try:
            yield
        except (InvalidRequestError, UnknownVariantError, UnknownLoraError) as exc:
            self.state.metrics.record_failure(tool, model or "default", "invalid")
            raise ToolError(str(exc)) from None

    async def _run(
        self, ctx: Context, tool: str, prepared: Prepared, fmt: OutputFormat, preview: PreviewMode, wait: bool
    ) -> CallToolResult:
        st = self.state
        st.metrics.record_request(tool, prepared.variant_id)
        try:
            job = st.jobs.create(prepared.variant_id, prepared.request.steps)
        except QueueFullError as exc:
            st.metrics.record_failure(tool, prepared.variant_id, "busy")
            raise ToolError(f"busy: {exc}; retry later") from None
        job.context = (tool, prepared, fmt, preview)
        work = make_work(st.registry, st.store, st.metrics, prepared, fmt, preview, st.settings.preview_max_bytes)
        log.info("%s job %s on %s (%s)", tool, job.id, prepared.backend_id, "wait" if wait else "background")
        if not wait:
            queued = self._job_result(job)  # the snapshot before it runs: always "queued" with the job_id
            st.jobs.start_background(job, work)
            return queued
        report = ctx.report_progress if asks_for_progress(ctx, st.progress_token_in_meta) else None
        try:
            await st.jobs.run_inline(job, work, report)
        except anyio.get_cancelled_exc_class():
            log.info("job %s cancelled by the caller", job.id)
            st.metrics.record_failure(tool, prepared.variant_id, "cancelled")
            raise
        except Exception:
            pass  # recorded on the job; _job_result maps it
        return self._job_result(job)

    def _job_result(self, job: Job, cancel: str | None = None) -> CallToolResult:
        tool, prepared, fmt, preview = job.context
        queue = job.queue_info()
        if job.state == "failed" or (job.state == "cancelled" and job.timed_out):
            exc = job.error or RuntimeError("unknown failure")
            if not job.failure_recorded:
                job.failure_recorded = True
                self.state.metrics.record_failure(tool, job.model, type(exc).__name__)
            if not isinstance(exc, ZImageMCPError):
                log.error("job %s failed", job.id, exc_info=exc)
            raise ToolError(describe_failure(exc, job.timed_out, self.state.settings.job_timeout_seconds))
        if job.state != "done":
            status = ImageResult(
                status=job.state,
                job_id=job.id,
                progress=job.progress,
                total=job.total,
                message=job.message,
                output_format=fmt,
                cancel=cancel,
                **queue,
                **prepared.params,
            )
            if job.state == "cancelled":
                text = f"job {job.id}: cancelled; it stopped, no image was saved and nothing more will come"
            elif cancel == "stopping":
                text = (
                    f"job {job.id}: cancel requested; it stops at the next engine step, saves nothing, "
                    "and nothing more will come"
                )
            else:
                text = f"job {job.id}: {job.state} ({job.message}); poll get_job(job_id='{job.id}', wait_seconds=50)"
            return CallToolResult(
                content=[TextContent(type="text", text=text)], structured_content=status.model_dump(mode="json")
            )
        outcome: Outcome = job.result
        timings = {**outcome.result.timings, "queue_wait": round(queue["queue_wait_seconds"] or 0.0, 4)}
        result = outcome.result.model_copy(
            update={
                "job_id": job.id,
                "progress": job.progress,
                "total": job.total,
                "message": job.message,
                "timings": timings,
                "cancel": cancel,
                **queue,
            }
        )
        data = result.model_dump(mode="json")
        budget = self.state.settings.preview_max_bytes
        content = build_content(outcome.summary, data, outcome.images, preview, budget, outcome.previews)
        return CallToolResult(content=content, structured_content=data)

    def model_names_note(self) -> str:
        try:
            entries = self.state.registry.variants()
        except Exception:
            return ""
        names = ", ".join(e.spec.id for e in entries)
        editors = ", ".join(e.spec.id for e in entries if e.spec.capabilities.edit_modes()) or "none"
        return f"Variants: {names}. Variants that accept images: {editors}."


def register_tools(mcp: MCPServer, tools: ImageTools) -> None:
    write = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
    read = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
    cancel = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)
    names = tools.model_names_note()
    for fn, title, hints, note in (
        (tools.generate_image, "Generate image", write, names),
        (tools.edit_image, "Edit image", write, names),
        (tools.list_models, "List models", read, ""),
        (tools.get_job, "Get job", read, ""),
        (tools.cancel_job, "Cancel job", cancel, ""),
    ):
        description = f"{inspect.cleandoc(fn.__doc__ or '')}\n\n{note}".strip()
        mcp.add_tool(fn, title=title, description=description, annotations=hints.model_copy(update={"title": title}))
        # Unknown argument names are refused (ZImageServer.call_tool checks them first); say so in the schema.
        mcp._tool_manager.get_tool(fn.__name__).parameters["additionalProperties"] = False

"""``zimage-mcp generate``: the ``generate_image`` tool without MCP.

The same request preparation (``prepare_generate``: what the tool accepts and refuses), the same worker
function and the same store, so files and metadata are identical to the server's.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zimage_mcp.cli.common import CliError, keep_engine_bytecode, settings_from, setup_logging

if TYPE_CHECKING:
    import argparse

    from zimage_mcp.registry.settings import Settings


def add_arguments(gen: argparse.ArgumentParser) -> None:
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt")
    gen.add_argument("--model", help="variant id or alias (turbo, base, lora:<name>)")
    gen.add_argument("--width", type=int)
    gen.add_argument("--height", type=int)
    gen.add_argument("--steps", type=int)
    gen.add_argument("--guidance", type=float)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--count", type=int, default=1, help="images (1-4)")
    gen.add_argument("--format", choices=["png", "webp", "jpeg"], default="png", dest="output_format")
    gen.add_argument("--lora", action="append", default=[], metavar="NAME[:SCALE]", help="repeatable")
    gen.add_argument("--out", help="also copy the image here (with -1, -2, ... before the suffix when --count > 1)")


def parse_lora(text: str) -> Any:
    """``name`` or ``name:scale`` as the tool's ``LoraChoice`` (same bounds as the tool)."""
    from pydantic import ValidationError

    from zimage_mcp.server.tool_models import LoraChoice

    name, _, scale = text.rpartition(":") if re.search(r":-?[0-9.]+$", text) else (text, "", "")
    try:
        return LoraChoice(name=name, scale=float(scale)) if scale else LoraChoice(name=name)
    except (ValidationError, ValueError) as exc:
        first = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise CliError(f"--lora {text}: {first} (NAME or NAME:SCALE, scale -4..4)", code=2) from None


class Progress:
    """A bar on a terminal; one line per phase when stderr is a file or a pipe (logs, CI)."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last_phase = ""

    def __call__(self, value: float, total: float, message: str) -> None:
        if self.tty:
            width = 30
            filled = int(width * value / total) if total else 0
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {message[:50]:<50}")
        else:
            phase = re.sub(r"[0-9/]+", "", message).strip()
            if phase == self.last_phase:
                return
            self.last_phase = phase
            self.stream.write(f"{message}\n")
        self.stream.flush()

    def end(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def generate(
    settings: Settings,
    *,
    prompt: str,
    model: str | None = None,
    negative_prompt: str | None = None,
    width: int | None = None,
    height: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int | None = None,
    count: int = 1,
    output_format: str = "png",
    loras: list[Any] | None = None,
    progress: Progress | None = None,
) -> Any:
    """Generate and save like the tool does; returns the worker's ``Outcome``. Errors are ours (``ZImageMCPError``)."""
    from zimage_mcp.registry import Registry
    from zimage_mcp.server.generation import make_work
    from zimage_mcp.server.jobs import JobManager
    from zimage_mcp.server.metrics import Metrics
    from zimage_mcp.server.preparation import prepare_generate
    from zimage_mcp.store import ImageStore

    registry = Registry.from_settings(settings)
    progress = progress or Progress()
    try:
        prepared = prepare_generate(
            registry,
            model=model,
            loras=loras or [],
            prompt=prompt,
            negative_prompt=negative_prompt,
            width=width,
            height=height,
            steps=steps,
            guidance=guidance,
            seed=seed,
            count=count,
        )
        jobs = JobManager(1, settings.job_timeout_seconds)
        job = jobs.create(prepared.variant_id, prepared.request.steps)
        work = make_work(registry, ImageStore(settings.output_dir), Metrics(), prepared, output_format)
        try:
            return jobs.execute(job, work, progress)
        finally:
            progress.end()
    finally:
        registry.unload_all()


def cmd_generate(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    setup_logging(args.log_level or "WARNING", settings.log_file, errors_reported=True)
    keep_engine_bytecode(settings)
    loras = [parse_lora(text) for text in args.lora]
    outcome = generate(
        settings,
        prompt=args.prompt,
        model=args.model,
        negative_prompt=args.negative_prompt,
        width=args.width,
        height=args.height,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        count=args.count,
        output_format=args.output_format,
        loras=loras,
    )
    images = []
    for i, (stored, _) in enumerate(outcome.images):
        path = stored.path
        if args.out:
            out = Path(args.out).expanduser()
            if len(outcome.images) > 1:
                out = out.with_name(f"{out.stem}-{i + 1}{out.suffix}")
            shutil.copyfile(stored.path, out)
            path = out.resolve()
        images.append({"id": stored.id, "path": str(path), "seed": stored.metadata.get("seed")})
    first = images[0]
    print(
        json.dumps(
            {
                "path": first["path"],
                "id": first["id"],
                "seed": outcome.result.seed,
                "elapsed_seconds": outcome.result.elapsed_seconds,
                "images": images,
            }
        )
    )
    return 0

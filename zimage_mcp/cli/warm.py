"""``zimage-mcp warm [VARIANT...] [--sizes WxH...]``: fill the compile cache before the server needs it.

Per variant: load it, run the engine's warm-up (text encoder, DiT per size and caption bucket, decoder
per size), then one short generation per size with the variant's own defaults (CFG batches included),
so the graphs a first request needs are in the per-user compile cache. A restarted server then reads
them back instead of compiling. One progress line per unit on stderr; nothing is saved.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from zimage_mcp.cli.common import CliError, keep_engine_bytecode, settings_from, setup_logging

if TYPE_CHECKING:
    import argparse

    from zimage_mcp.registry import Registry


def add_arguments(warm: argparse.ArgumentParser) -> None:
    warm.add_argument(
        "variants", nargs="*", metavar="VARIANT", help="ids or aliases (default: [runtime] preload, else the default)"
    )
    warm.add_argument(
        "--sizes", nargs="+", default=[], metavar="WxH", help="besides each default (default: [runtime] warm_sizes)"
    )


def _line(text: str) -> None:
    print(f"warm {text}", file=sys.stderr, flush=True)


def warm_variant(registry: Registry, name: str, sizes: list[tuple[int, int]]) -> None:
    """Load, warm up and generate once per size; raises our errors (``ZImageMCPError``)."""
    from zimage_mcp.contract import WarmableBackend
    from zimage_mcp.server.preparation import build_request

    entry = registry.resolve(name)
    spec = entry.spec
    start = time.monotonic()
    backend = registry.backend(spec.id)
    _line(f"{spec.id}: loaded in {time.monotonic() - start:.1f} s")
    if isinstance(backend, WarmableBackend):
        tick = time.monotonic()
        for label in backend.warm_up(sizes):
            _line(f"{spec.id}: {label} ({time.monotonic() - tick:.1f} s)")
            tick = time.monotonic()
    if not spec.capabilities.generate:
        return
    for width, height in dict.fromkeys([(spec.defaults.width, spec.defaults.height), *sizes]):
        tick = time.monotonic()
        request = build_request(
            spec,
            prompt="warm-up",
            negative_prompt=None,
            width=width,
            height=height,
            steps=max(spec.limits.min_steps, min(2, spec.limits.max_steps)),
            guidance=None,
            seed=0,
            count=1,
            loras=(),
        )
        backend.generate(request, lambda *_: None, lambda: False)
        _line(f"{spec.id}: {width}x{height} generation ({time.monotonic() - tick:.1f} s)")


def cmd_warm(args: argparse.Namespace) -> int:
    from zimage_mcp.registry import Registry
    from zimage_mcp.registry.settings import OPTIONS
    from zimage_mcp.server.preload import parse_sizes

    settings = settings_from(args)
    setup_logging(args.log_level or "WARNING", settings.log_file, errors_reported=True)
    keep_engine_bytecode(settings)
    try:
        given = OPTIONS["warm_sizes"].parse(",".join(args.sizes)) if args.sizes else settings.warm_sizes
    except ValueError as exc:
        raise CliError(f"--sizes: {exc}", code=2) from None
    sizes = parse_sizes(given)
    registry = Registry.from_settings(settings)
    names = args.variants or list(settings.preload) or [None]
    start = time.monotonic()
    try:
        for name in names:
            warm_variant(registry, name, sizes)
            registry.unload_all()  # one variant on the device at a time
    finally:
        registry.unload_all()
    _line(f"done in {time.monotonic() - start:.1f} s")
    return 0

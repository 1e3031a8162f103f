"""The small commands: list, plugins, pull, gallery, make-tiny, demo, lora inspect."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zimage_mcp.cli.common import CliError, command_name, settings_from, setup_logging

if TYPE_CHECKING:
    import argparse

TINY_REGISTRY = """\
# A registry for the tiny random model written by `make-tiny` (for trying things without weights).
[variants.z-image-turbo.weights]
path = "{model}"

[variants.z-image-turbo.defaults]
steps = 2
width = 256
height = 256

[variants.z-image-turbo.limits]
min_side = 256
max_side = 512
"""


def cmd_pull(args: argparse.Namespace) -> int:
    from zimage_mcp.registry.catalog import catalog_from_settings

    repos = catalog_from_settings(settings_from(args)).published_repos()  # variant id and aliases -> repo
    repo = repos.get(args.variant.strip().lower())
    if repo is None:
        raise CliError(
            f"pull: no published weights for {args.variant!r}; choose from: {', '.join(sorted(repos))}", code=2
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CliError(
            "huggingface_hub is not installed: `./run.sh cli pull ...` installs it, or pip install 'zimage-mcp[hub]'",
            code=2,
        ) from None
    try:
        path = snapshot_download(repo)
    except Exception as exc:  # offline, gated, disk full: say what happened in one line
        raise CliError(
            f"could not download {repo}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
            f"check the network (or HF_HUB_OFFLINE), HF_TOKEN and disk space; or `hf download {repo}`",
        ) from None
    print(f"{repo} is in {path}")
    return 0


def _problems(registry: Any, rows: list[dict[str, Any]] | None = None) -> list[str]:
    """Everything that went wrong while loading the registry and the plugins, one line each."""
    found = [str(p) for p in getattr(registry, "problems", lambda: [])()]
    for row in rows or []:
        line = f"plugin {row.get('name')}: {row.get('error')}"
        if row.get("status") == "failed" and not any(str(row.get("name")) in p for p in found):
            found.append(line)
    return found


def cmd_list(args: argparse.Namespace) -> int:
    from zimage_mcp.registry import Registry
    from zimage_mcp.registry.plugin_manager import describe_plugins
    from zimage_mcp.server.tool_models import describe_models

    settings = settings_from(args)
    setup_logging(args.log_level or "WARNING", settings.log_file, errors_reported=True)  # problems listed below
    registry = Registry.from_settings(settings)
    info = describe_models(registry, str(settings.output_dir))
    for v in info.variants:
        state = f"installed ({v.location})" if v.installed else f"missing: {v.how_to_install}"
        marker = "*" if v.id == info.default_model else " "
        print(f"{marker} {v.id:<24} {v.kind:<6} {state}")
    for lora in info.loras:
        print(f"  lora {lora.name:<19} {lora.file}")
    problems = list(dict.fromkeys([*info.problems, *_problems(registry, describe_plugins(registry.plugin_manager))]))
    if problems:
        print("problems:")
        for problem in problems:
            print(f"  - {problem}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from zimage_mcp.registry import Registry
    from zimage_mcp.registry.plugin_manager import describe_plugins

    settings = settings_from(args)
    setup_logging(args.log_level or "WARNING", settings.log_file, errors_reported=True)  # problems listed below
    registry = Registry.from_settings(settings)
    rows = describe_plugins(registry.plugin_manager)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for row in rows:
        origin = f"{row['distribution']} {row['version']}" if row.get("distribution") else "built in"
        hooks = ", ".join(row.get("hooks") or []) or "-"
        print(f"{row['name']:<24} {row.get('status') or 'loaded':<8} {origin:<28} hooks: {hooks}")
    problems = _problems(registry, rows)
    if problems:
        print("problems:")
        for problem in problems:
            print(f"  - {problem}")
    return 0


def cmd_gallery(args: argparse.Namespace) -> int:
    from zimage_mcp.store import ImageStore

    settings = settings_from(args)
    images = ImageStore(settings.output_dir).recent(max(0, args.limit))
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": i.id,
                        "created": i.metadata.get("created"),
                        "width": i.metadata.get("width"),
                        "height": i.metadata.get("height"),
                        "model": i.metadata.get("model"),
                        "prompt": i.metadata.get("prompt"),
                        "path": str(i.path),
                    }
                    for i in images
                ],
                indent=2,
            )
        )
        return 0
    if not images:
        print(f"no images yet in {settings.output_dir}", file=sys.stderr)
        return 0
    for i in images:
        meta = i.metadata
        created = str(meta.get("created") or "")[:19].replace("T", " ")
        size = f"{meta.get('width')}x{meta.get('height')}"
        prompt = " ".join(str(meta.get("prompt") or "").split())
        prompt = prompt if len(prompt) <= 40 else prompt[:39] + "…"
        print(f"{i.id}  {created:<19}  {size:<9}  {str(meta.get('model') or ''):<16}  {prompt:<40}  {i.path}")
    return 0


def write_tiny(folder: Path) -> tuple[Path, Path]:
    """The tiny random model in ``folder/model`` (made once) and ``folder/registry.toml`` pointing at it."""
    from zimage_mcp.engine.presets.tiny import make_tiny

    folder = folder.expanduser().resolve()
    model = folder / "model"
    if not (model / "model_index.json").is_file():
        make_tiny(model)
    registry = folder / "registry.toml"
    registry.write_text(TINY_REGISTRY.format(model=model.as_posix()))
    return model, registry


def cmd_make_tiny(args: argparse.Namespace) -> int:
    if not args.write_registry:
        from zimage_mcp.engine.presets.tiny import make_tiny

        print(make_tiny(Path(args.dir)))
        return 0
    model, registry = write_tiny(Path(args.dir))
    print(f"tiny model in {model}; registry in {registry}. Use it with:", file=sys.stderr)
    print(f"export ZIMAGE_MCP_REGISTRY={registry}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """A newcomer's first image without weights: the tiny model, a registry for it, one generation."""
    from zimage_mcp.cli.generate import generate
    from zimage_mcp.registry.settings import Settings

    folder = Path(args.dir).expanduser().resolve()
    print(f"writing a tiny random model and a registry for it to {folder} ...", file=sys.stderr)
    _, registry = write_tiny(folder)
    out_dir = Path(args.out_dir).expanduser().resolve() if args.out_dir else folder / "images"
    settings = Settings.from_env(
        registry_file=registry, output_dir=out_dir, device=args.device, log_level=args.log_level
    )
    setup_logging(args.log_level or "WARNING", settings.log_file, errors_reported=True)
    outcome = generate(settings, prompt="a red fox in snow", seed=1)
    stored = outcome.images[0][0]
    me = command_name()
    print(f"saved {stored.path} (id {stored.id}; random weights, so it is noise)")
    print("next, with this registry and output folder:", file=sys.stderr)
    print(f"  export ZIMAGE_MCP_REGISTRY={registry} ZIMAGE_MCP_OUTPUT_DIR={out_dir}", file=sys.stderr)
    print(f"  {me} generate --prompt 'a cat' --count 2     # then: {me} gallery", file=sys.stderr)
    example = Path(__file__).resolve().parents[2] / "examples" / "client_call.py"  # a checkout's; absent when installed
    if example.is_file():
        print(f"  {sys.executable} {example} --registry {registry}   # the same over MCP", file=sys.stderr)
    return 0


def cmd_lora(args: argparse.Namespace) -> int:
    try:
        from zimage_mcp.engine.weights.lora_inspect import inspect_lora
    except ImportError:
        raise CliError(
            "lora inspect is not available in this build (zimage_mcp.engine.weights.lora_inspect missing)", code=2
        ) from None
    try:
        report = inspect_lora(Path(args.file))
    except Exception as exc:  # a missing or malformed file: one clear line, no traceback
        raise CliError(f"cannot inspect {args.file}: {exc}") from None
    print(json.dumps(report, indent=2, default=str))
    return 0


def default_demo_dir() -> str:
    from platformdirs import user_cache_dir

    return os.path.join(user_cache_dir("zimage-mcp"), "demo")

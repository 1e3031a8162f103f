"""The ``[ray]`` table and the deployment options, without Ray; and that no ``--ray`` means no ray import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from zimage_mcp.contract import RegistryError
from zimage_mcp.registry.catalog import load_catalog
from zimage_mcp.scale.config import ScaleOptions


def _catalog(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "registry.toml"
    path.write_text(text)
    return load_catalog(path)


def test_ray_table_is_read_and_bad_keys_are_named(tmp_path: Path) -> None:
    catalog = _catalog(
        tmp_path,
        "[ray]\nmin_replicas = 0\nmax_replicas = 4\ntarget_ongoing_requests = 2\nresources = { a = 1 }\n"
        'replicas = 3\nmax_ongoing_requests = 0\nnum_gpus = "one"\n',
    )
    assert catalog.ray == {"min_replicas": 0, "max_replicas": 4, "target_ongoing_requests": 2.0, "resources": {"a": 1}}
    problems = "\n".join(catalog.problems)
    assert "[ray] replicas: unknown key" in problems
    assert "[ray] max_ongoing_requests: must be an integer >= 1, got 0 (key ignored)" in problems
    assert '[ray] num_gpus: must be a number >= 0, got "one" (key ignored)' in problems
    assert "unknown table" not in problems


def test_autoscaling_or_fixed_replicas_and_gpus_follow_the_cluster() -> None:
    fixed = ScaleOptions.from_table({"min_replicas": 2, "max_replicas": 2}).deployment_options(cluster_gpus=8)
    assert fixed["num_replicas"] == 2 and fixed["ray_actor_options"]["num_gpus"] == 1.0
    scaled = ScaleOptions.from_table({"min_replicas": 0, "max_replicas": 4, "target_ongoing_requests": 2.0})
    options = scaled.deployment_options(cluster_gpus=0)
    assert options["autoscaling_config"]["min_replicas"] == 0
    assert options["autoscaling_config"]["target_ongoing_requests"] == 2.0
    assert options["ray_actor_options"]["num_gpus"] == 0.0
    assert ScaleOptions.from_table({"max_replicas": 3, "max_ongoing_requests": 2}).max_concurrent == 6
    assert ScaleOptions.from_table({"address": "a:1"}, address="b:2").address == "b:2"
    with pytest.raises(RegistryError, match="min_replicas"):
        ScaleOptions.from_table({"min_replicas": 3, "max_replicas": 2})


def test_without_ray_flag_ray_is_never_imported(tmp_path: Path) -> None:
    code = (
        "import sys, pathlib, anyio\n"
        "from mcp import Client\n"
        "import zimage_mcp.cli, zimage_mcp.cli.serve\n"
        "from zimage_mcp.registry.settings import Settings\n"
        "from zimage_mcp.server import build_server\n"
        "from zimage_mcp.cli.serve import add_ray_metrics\n"
        f"s = Settings.from_env(environ={{}}, output_dir=pathlib.Path({str(tmp_path)!r}))\n"
        "mcp = build_server(s)\n"
        "add_ray_metrics(mcp)\n"
        "args = zimage_mcp.cli._parser().parse_args(['serve', '--transport', 'http'])\n"
        "assert args.ray is None\n"
        "async def main():\n"
        "    async with Client(mcp) as c:\n"
        "        assert not (await c.call_tool('list_models', {})).is_error\n"
        "anyio.run(main)\n"
        "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_ray_flag_parses_with_and_without_address() -> None:
    from zimage_mcp.cli import _parser

    assert _parser().parse_args(["serve", "--transport", "http", "--ray"]).ray == ""
    assert _parser().parse_args(["serve", "--transport", "http", "--ray", "10.0.0.5:6379"]).ray == "10.0.0.5:6379"

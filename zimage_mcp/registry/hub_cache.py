"""The local Hugging Face hub cache, read without huggingface_hub and without any network.

Stdlib only: the registry finds installed weights with it, and hands the engine a folder.
"""

from __future__ import annotations

from pathlib import Path


def hub_cache_dir(hf_home: str | None, hf_hub_cache: str | None) -> Path:
    """The hub cache: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if hf_hub_cache:
        return Path(hf_hub_cache).expanduser()
    return Path(hf_home or "~/.cache/huggingface").expanduser() / "hub"


def find_snapshot(hub_dir: Path, repo_id: str) -> Path | None:
    """``hub_dir/models--org--name/snapshots/<rev>`` holding model_index.json (``refs/main`` first, else newest)."""
    repo = hub_dir / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshot = repo / "snapshots" / ref.read_text().strip()
        if (snapshot / "model_index.json").is_file():
            return snapshot
    snapshots = [p for p in (repo / "snapshots").glob("*") if (p / "model_index.json").is_file()]
    return max(snapshots, key=lambda p: p.stat().st_mtime) if snapshots else None

"""What the registry holds per name: a registered variant, a name registered twice, the LoRA folder's stamp."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from zimage_mcp.contract import BackendFactory, VariantSpec

FolderStamp = tuple[int, tuple[tuple[str, int, int], ...]] | None


def folder_stamp(folder: Path | None) -> FolderStamp:
    """The folder's mtime and each entry's (name, mtime, size): it changes when a file is added, removed
    or rewritten (a sidecar edited in place too). One ``scandir``; ``None`` when the folder is missing."""
    if folder is None:
        return None
    try:
        entries = []
        with os.scandir(folder) as it:
            for entry in it:
                st = entry.stat()
                entries.append((entry.name, st.st_mtime_ns, st.st_size))
        return folder.stat().st_mtime_ns, tuple(sorted(entries))
    except OSError:
        return None


@dataclass(frozen=True)
class VariantEntry:
    """A registered variant: its spec, the factory that builds its backend, and who registered it."""

    spec: VariantSpec
    factory: BackendFactory
    plugin: str
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class Duplicate:
    """A name registered twice; the first registration won."""

    kind: str  # "variant" | "alias" | "lora"
    name: str
    winner: str
    loser: str

    def __str__(self) -> str:
        return (
            f"duplicate {self.kind} {self.name!r}: "
            f"kept the one from plugin {self.winner!r}, ignored plugin {self.loser!r}"
        )

"""Pinned staging is an optimisation: where it cannot be had, weights load by plain copies."""

from __future__ import annotations

import pytest
import torch

from zimage_mcp.engine.weights import staging


def test_no_pinned_memory_means_plain_copies_not_a_failed_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pinned_memory(device: torch.device) -> staging.PinnedUploader:
        raise RuntimeError("CUDA error: out of memory (cudaHostAlloc)")

    monkeypatch.setattr(staging, "PinnedUploader", no_pinned_memory)
    assert staging.uploader_for(torch.device("cuda")) is None


def test_the_cpu_and_the_switch_take_plain_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    assert staging.uploader_for(torch.device("cpu")) is None
    monkeypatch.setattr(staging, "ENABLED", False)
    assert staging.uploader_for(torch.device("cuda")) is None

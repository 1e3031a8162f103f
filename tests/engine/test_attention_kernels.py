"""Attention outside a compiled graph never asks for cuDNN's attention, whose per-shape plan (kernels
compiled at run time) cost 2.2 s of a fresh process's first 1024^2 request on an H200."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend

from zimage_mcp.engine.dit import attention as attention_module
from zimage_mcp.engine.dit.attention import attention, plan_free_kernels


@pytest.fixture
def kernels_asked(monkeypatch: pytest.MonkeyPatch) -> list[list[SDPBackend]]:
    asked: list[list[SDPBackend]] = []
    real = attention_module.sdpa_kernel

    def spy(kernels: list[SDPBackend]):  # noqa: ANN202
        asked.append(list(kernels))
        return real(kernels)

    monkeypatch.setattr(attention_module, "sdpa_kernel", spy)
    return asked


@pytest.mark.parametrize("masked", [False, True])
def test_an_uncompiled_cudnn_call_takes_kernels_without_plans(kernels_asked: list, masked: bool) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 24, 4, 16, generator=g) for _ in range(3))  # (B, S, H, Dh)
    mask = torch.ones(2, 24, dtype=torch.bool)
    mask[1, 20:] = False
    out = attention(q, k, v, mask if masked else None, backend="cudnn")
    assert kernels_asked and all(SDPBackend.CUDNN_ATTENTION not in asked for asked in kernels_asked)
    assert torch.allclose(out, attention(q, k, v, mask if masked else None, backend="math"), atol=1e-5)


def test_plan_free_kernels_change_nothing_off_cuda(kernels_asked: list) -> None:
    with plan_free_kernels(torch.device("cpu")):
        pass
    assert kernels_asked == []

"""Replay a function as one captured CUDA graph per input shape (for launch-bound calls).

Qwen3-4B on a short prompt is ~600 small kernels whose GPU work takes a few milliseconds; launched from
Python they take ~40 ms. One graph launch replaces them all. Graphs share one memory pool: the output
is copied out before the next replay can overwrite it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from zimage_mcp.engine.speed.compile_policy import may_compile, record_miss


class ShapeGraphs:
    """``fn(x) -> Tensor`` with a CUDA graph captured on the first call of each ``x.shape``, when
    ``compile_policy`` lets ``component`` compile; otherwise a new shape runs ``fn`` as it is."""

    def __init__(self, fn: Callable[[Tensor], Tensor], max_graphs: int = 16, component: str = "text") -> None:
        self.fn = fn
        self.component = component
        self.max_graphs = max_graphs
        self._graphs: dict[tuple[int, ...], tuple[Tensor, Tensor, torch.cuda.CUDAGraph]] = {}
        self._pool: Any = None  # torch.cuda.graph_pool_handle(), shared by every graph

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return list(self._graphs)

    def __call__(self, x: Tensor) -> Tensor:
        entry = self._graphs.get(tuple(x.shape))
        if entry is None:
            if len(self._graphs) >= self.max_graphs:
                return self.fn(x)  # an unusual shape: eager, rather than pinning memory for one more graph
            if not may_compile(self.component):
                record_miss(self.component)
                return self.fn(x)
            entry = self._capture(x)
        static_in, static_out, graph = entry
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def _capture(self, x: Tensor) -> tuple[Tensor, Tensor, torch.cuda.CUDAGraph]:
        static_in = x.clone()
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up outside the graph: lazy inits, cuBLAS handles, workspaces
            for _ in range(2):
                self.fn(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out = self.fn(static_in)
        self._graphs[tuple(x.shape)] = (static_in, static_out, graph)
        return static_in, static_out, graph

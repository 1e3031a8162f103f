"""Requests never wait for the compiler: what they ran eagerly is replayed later, with compilation allowed.

Under ``[runtime] compile_in_background`` (``BackendContext.defer_compile``) a request runs each part (the
DiT, the text encoder, the VAE decoder) compiled where a graph for its shapes exists and eagerly where not
(``engine.speed.compile_policy``). Each request that ran a part eagerly is kept; the server then replays it,
one part per unit, in time it finds the GPU idle, with a few steps and the result thrown away. A later
request of the same shapes runs compiled. The first image after a restart so costs an eager run (about a
fifth slower than compiled) instead of tens of seconds of compilation.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from zimage_mcp.contract import GenerationRequest
from zimage_mcp.engine.speed.compile_policy import compile_only

# The decoder first. Each unit replays a whole request, and an uncompiled 1024² decode holds 1.75 GiB of
# activations against the compiled one's 1.25: with the DiT first, its unit and the text encoder's replayed the
# uncompiled decoder and set the server's peak (+1.75-1.82 GiB over the weights on an H100, RESULTS §15). The
# decoder's unit runs the DiT uncompiled once (two steps); with the compile cache kept it takes 1.5-2 s.
REPLAY_ORDER = ("vae", "dit", "text")


def shape_key(r: GenerationRequest) -> tuple[Any, ...]:
    """What decides the shapes a request runs (not its seed or step count): two requests with the same key
    need the same compilation, so the second is not replayed."""
    images = tuple(im.size for im in (r.image, *r.reference_images) if im is not None)
    control = r.control.type if r.control is not None else None
    cfg = (r.guidance > 0, r.cfg_truncation, r.negative_prompt)
    return (r.mode, r.width, r.height, r.count, r.prompt, cfg, r.strength, control, images, r.mask is not None)


def replay_request(r: GenerationRequest) -> GenerationRequest:
    """``r`` with as few steps as still run every shape it ran: two denoising steps (CFG's passes
    included); img2img runs about steps × strength of them, so it gets more steps."""
    steps = min(r.steps, max(2, math.ceil(2 / max(r.strength, 1e-3))))
    return replace(r, steps=steps)


class CompileQueue:
    """The requests that ran some part eagerly, and the parts, in arrival order (at most ``limit``)."""

    def __init__(self, replay: Callable[[GenerationRequest], object], limit: int = 64) -> None:
        self._replay = replay
        self._pending: deque[tuple[GenerationRequest, list[str]]] = deque()
        self._limit = limit
        # Keys pending or replayed already: a repeat (another seed) is not kept again; a request whose
        # replay did not cover it is not replayed twice either (no loop of useless replays).
        self._keys: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        self._lock = threading.Lock()
        self._running = False

    @contextmanager
    def request(self, request: GenerationRequest) -> Iterator[None]:
        """Run a request inside: nothing compiles; if it completes having run a part eagerly, it is kept."""
        with compile_only() as policy:
            yield
        if policy.missed:
            key = shape_key(request)
            with self._lock:
                if key in self._keys or len(self._pending) >= self._limit:
                    return  # kept already, or too many waiting: a later request of these shapes is kept
                self._keys[key] = None
                while len(self._keys) > 4 * self._limit:
                    self._keys.popitem(last=False)
                self._pending.append((request, [c for c in REPLAY_ORDER if c in policy.missed]))

    def pending(self) -> bool:
        """Whether a replay waits or runs."""
        return bool(self._pending) or self._running

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()
            self._keys.clear()

    def next(self) -> str | None:
        """Replay the oldest kept request with its next part allowed to compile; a label, or None."""
        with self._lock:
            if not self._pending:
                return None
            request, parts = self._pending[0]
            part = parts.pop(0)
            if not parts:
                self._pending.popleft()
            self._running = True
        try:
            with compile_only({part}):
                self._replay(replay_request(request))
        finally:
            self._running = False
        return f"{part} at {request.width}x{request.height}"

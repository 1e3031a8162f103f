"""First-block cache: an opt-in, lossy step cache for many-step sampling (Base's 50 steps).

Each step runs the image refiner and the first main layer as usual. If that layer's residual changed by
less than ``threshold`` (mean absolute change over mean absolute value) since the last step that ran
in full, the other layers are skipped and the residual they added then is reused. Turbo's 8 steps
change too much from step to step to gain anything. Quality is measured, not assumed:
``benchmarks/profile_engine.py --sections step_cache`` reports time, skipped steps, latent error and PSNR.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from zimage_mcp.engine.dit.transformer import Conditioning, ZImageTransformer


@dataclass
class _State:
    first_residual: Tensor | None = None  # (B, S, D) of the last step that ran in full
    rest_residual: Tensor | None = None  # what layers[1:] added then


@dataclass
class FirstBlockCache:
    """``forward(x, t, cond)`` for one generation; one state per conditioning (CFG's two passes)."""

    model: ZImageTransformer
    threshold: float
    steps: int = 0
    skipped: int = 0
    changes: list[float] = field(default_factory=list)  # the relative change seen at each cached decision
    _states: dict[int, _State] = field(default_factory=dict)

    def __call__(self, x: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        m = self.model
        c = m.embed_time(t, x.dtype)
        h = m.unify(m.refine_image(m.embed_image(x, cond), c, cond), cond)  # (B, S, D)
        h1 = m.run_layers(h, c, cond, span=slice(0, 1))
        residual = h1 - h
        state = self._states.setdefault(id(cond), _State())
        self.steps += 1
        if state.first_residual is not None and state.rest_residual is not None and self._close(residual, state):
            self.skipped += 1
            return m.finish(h1 + state.rest_residual, c, cond)
        out = m.run_layers(h1, c, cond, span=slice(1, None))
        state.first_residual, state.rest_residual = residual, out - h1
        return m.finish(out, c, cond)

    def _close(self, residual: Tensor, state: _State) -> bool:
        ref = state.first_residual
        assert ref is not None
        change = (residual - ref).abs().float().mean() / ref.abs().float().mean().clamp(min=1e-12)
        self.changes.append(change.item())  # one host sync per step: the decision needs the value anyway
        return self.changes[-1] < self.threshold

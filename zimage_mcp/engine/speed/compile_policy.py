"""Who may compile: requests run what is already compiled and the rest eagerly; warm-up compiles.

``torch.compile`` compiles on the first call of each new input shape, seconds per shape (tens of seconds
with an empty compile cache), so without a policy the first request after a restart, and the first one at
each new size, waits for the compiler. Under ``compile_only(allowed)`` a component that is not allowed runs
its compiled code only for inputs that were compiled before, eagerly otherwise (without cuDNN autotuning),
and records the miss; the caller replays the request later with the component allowed, while the GPU is
idle. Outside any policy (benchmarks, tests, ``warm_up``) everything compiles on first use, as torch does.

The record of what was compiled is ours, keyed by the module and the inputs' shapes and dtypes; where it is
wrong (a guard it does not model), torch simply compiles in the call, as it would without a policy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

COMPONENTS = ("dit", "text", "vae")  # the compiled parts: DiT blocks, text-encoder layers and graphs, VAE decoder


@dataclass
class CompilePolicy:
    """``allowed``: components that may compile now; ``missed``: those that ran eagerly for want of it."""

    allowed: frozenset[str]
    missed: set[str] = field(default_factory=set)


_POLICY: ContextVar[CompilePolicy | None] = ContextVar("zimage_compile_policy", default=None)


@contextmanager
def compile_only(allowed: Iterable[str] = ()) -> Iterator[CompilePolicy]:
    """Inside, only ``allowed`` components may compile (or capture CUDA graphs, or autotune cuDNN); the
    others run compiled code where it exists for their inputs and eagerly where not. Per thread/context."""
    unknown = set(allowed) - set(COMPONENTS)
    if unknown:
        raise ValueError(f"unknown components {sorted(unknown)}; known: {', '.join(COMPONENTS)}")
    policy = CompilePolicy(frozenset(allowed))
    token = _POLICY.set(policy)
    try:
        yield policy
    finally:
        _POLICY.reset(token)


def may_compile(component: str) -> bool:
    policy = _POLICY.get()
    return policy is None or component in policy.allowed


def record_miss(component: str) -> None:
    """``component`` ran eagerly (or uncaptured) because the policy kept it from compiling."""
    policy = _POLICY.get()
    if policy is not None:
        policy.missed.add(component)


def _signature(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    def one(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return ("T", tuple(v.shape), v.dtype, v.device)
        if isinstance(v, (tuple, list)):
            return tuple(one(x) for x in v)
        return v if isinstance(v, (int, float, str, bool, type(None))) else type(v).__name__

    return (id(module), one(args), tuple((k, one(v)) for k, v in sorted(kwargs.items())))


def _without_autotuning(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    # cuDNN's benchmark mode (off unless the user's code turned it on: speed/optimize.py says why) tries every
    # algorithm on a new conv shape (about 2 s for a first VAE decode); a request that runs eagerly should not
    # pay that either.
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        return fn(*args, **kwargs)
    finally:
        torch.backends.cudnn.benchmark = previous


def compile_module(
    module: nn.Module, component: str, before_first_compile: Callable[[], None] | None = None, **compile_kwargs: Any
) -> None:
    """``module.compile(**compile_kwargs)``, built on the first call that may compile (so a process that
    never compiles never imports dynamo), and obeying ``compile_only``. ``before_first_compile`` runs once,
    outside any trace, before that first compilation (custom-op registration)."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}; known: {', '.join(COMPONENTS)}")
    eager = module._call_impl
    compiled: list[Callable[..., Any]] = []
    seen: set[tuple[Any, ...]] = set()

    def call(*args: Any, **kwargs: Any) -> Any:
        key = _signature(module, args, kwargs)
        if may_compile(component):
            if not compiled:
                if before_first_compile is not None:
                    before_first_compile()
                compiled.append(torch.compile(eager, **compile_kwargs))
            out = compiled[0](*args, **kwargs)
            seen.add(key)
            return out
        if key in seen:
            return compiled[0](*args, **kwargs)
        record_miss(component)
        return _without_autotuning(eager, *args, **kwargs)

    # nn.Module.compile() stores its compiled callable here and __call__ uses it; ours wraps the same thing.
    module._compiled_call_impl = call

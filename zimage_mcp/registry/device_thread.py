"""One long-lived thread runs every call into a backend's device work: loads, generations, compile units.

Why one thread: the GPU libraries keep per-thread state that takes from milliseconds to seconds to rebuild.
PyTorch keeps cuDNN's execution plans for convolutions and for attention in thread-local caches (what
``cudnn.benchmark`` measured included), and hands each thread its own cuBLAS handle and workspace.
Generations used to run on whichever worker thread anyio handed out, and anyio retires worker threads idle
for 10 s, so a request spaced like a human's chat could land on a fresh thread and rebuild all of it. On an
H200, the first compiled image after the idle-time compilation (which ran on a thread of its own) denoised
in 849-890 ms against 733 ms once warm. Here every such call runs on the same thread, so what one request
built, the next one finds. (The plugins' start-up preparation keeps a thread of its own: a plugin whose
``zimage_prepare`` hangs must not hold up generations.)

Callers block until their call returns (or raises), and each call runs in the caller's ``contextvars``
context (the request id in the log). A call made from the device thread itself runs inline, so nested
calls cannot deadlock. The thread is a daemon: a server asked to stop never waits for a compilation.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class DeviceThread:
    """A daemon thread, started on first use, that runs submitted calls one at a time in arrival order."""

    def __init__(self, name: str = "zimage-device") -> None:
        self.name = name
        self._calls: queue.SimpleQueue[tuple[Future[Any], contextvars.Context, Callable[[], Any]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Queue ``fn(*args, **kwargs)``; its result or exception arrives in the returned future."""
        future: Future[T] = Future()
        self._calls.put((future, contextvars.copy_context(), lambda: fn(*args, **kwargs)))
        with self._start:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        return future

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the device thread and return what it returns (or raise what it
        raised); inline when already there."""
        if self.is_current():
            return fn(*args, **kwargs)
        return self.submit(fn, *args, **kwargs).result()

    def is_current(self) -> bool:
        """Whether the calling thread is this device thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def _run(self) -> None:
        while True:
            future, context, call = self._calls.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = context.run(call)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, whatever it is
                future.set_exception(exc)
            else:
                future.set_result(result)
            del future, context, call  # drop the last result before waiting (it may hold GPU tensors)

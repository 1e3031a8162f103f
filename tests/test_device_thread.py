"""Every call into a backend's device work runs on one long-lived thread (``registry/device_thread.py``).

PyTorch keeps cuDNN's convolution and attention plans and each thread's cuBLAS handle per thread, so a
request on a fresh worker thread rebuilt them. The unit tests pin the thread's contract; the server tests
follow the load and generations (waited for and ``wait=false``) of a real server with the tiny engine,
through the SDK client, to the thread each ran on, and check that a plugin whose start-up preparation hangs
(on its own thread) holds up no generation.
"""

from __future__ import annotations

import contextvars
import threading
from dataclasses import replace
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.server_fixtures import anyio_backend, input_dir, registry_file, settings, tiny_model_dir  # noqa: F401
from zimage_mcp import hookimpl
from zimage_mcp.registry import Registry
from zimage_mcp.registry.device_thread import DeviceThread
from zimage_mcp.registry.plugin_manager import load_plugins
from zimage_mcp.registry.settings import Settings
from zimage_mcp.server import build_server

REQUEST = contextvars.ContextVar("REQUEST", default="-")


def test_calls_from_many_threads_run_on_one_thread_in_turn() -> None:
    device = DeviceThread()
    seen: list[tuple[int, str]] = []
    running = threading.Lock()

    def work(i: int) -> int:
        assert running.acquire(blocking=False), "two calls ran at once"
        try:
            seen.append((threading.get_ident(), threading.current_thread().name))
            return i * i
        finally:
            running.release()

    results: dict[int, int] = {}
    callers = [threading.Thread(target=lambda i=i: results.__setitem__(i, device.call(work, i))) for i in range(8)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert results == {i: i * i for i in range(8)}
    assert {s for s in seen} == {seen[0]} and seen[0][1] == "zimage-device"
    assert seen[0][0] not in {t.ident for t in callers} | {threading.get_ident()}


def test_an_exception_reaches_the_caller_and_the_thread_goes_on() -> None:
    device = DeviceThread()

    def fail() -> None:
        raise ValueError("width must be a multiple of 16")

    with pytest.raises(ValueError, match="multiple of 16"):
        device.call(fail)
    assert device.call(lambda: "still serving") == "still serving"


def test_a_call_made_on_the_device_thread_runs_inline_instead_of_deadlocking() -> None:
    device = DeviceThread()
    outer = device.call(lambda: (threading.get_ident(), device.call(threading.get_ident), device.is_current()))
    assert outer[0] == outer[1] and outer[2]
    assert not device.is_current()


def test_each_call_runs_in_its_callers_context() -> None:
    """The log's request id is a context variable: a load logged from the device thread keeps its request."""
    device = DeviceThread()

    def as_request(name: str) -> str:
        REQUEST.set(name)
        return device.call(REQUEST.get)

    assert contextvars.copy_context().run(as_request, "req 7") == "req 7"
    assert device.call(REQUEST.get) == "-"  # nothing leaks from one call into the next


class ThreadLog:
    """An inline plugin (a plugin author's view): prepares, and registers a variant that wraps the real tiny
    Turbo backend, noting the thread of every step."""

    def __init__(self, turbo: Any) -> None:
        self.turbo = turbo
        self.threads: list[tuple[str, str]] = []

    def note(self, step: str) -> None:
        self.threads.append((step, threading.current_thread().name))

    @hookimpl
    def zimage_prepare(self, context: Any) -> None:
        self.note("prepare")

    @hookimpl
    def zimage_register_variants(self, register: Any, catalog: Any) -> None:
        log = self

        class Noted:
            def __init__(self, inner: Any) -> None:
                self.inner = inner

            def generate(self, request: Any, progress: Any, should_stop: Any) -> Any:
                log.note("generate")
                return self.inner.generate(request, progress, should_stop)

            def unload(self) -> None:
                self.inner.unload()

            def vram_bytes(self) -> int:
                return int(self.inner.vram_bytes())

        def factory(spec: Any, ctx: Any) -> Noted:
            log.note("load")
            return Noted(self.turbo.factory(replace(spec, id="z-image-turbo"), ctx))

        register(replace(self.turbo.spec, id="thread-probe", title="thread probe"), factory, aliases=())


@pytest.mark.anyio
async def test_preparation_load_and_every_generation_run_on_the_registrys_device_thread(settings: Settings) -> None:
    turbo = Registry.from_settings(settings).resolve("z-image-turbo")
    log = ThreadLog(turbo)
    pm = load_plugins()
    pm.register(log, name="thread_log")
    registry = Registry.from_settings(settings, pm)
    args = {"model": "thread-probe", "prompt": "a lighthouse", "width": 256, "height": 256, "steps": 2}
    async with Client(build_server(settings, registry)) as client:
        first = await client.call_tool("generate_image", {**args, "seed": 1})
        second = await client.call_tool("generate_image", {**args, "seed": 2})
        queued = await client.call_tool("generate_image", {**args, "seed": 3, "wait": False})
        done = await client.call_tool("get_job", {"job_id": queued.structured_content["job_id"], "wait_seconds": 50})
    assert done.structured_content["status"] == "done", done.content[0].text
    assert not first.is_error and not second.is_error, (first.content[0].text, second.content[0].text)
    steps = [step for step, _ in log.threads]
    assert steps.count("prepare") == 1 and steps.count("load") == 1 and steps.count("generate") == 3, log.threads
    assert {name for step, name in log.threads if step != "prepare"} == {"zimage-device"}, log.threads
    assert dict(log.threads)["prepare"] == "zimage-prepare"  # its own thread: see the next test


@pytest.mark.anyio
async def test_a_plugin_whose_preparation_hangs_holds_up_no_generation(settings: Settings) -> None:
    release = threading.Event()

    class Stuck:
        @hookimpl
        def zimage_prepare(self, context: Any) -> None:
            release.wait(120)  # a network call that never answers, say

    pm = load_plugins()
    pm.register(Stuck(), name="stuck")
    try:
        async with Client(build_server(settings, Registry.from_settings(settings, pm))) as client:
            with anyio.fail_after(90):
                made = await client.call_tool(
                    "generate_image", {"prompt": "a lighthouse", "width": 256, "height": 256, "steps": 2}
                )
        assert not made.is_error, made.content[0].text
    finally:
        release.set()


def test_the_ray_front_runs_device_calls_inline() -> None:
    """The front under ``--ray`` has no device: its calls go to replicas, several at once."""
    proxy = pytest.importorskip("zimage_mcp.scale.proxy", exc_type=ImportError)
    here = threading.current_thread().name
    assert (
        proxy.RayRegistry.run_on_device(object.__new__(proxy.RayRegistry), lambda: threading.current_thread().name)
        == here
    )

"""GPU faults, failed loads, cancellation and time-outs, on the real engine backend (tiny model, CPU).

A test plugin (registered on the plugin manager, like any third-party plugin) adds variants whose
factories wrap the real ``zimage_engine_backend.build_backend``:

* ``oom-engine``: the engine raises ``torch.cuda.OutOfMemoryError`` from its step callback mid-run
  (patched on that backend instance only), so the backend's own OOM translation runs;
* ``slow-engine``: when the probe's gate is armed, the first denoising step's callback waits (on an
  Event, polled with ``should_stop``) until the job is told to stop, so a cancel or a time-out always
  lands mid-run and the test can count the steps that ran after it: no wall-clock thresholds;
* ``broken-engine``: the factory raises (a backend that fails to load).
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mcp import MCPError

from tests.server_fixtures import SyncClient, module_settings, result_text, tiny_model_dir  # noqa: F401
from zimage_mcp import hookimpl
from zimage_mcp.registry import Registry
from zimage_mcp.registry.plugin_manager import plugin_manager_from_settings
from zimage_mcp.registry.settings import Settings
from zimage_mcp.server import build_server

ARGS = {"prompt": "a lamp", "width": 256, "height": 256, "steps": 2, "preview": "none"}


class Probe:
    """Shared switches and observations between the test and the wrapped backends."""

    def __init__(self) -> None:
        self.oom_armed = True
        self.gate_armed = False
        self.entered = threading.Event()  # the gated step is running
        self.steps = 0  # denoising steps of slow-engine runs
        self.steps_at_stop: int | None = None  # steps done when the gate saw the stop request
        self.builds = 0


def _plugin(turbo: Any, probe: Probe) -> object:
    def oom_factory(spec: Any, ctx: Any) -> Any:
        import torch
        from zimage_builtins.engine_backend import build_backend

        backend = build_backend(spec, ctx)
        real_run = backend._run

        def run(request: Any, on_step: Any, should_stop: Any) -> Any:
            def exploding(i: int, n: int) -> None:
                on_step(i, n)
                if i >= 1 and probe.oom_armed:
                    probe.oom_armed = False
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

            return real_run(request, exploding, should_stop)

        backend._run = run  # this instance only
        return backend

    def slow_factory(spec: Any, ctx: Any) -> Any:
        from zimage_builtins.engine_backend import build_backend

        backend = build_backend(spec, ctx)
        real_run = backend._run

        def run(request: Any, on_step: Any, should_stop: Any) -> Any:
            def slow(i: int, n: int) -> None:
                probe.steps += 1
                on_step(i, n)
                if probe.gate_armed:
                    probe.gate_armed = False
                    probe.entered.set()
                    hang_guard = time.monotonic() + 30
                    while not should_stop() and time.monotonic() < hang_guard:
                        threading.Event().wait(0.005)
                    probe.steps_at_stop = probe.steps

            return real_run(request, slow, should_stop)

        backend._run = run
        return backend

    def broken_factory(spec: Any, ctx: Any) -> Any:
        probe.builds += 1
        raise RuntimeError("safetensors header is corrupt in transformer shard 2")

    class FaultPlugin:
        @hookimpl
        def zimage_register_variants(self, register: Any, catalog: Any) -> None:
            for vid, factory in (
                ("oom-engine", oom_factory),
                ("slow-engine", slow_factory),
                ("broken-engine", broken_factory),
            ):
                register(replace(turbo, id=vid, title=vid), factory, aliases=())

    return FaultPlugin()


def _server(settings: Settings, probe: Probe) -> Any:
    turbo = Registry.from_settings(settings).resolve("z-image-turbo").spec
    pm = plugin_manager_from_settings(settings)
    pm.register(_plugin(turbo, probe), name="fault_test_plugin")
    return build_server(settings, Registry.from_settings(settings, pm=pm))


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Settings:  # noqa: F811
    return module_settings(tmp_path_factory, tiny_model_dir, "faults")


def _images(settings: Settings) -> set[str]:
    folder = Path(settings.output_dir) / "images"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_oom_mid_run_is_translated_and_the_server_recovers(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from zimage_builtins import engine_backend

    emptied: list[str] = []  # the devices whose allocator cache the bridge released
    real_release = engine_backend.release_cached_memory
    monkeypatch.setattr(
        engine_backend, "release_cached_memory", lambda device: (emptied.append(device.type), real_release(device))[1]
    )
    probe = Probe()
    server = _server(settings, probe)
    with SyncClient(server) as client:
        before = _images(settings)
        oom = client.call("generate_image", {**ARGS, "model": "oom-engine"})
        text = result_text(oom)
        assert oom.is_error and "out of GPU memory" in text, text
        assert "Lower width/height, count or steps" in text and "256x256" in text
        assert not probe.oom_armed  # it really fired inside the engine's step path
        assert emptied == ["cpu"], "the backend did not release the allocator's cache after the OOM"
        assert not server.state.jobs.lock.held and server.state.jobs.queue_depth == 0
        assert _images(settings) == before  # nothing half-written
        assert server.state.jobs.queue_depth == 0  # the retry below is first in line
        again = client.call("generate_image", {**ARGS, "model": "oom-engine"})
        assert not again.is_error, result_text(again)
        assert not server.state.jobs.lock.held and server.state.jobs.queue_depth == 0
        other = client.call("generate_image", ARGS)
        assert not other.is_error
    assert 'reason="OutOfMemoryError"' in server.state.metrics.render()


def test_failed_load_marks_only_that_variant(settings: Settings) -> None:
    probe = Probe()
    server = _server(settings, probe)
    with SyncClient(server) as client:
        broken = client.call("generate_image", {**ARGS, "model": "broken-engine"})
        assert broken.is_error and "broken-engine" in result_text(broken)
        assert "corrupt" in result_text(broken)
        models = client.call("list_models", {})
        failed = models.structured_content["failed"]
        assert "broken-engine" in failed and "corrupt" in failed["broken-engine"]
        row = next(v for v in models.structured_content["variants"] if v["id"] == "broken-engine")
        assert row["failed"] and "FAILED" in result_text(models)
        assert set(failed) == {"broken-engine"}
        ok = client.call("generate_image", ARGS)
        assert not ok.is_error, result_text(ok)
        again = client.call("generate_image", {**ARGS, "model": "broken-engine"})
        assert again.is_error and probe.builds == 1  # marked failed: not rebuilt on every call
        assert not server.state.jobs.lock.held


def _until(condition: Any, bound: float = 60.0) -> None:
    """Wait for a state change; the bound only keeps a broken build from hanging the suite."""
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, "state never reached"
        time.sleep(0.005)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_client_cancel_stops_within_one_step(settings: Settings, mode: str) -> None:
    probe = Probe()
    server = _server(settings, probe)
    with SyncClient(server, mode=mode) as client:
        warm = client.call("generate_image", {**ARGS, "model": "slow-engine"})
        assert not warm.is_error, result_text(warm)
        before = _images(settings)
        probe.steps, probe.gate_armed = 0, True
        # the gated run cannot finish on its own: the client's read time-out is what cancels it
        with pytest.raises(MCPError):
            client.call("generate_image", {**ARGS, "model": "slow-engine", "steps": 80}, timeout=0.6)
        assert probe.entered.is_set(), "the engine never started"
        _until(lambda: not server.state.jobs.lock.held)
        assert probe.steps_at_stop is not None and probe.steps == probe.steps_at_stop == 1  # no step after the stop
        assert server.state.jobs.queue_depth == 0  # nothing waits: the next call is first in line
        nxt = client.call("generate_image", ARGS)
        assert not nxt.is_error, result_text(nxt)
        new = _images(settings) - before
        assert len(new) == 2 and not [n for n in new if n.startswith(".tmp-")]  # only the next call's image+sidecar
    assert 'outcome="cancelled"' in server.state.metrics.render()


def test_server_timeout_stops_the_engine(settings: Settings) -> None:
    probe = Probe()
    server = _server(replace(settings, job_timeout_seconds=0.5), probe)
    jobs = server.state.jobs
    with SyncClient(server) as client:
        jobs.timeout_seconds = 600.0  # only the gated call below runs under the 0.5 s limit
        client.call("generate_image", {**ARGS, "model": "slow-engine"})  # load first
        probe.steps, probe.gate_armed = 0, True
        jobs.timeout_seconds = 0.5
        slow = client.call("generate_image", {**ARGS, "model": "slow-engine", "steps": 80})
        jobs.timeout_seconds = 600.0
        assert slow.is_error and "timed out after 0.5 s" in result_text(slow)
        assert "fewer steps" in result_text(slow)
        assert probe.steps_at_stop is not None and probe.steps == probe.steps_at_stop  # stopped where it was told
        assert not jobs.lock.held and jobs.queue_depth == 0
        nxt = client.call("generate_image", ARGS)
        assert not nxt.is_error, result_text(nxt)


def test_cancel_job_while_queued_and_running(settings: Settings) -> None:
    probe = Probe()
    server = _server(settings, probe)
    with SyncClient(server) as client:
        client.call("generate_image", {**ARGS, "model": "slow-engine"})
        probe.steps, probe.gate_armed = 0, True
        first = client.call("generate_image", {**ARGS, "model": "slow-engine", "steps": 60, "wait": False})
        second = client.call("generate_image", {**ARGS, "model": "slow-engine", "steps": 60, "wait": False})
        a, b = first.structured_content, second.structured_content
        assert b["queue_ticket"] == a["queue_ticket"] + 1
        assert probe.entered.wait(60)  # the first runs (held at its gate), so the second is still queued
        assert server.state.jobs.get(b["job_id"]).state == "queued"
        queued = client.call("cancel_job", {"job_id": b["job_id"]})
        assert queued.structured_content["status"] == "cancelled"
        running = client.call("cancel_job", {"job_id": a["job_id"]})
        assert running.structured_content["status"] == "cancelled"
        _until(lambda: not server.state.jobs.lock.held)
        assert server.state.jobs.queue_depth == 0
        assert probe.steps_at_stop is not None and probe.steps == probe.steps_at_stop == 1  # the second never ran
        nxt = client.call("generate_image", ARGS)
        assert not nxt.is_error, result_text(nxt)

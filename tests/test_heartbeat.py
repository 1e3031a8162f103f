"""Long silent work (loading, a first compile) still sends progress, strictly increasing, inside its unit."""

from __future__ import annotations

import threading
import time

from zimage_mcp.server.heartbeat import Heartbeat


def test_silent_work_beats_inside_its_unit_and_stops_after() -> None:
    sent: list[tuple[str, float, float, str]] = []
    three_beats = threading.Event()

    def progress(phase: str, done: float, total: float, message: str) -> None:
        sent.append((phase, done, total, message))
        if len(sent) == 4:
            three_beats.set()

    with Heartbeat(progress, period=0.01) as beat:
        beat("loading", 0, 1, "loading weights for z-image-turbo")
        assert three_beats.wait(10), sent  # the load itself says nothing for a while
        beat("loading", 1, 1, "weights ready")
    after = len(sent)
    assert sent[0] == ("loading", 0, 1, "loading weights for z-image-turbo")
    beats = [s for s in sent[1:] if not s[3].startswith("weights ready")]
    dones = [b[1] for b in beats]
    assert dones == sorted(dones) and len(set(dones)) == len(dones) and all(0 < d < 1 for d in dones)
    assert all(b[3].startswith("loading weights for z-image-turbo (") for b in beats)
    assert ("loading", 1, 1, "weights ready") in sent and all(s[1] <= s[2] for s in sent)  # never past the unit
    time.sleep(0.05)  # five periods: a heartbeat left open would have beaten again
    assert len(sent) == after  # stopped with the block


def test_heartbeats_share_one_thread() -> None:
    """Jobs do not start a thread each: that waits for the GIL behind the other jobs, with the GPU idle."""
    with Heartbeat(lambda *_: None, period=0.01):
        pass
    before = threading.active_count()
    beats: list[int] = []
    with Heartbeat(lambda *_: beats.append(1), period=0.01) as one, Heartbeat(lambda *_: beats.append(2)) as two:
        one("loading", 0, 1, "a")
        two("loading", 0, 1, "b")
        assert threading.active_count() == before
        time.sleep(0.1)
    assert beats.count(1) > 1 and beats.count(2) == 1  # each at its own period: the second has 2 s

"""Per-replica queue depth and latency, counted on the front from the replica id each response names."""

from __future__ import annotations

import threading
from collections import defaultdict

BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
UNASSIGNED = ""  # sent, and no replica has started it yet (queued in Serve's router)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class ReplicaStats:
    """Thread-safe gauges and a histogram per replica, rendered as Prometheus text for ``/metrics``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight: defaultdict[str, int] = defaultdict(int)
        self.buckets: defaultdict[str, list[int]] = defaultdict(lambda: [0] * len(BUCKETS))
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.count: defaultdict[str, int] = defaultdict(int)
        self.lost_total: defaultdict[str, int] = defaultdict(int)

    def sent(self) -> None:
        with self._lock:
            self.in_flight[UNASSIGNED] += 1

    def assigned(self, replica: str) -> None:
        with self._lock:
            self.in_flight[UNASSIGNED] -= 1
            self.in_flight[replica] += 1

    def finished(self, replica: str, seconds: float) -> None:
        with self._lock:
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self.buckets[replica][i] += 1
            self.seconds[replica] += seconds
            self.count[replica] += 1

    def lost(self, replica: str) -> None:
        with self._lock:
            self.lost_total[replica] += 1

    def done(self, replica: str) -> None:
        """The request left ``replica`` (or the router, for ``UNASSIGNED``), however it ended."""
        with self._lock:
            self.in_flight[replica] -= 1

    def replicas_used(self) -> set[str]:
        with self._lock:
            return {r for r, n in self.count.items() if n}

    def render(self) -> str:
        lines = [
            "# HELP zimage_replica_queue_depth Generations sent to an engine replica and not finished "
            '(replica="": queued in the Ray Serve router).',
            "# TYPE zimage_replica_queue_depth gauge",
        ]
        with self._lock:
            for replica, n in sorted(self.in_flight.items()):
                lines.append(f'zimage_replica_queue_depth{{replica="{_label(replica)}"}} {n}')
            lines += [
                "# HELP zimage_replica_generation_seconds Wall time of generations per replica, seen from the front.",
                "# TYPE zimage_replica_generation_seconds histogram",
            ]
            for replica in sorted(self.count):
                r, n_all = _label(replica), self.count[replica]
                for bound, n in zip(BUCKETS, self.buckets[replica], strict=True):
                    lines.append(f'zimage_replica_generation_seconds_bucket{{replica="{r}",le="{bound}"}} {n}')
                lines.append(f'zimage_replica_generation_seconds_bucket{{replica="{r}",le="+Inf"}} {n_all}')
                lines.append(f'zimage_replica_generation_seconds_sum{{replica="{r}"}} {self.seconds[replica]:.6f}')
                lines.append(f'zimage_replica_generation_seconds_count{{replica="{r}"}} {n_all}')
            lines += [
                "# HELP zimage_replica_lost_total Generations whose replica died under them.",
                "# TYPE zimage_replica_lost_total counter",
            ]
            for replica, n in sorted(self.lost_total.items()):
                lines.append(f'zimage_replica_lost_total{{replica="{_label(replica)}"}} {n}')
        return "\n".join(lines) + "\n"

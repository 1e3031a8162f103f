"""Prometheus text-format metrics: requests, failures and latency per variant, and queue depth."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Thread-safe counters and a latency histogram, rendered for ``GET /metrics``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: defaultdict[tuple[str, str], int] = defaultdict(int)  # (tool, variant)
        self.failures: defaultdict[tuple[str, str, str], int] = defaultdict(int)  # (tool, variant, reason)
        self.latency_buckets: defaultdict[str, list[int]] = defaultdict(lambda: [0] * len(BUCKETS))
        self.latency_sum: defaultdict[str, float] = defaultdict(float)
        self.latency_count: defaultdict[str, int] = defaultdict(int)
        self.calls: defaultdict[tuple[str, str], int] = defaultdict(int)  # (tool, outcome)
        self.queue_depth: Callable[[], int] = lambda: 0

    def record_call(self, tool: str, outcome: str) -> None:
        """One finished tool call: outcome ``ok``, ``error`` or ``cancelled``."""
        with self._lock:
            self.calls[(tool, outcome)] += 1

    def record_request(self, tool: str, variant: str) -> None:
        with self._lock:
            self.requests[(tool, variant)] += 1

    def record_failure(self, tool: str, variant: str, reason: str) -> None:
        with self._lock:
            self.failures[(tool, variant, reason)] += 1

    def observe_latency(self, variant: str, seconds: float) -> None:
        with self._lock:
            buckets = self.latency_buckets[variant]
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            self.latency_sum[variant] += seconds
            self.latency_count[variant] += 1

    def render(self) -> str:
        lines = [
            "# HELP zimage_requests_total Tool calls that asked for a variant.",
            "# TYPE zimage_requests_total counter",
        ]
        with self._lock:
            calls = sorted(self.calls.items())
            for (tool, variant), n in sorted(self.requests.items()):
                lines.append(f'zimage_requests_total{{tool="{_label(tool)}",variant="{_label(variant)}"}} {n}')
            lines += ["# HELP zimage_failures_total Failed tool calls.", "# TYPE zimage_failures_total counter"]
            for (tool, variant, reason), n in sorted(self.failures.items()):
                labels = f'tool="{_label(tool)}",variant="{_label(variant)}",reason="{_label(reason)}"'
                lines.append(f"zimage_failures_total{{{labels}}} {n}")
            lines += [
                "# HELP zimage_generation_seconds Wall time of finished generations.",
                "# TYPE zimage_generation_seconds histogram",
            ]
            for variant in sorted(self.latency_count):
                v = _label(variant)
                for bound, n in zip(BUCKETS, self.latency_buckets[variant], strict=True):
                    lines.append(f'zimage_generation_seconds_bucket{{variant="{v}",le="{bound}"}} {n}')
                count = self.latency_count[variant]
                lines.append(f'zimage_generation_seconds_bucket{{variant="{v}",le="+Inf"}} {count}')
                lines.append(f'zimage_generation_seconds_sum{{variant="{v}"}} {self.latency_sum[variant]:.6f}')
                lines.append(f'zimage_generation_seconds_count{{variant="{v}"}} {count}')
        lines += [
            "# HELP zimage_tool_calls_total Tool calls by outcome (ok, error, cancelled).",
            "# TYPE zimage_tool_calls_total counter",
        ]
        lines += [f'zimage_tool_calls_total{{tool="{_label(t)}",outcome="{_label(o)}"}} {n}' for (t, o), n in calls]
        lines += [
            "# HELP zimage_queue_depth Jobs waiting for or holding the GPU.",
            "# TYPE zimage_queue_depth gauge",
            f"zimage_queue_depth {self.queue_depth()}",
        ]
        return "\n".join(lines) + "\n"

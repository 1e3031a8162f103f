"""Benchmarks only: the idle-time compilation's unit order, from ``ZIMAGE_BENCH_REPLAY_ORDER`` (e.g.
``dit,text,vae``), for an A/B against ``zimage_builtins.compile_queue.REPLAY_ORDER``.

Put this folder on the server's ``PYTHONPATH``; Python imports ``sitecustomize`` at start-up. Without the
variable it does nothing; with it, it imports the plugin's queue module (and so torch) at start-up and sets
the order, which the queue reads each time a request is kept.
"""

from __future__ import annotations

import os

ORDER = os.environ.get("ZIMAGE_BENCH_REPLAY_ORDER")
if ORDER:
    from zimage_builtins import compile_queue

    compile_queue.REPLAY_ORDER = tuple(part.strip() for part in ORDER.split(","))

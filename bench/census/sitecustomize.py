"""Memory census of a benchmark's operator: what keeps Kubernetes object bodies alive.

Put this directory on the operator's PYTHONPATH (the benchmarks pass their environment on)::

    PYTHONPATH=bench/census python bench/e2e_throughput.py --phases storm --incidents 1000

Every ``CENSUS_INTERVAL`` seconds (default 15) the operator process appends one line to
``$CENSUS_DIR/census-<pid>.txt`` (default: the temp directory): how many complete object bodies
(dicts with apiVersion, metadata and spec) are alive, and the types of what refers to a sample
of them; with ``CENSUS_TYPES=1`` also the types with the most live objects, each with their
count and shallow size (``sys.getsizeof``). A diagnostic, not a benchmark: walking every
object holds the GIL for a while.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import threading
import time
from collections import Counter

SAMPLE = 100
TYPES = 25


def _census(path: str, interval: float) -> None:
    while True:
        time.sleep(interval)
        objects = gc.get_objects()
        bodies = [o for o in objects if type(o) is dict and "apiVersion" in o and "metadata" in o and "spec" in o]
        holders: Counter[str] = Counter()
        sample = bodies[:SAMPLE]
        for body in sample:
            for referrer in gc.get_referrers(body):
                if referrer is objects or referrer is bodies or referrer is sample:
                    continue
                holders[type(referrer).__name__] += 1
        with open(path, "a", encoding="utf-8") as out:
            out.write(
                f"{time.strftime('%H:%M:%S')} objects={len(objects)} bodies={len(bodies)} "
                f"holders of {len(sample)}: {holders.most_common(8)}\n"
            )
            if os.environ.get("CENSUS_TYPES") == "1":
                counts: Counter[str] = Counter()
                sizes: Counter[str] = Counter()
                for item in objects:
                    name = f"{type(item).__module__}.{type(item).__qualname__}"
                    counts[name] += 1
                    sizes[name] += sys.getsizeof(item)
                for name, size in sizes.most_common(TYPES):
                    out.write(f"    {size / 2**20:8.1f} MB {counts[name]:>9} {name}\n")
        del objects, bodies, sample


if "--standalone" in sys.argv:  # only the operator the benchmarks start, not the benchmark itself
    directory = os.environ.get("CENSUS_DIR", tempfile.gettempdir())
    threading.Thread(
        target=_census,
        args=(os.path.join(directory, f"census-{os.getpid()}.txt"), float(os.environ.get("CENSUS_INTERVAL", "15"))),
        daemon=True,
    ).start()

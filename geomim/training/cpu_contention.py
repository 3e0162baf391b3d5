"""A hint when other work competes for the cores a CPU run's threads need.

torch's OpenMP threads spin-wait for each other at the end of every parallel op; when another
process holds one of their cores, each op waits for that core's time slice. Measured on 2 cores
with one busy process beside geomim_base's forward (`benchmarks/backbone.py --load 1`): 14.5 s
with the default 2 spinning threads, 10.1 s with `OMP_WAIT_POLICY=PASSIVE`, 10.2 s on 1 thread
(5.3 s unloaded). Passive waiting costs ~7% on an idle machine, so it is advice, not a default.
"""

from __future__ import annotations

import os


def contention_hint(
    threads: int, cores: int | None = None, load_average: float | None = None
) -> str | None:
    """The line to print when the 1-minute load average says fewer cores are free than torch
    has threads (None when they fit, or the user has chosen the OpenMP wait policy)."""
    if "OMP_WAIT_POLICY" in os.environ:
        return None
    cores = cores or os.cpu_count() or 1
    if load_average is None:
        try:
            load_average = os.getloadavg()[0]
        except OSError:  # no load average on this platform
            return None
    free = cores - load_average
    if free > threads - 0.75:  # hint once most of a core is taken (0.6 may be a finished job)
        return None
    fitting = max(1, round(free))
    return (
        f"note: other work is using the CPU (1-minute load average {load_average:.1f} on "
        f"{cores} cores) and torch runs {threads} threads, which spin-wait for each other at "
        f"every op while a core is taken; under such load OMP_WAIT_POLICY=PASSIVE (set before "
        f"python starts) or train.threads={fitting} ran ~1.4x faster (benchmarks/README.md)"
    )

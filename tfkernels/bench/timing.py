"""Timing on a shared machine: interleaved medians, the CPU share of other processes.

:func:`time_interleaved` times several implementations in rotating order, so that none
is timed in a quieter moment than another; :class:`CpuMonitor` measures how much of
the machine other processes took meanwhile, and :func:`wait_quiet` waits for them to
leave.
"""

import math
import os
import statistics
import time


def timed(fn):
    """Seconds of one call of ``fn()``."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_interleaved(impls, repeats, min_sample_s, pause_s):
    """Median seconds per call of each implementation, samples interleaved.

    Parameters
    ----------
    impls : dict
        Label → object with ``sample(n_inner) -> seconds``.
    repeats : int
        Timed samples per implementation.
    min_sample_s : float
        Each sample repeats the call until it lasts at least this long.
    pause_s : float
        Sleep between samples of different implementations.

    Returns
    -------
    dict
        Label → ``{"median_s", "times_s", "n_inner"}``.
    """
    n_inner = {}
    for label, impl in impls.items():
        t1 = impl.sample(1)
        n_inner[label] = max(1, math.ceil(min_sample_s / max(t1, 1e-9)))
    times = {label: [] for label in impls}
    labels = list(impls)
    for r in range(repeats):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            times[label].append(impls[label].sample(n_inner[label]) / n_inner[label])
            time.sleep(pause_s)
    return {
        label: {"median_s": statistics.median(ts), "times_s": ts, "n_inner": n_inner[label]}
        for label, ts in times.items()
    }


def _proc_stat_cpu():
    """``(busy, steal)`` seconds of all CPUs since boot from ``/proc/stat``."""
    try:
        with open("/proc/stat") as fh:
            f = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq = f[:7]
    steal = f[7] if len(f) > 7 else 0
    return (user + nice + system + irq + softirq) / tick, steal / tick


def _pid_cpu(pid):
    """CPU seconds of a live process from ``/proc/<pid>/stat`` (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class CpuMonitor:
    """How much of the machine *other* processes used while we measured.

    On a shared machine a busy core turns every multi-threaded parallel region into a
    wait for a scheduler time slice. The monitor reads all-CPU busy time from
    ``/proc/stat`` and subtracts our own CPU time (this process, finished children and
    the live peer workers ``pids()``).

    Parameters
    ----------
    pids : callable, optional
        Returns the pids of live worker processes to count as ours.
    """

    def __init__(self, pids=None):
        self.pids = pids or (lambda: [])
        self.start = self._snapshot()

    def _snapshot(self):
        t = os.times()
        ours = t.user + t.system + t.children_user + t.children_system
        ours += sum(_pid_cpu(p) for p in self.pids())
        return time.perf_counter(), _proc_stat_cpu(), ours

    def read(self):
        """``{"foreign_cpu_frac", "steal_frac", "loadavg"}`` since construction."""
        (w0, s0, o0), (w1, s1, o1) = self.start, self._snapshot()
        n_cpu = os.cpu_count() or 1
        wall = max(w1 - w0, 1e-9)
        out = {"loadavg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
        if s0 is None or s1 is None:
            return {**out, "foreign_cpu_frac": None, "steal_frac": None}
        foreign = max((s1[0] - s0[0]) - (o1 - o0), 0.0) / (wall * n_cpu)
        return {
            **out,
            "foreign_cpu_frac": min(foreign, 1.0),
            "steal_frac": (s1[1] - s0[1]) / (wall * n_cpu),
        }


def wait_quiet(max_wait_s, threshold=0.15, window_s=0.5):
    """Wait up to ``max_wait_s`` until other processes use < ``threshold`` of the CPUs.

    Returns
    -------
    dict
        ``waited_s``, ``quiet`` (whether the threshold was reached) and the last
        ``foreign_cpu_frac`` observed over a ``window_s`` window.
    """
    t0 = time.perf_counter()
    if max_wait_s <= 0:
        return {"waited_s": 0.0, "quiet": None, "foreign_cpu_frac": None}
    while True:
        mon = CpuMonitor()
        time.sleep(window_s)
        frac = mon.read()["foreign_cpu_frac"]
        waited = time.perf_counter() - t0
        if frac is None or frac < threshold or waited >= max_wait_s:
            return {
                "waited_s": waited,
                "quiet": frac is None or frac < threshold,
                "foreign_cpu_frac": frac,
            }

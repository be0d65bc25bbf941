"""The kernels' first run on a machine: a one-line notice, and compiling in two processes.

Numba compiles a kernel the first time it is called with new argument types and keeps
the result in its on-disk cache (``config.CACHE``), so only the first run on a machine
pays. Two things make that first run bearable:

* :func:`notice` prints one line when a run starts compiling (the command-line tool
  does this always, :func:`tfkernels.perturbation_decay` with ``progress=True``);
* :func:`prepare` compiles a study's kernels before the study runs: the calls it is
  given in ``foreground`` here, and those in ``background`` at the same time in a
  second Python process, which leaves them in the cache for this one to load. Numba
  compiles one function at a time per process (a global lock), so a second process is
  the only way to use a second core; on a cold cache the default ``tfkernels decay``
  study compiles in about half the time (``docs/performance.md``, "Cold start").

The second process starts only when it can help: the cache is on, this process may
run on at least two CPUs, a foreground call actually compiles (the first compile
event of a tfkernels kernel), and ``TFKERNELS_COMPILE_PROCESS`` is not ``0``. Whatever
it does, the background calls run here afterwards: they load what it cached, or
compile here if it failed, so the results never depend on it (the cache holds the
same machine code that compiling here gives).
"""

import contextlib
import os
import pickle
import subprocess
import sys
import threading
import time

from . import config

#: Environment variable that turns the second compile process off when set to ``0``.
ENV_SWITCH = "TFKERNELS_COMPILE_PROCESS"


def _tfkernels_dispatcher(data):
    """True when a ``numba:compile`` event is for a function of this package."""
    func = getattr(data.get("dispatcher"), "py_func", None)
    return getattr(func, "__module__", "").startswith("tfkernels.")


def _array_dtype(numba_types):
    """Name of the first floating array dtype among (nested) Numba argument types."""
    for t in numba_types:
        dtype = getattr(t, "dtype", None)
        if dtype is not None and getattr(t, "ndim", 0) and str(dtype).startswith("float"):
            return str(dtype)
        inner = getattr(t, "types", None)
        if inner:
            found = _array_dtype(inner)
            if found:
                return found
    return None


class _FirstCompile:
    """A Numba event listener calling ``callback(dtype)`` at the first compile of a
    tfkernels function (a cache miss) per dtype; cache loads send no event."""

    def __init__(self, callback):
        from numba.core import event

        class Listener(event.Listener):
            def on_start(_, ev):
                if not _tfkernels_dispatcher(ev.data):
                    return
                dtype = _array_dtype(ev.data.get("args", ()) or ()) or "float64"
                if dtype not in self.seen:
                    self.seen.add(dtype)
                    callback(dtype)

            def on_end(_, ev):
                pass

        self.seen = set()
        self.listener = Listener()

    @contextlib.contextmanager
    def installed(self):
        from numba.core import event

        with event.install_listener("numba:compile", self.listener):
            yield self


@contextlib.contextmanager
def notice(stream=None, estimate_s=None):
    """Print one line to ``stream`` (standard error by default) when a kernel compiles.

    Inside the block, the first compilation of a tfkernels kernel for each dtype prints
    ``compiling kernels for float64, once per machine (~N s)``; a run whose kernels all
    come from Numba's cache prints nothing. Notices nest: only the innermost speaks,
    and a process announces each dtype once.

    Parameters
    ----------
    stream : file, optional
        Where the line goes (``sys.stderr`` when None).
    estimate_s : float, optional
        Expected compile time, shown as ``~N s`` (see :func:`estimate`).
    """

    token = object()

    def say(dtype):
        if _notices[-1] is not token or dtype in _announced:
            return  # the innermost notice speaks, once per dtype and process
        _announced.add(dtype)
        out = sys.stderr if stream is None else stream
        about = f" (~{estimate_s:.0f} s)" if estimate_s else ""
        print(f"compiling kernels for {dtype}, once per machine{about}", file=out, flush=True)

    _notices.append(token)
    try:
        with _FirstCompile(say).installed():
            yield
    finally:
        _notices.remove(token)


_notices = []  # the active notices, innermost last
_announced = set()  # dtypes whose compile this process has announced


def estimate(kinds, parallel=True):
    """Expected cold-compile seconds of a study using the kernel families ``kinds``.

    From ``config.COMPILE_SECONDS`` (measured on one machine; others take up to 2–3×
    as long). ``kinds`` is a pair ``(foreground, background)`` of lists of family names;
    with ``parallel`` the two run side by side and the longer counts.
    """
    fg, bg = (sum(config.COMPILE_SECONDS[k] for k in part) for part in kinds)
    return max(fg, bg) if parallel and _second_process_allowed() else fg + bg


def _second_process_allowed():
    if not config.CACHE or os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    try:
        n_cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n_cpus = os.cpu_count() or 1
    return n_cpus >= 2


def prepare(foreground, background=()):
    """Compile (or load from the cache) the kernels that the given calls use.

    Parameters
    ----------
    foreground, background : sequence of (callable, tuple)
        Calls ``fn(*args)``: small runs of exactly the kernels (argument types) that a
        study will use. ``fn`` must be a module-level function and ``args`` picklable.
        The foreground calls run here, in order. If one of them compiles and a second
        process is allowed (module docstring), the background calls start at once in a
        second Python process; when the foreground calls are done this waits for it,
        then runs the background calls here (loading what it cached).

    Returns
    -------
    dict
        ``compiled`` (whether anything compiled here or there), ``second_process``
        (whether one ran) and ``seconds``.
    """
    t0 = time.perf_counter()
    state = {"proc": None, "compiled": False}
    payload = list(background)

    def start(_dtype):
        state["compiled"] = True
        if payload and state["proc"] is None and _second_process_allowed():
            state["proc"] = _spawn(payload)

    def note(_dtype):  # the background calls compiling here: nothing left to hand off
        state["compiled"] = True

    try:
        with _FirstCompile(start).installed():
            for fn, args in foreground:
                fn(*args)
        if state["proc"] is not None:
            state["proc"].wait()
        with _FirstCompile(note).installed():
            for fn, args in payload:
                fn(*args)
    finally:
        proc = state["proc"]
        if proc is not None and proc.poll() is None:  # interrupted: do not leave it behind
            proc.kill()
            proc.wait()
    return {
        "compiled": state["compiled"],
        "second_process": state["proc"] is not None,
        "seconds": time.perf_counter() - t0,
    }


def _spawn(calls):
    """Start ``python -m tfkernels.compiling`` running ``calls``; return the Popen."""
    env = dict(os.environ)
    env[ENV_SWITCH] = "0"  # it must not start a third
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tfkernels.compiling"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    data = pickle.dumps(list(calls), protocol=pickle.HIGHEST_PROTOCOL)

    def feed():  # in a thread: a payload larger than the pipe must not block the compile
        with contextlib.suppress(OSError):
            proc.stdin.write(data)
            proc.stdin.close()

    threading.Thread(target=feed, daemon=True).start()
    return proc


def _main():
    """The second process: run the pickled calls from standard input, then exit."""
    for fn, args in pickle.loads(sys.stdin.buffer.read()):
        fn(*args)


if __name__ == "__main__":
    _main()

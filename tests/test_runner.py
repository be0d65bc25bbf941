"""The chunked runner on its own, with a trivial chunk function and statistic: chunk
bounds, ordered merge, shared inputs, threads, progress, resume, errors; and the
worker-side copy that makes scattered arrays writable."""

import collections
import dataclasses

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner_doubles import Trace, recording_bars
from tfkernels.studies import distributed, runner


def trace_chunk(chunk_start, chunk_len, tag=None):
    """Chunk function: the chunk's bounds, the shared input and the thread count."""
    return Trace(((chunk_start, chunk_len, tag, numba.get_num_threads()),))


def failing_chunk(chunk_start, chunk_len):
    if chunk_start >= 20:
        raise ZeroDivisionError(f"chunk at {chunk_start}")
    return Trace(((chunk_start, chunk_len),))


@pytest.fixture
def bars(monkeypatch):
    """tqdm patched with ``runner_doubles.RecordingBar``: the list of bars made."""
    yield from recording_bars(monkeypatch)


# ------------------------------------------------------------------ chunk bounds
@given(st.integers(1, 10_000), st.integers(1, 3_000))
def test_chunk_bounds_cover_the_trajectories_in_order(n, size):
    bounds = runner.chunk_bounds(n, size)
    assert len(bounds) == -(-n // size)
    assert [s for s, _ in bounds] == list(range(0, n, size))
    assert all(length == size for _, length in bounds[:-1])
    assert 1 <= bounds[-1][1] <= size and sum(length for _, length in bounds) == n


# ------------------------------------------------------------------------- runs
@pytest.mark.parametrize("n, size", [(10, 3), (10, 5), (7, 100), (1, 1)])
def test_chunks_are_merged_in_order_with_the_shared_inputs(n, size):
    out = runner.run_chunks(trace_chunk, n, size, shared=("w",))
    bounds = runner.chunk_bounds(n, size)
    assert [c[:3] for c in out.stats.chunks] == [(s, k, "w") for s, k in bounds]
    assert (out.n_chunks, out.n_run, out.cluster) == (len(bounds), len(bounds), None)
    assert out.loop_time >= 0


def test_chunks_run_with_the_requested_threads_and_the_count_is_restored():
    before = numba.get_num_threads()
    out = runner.run_chunks(trace_chunk, 6, 2, n_threads=1)
    assert {c[3] for c in out.stats.chunks} == {1}
    assert numba.get_num_threads() == before


def test_progress_bar_advances_by_each_chunk(bars):
    runner.run_chunks(trace_chunk, 1000, 30, progress=True, desc="trace")
    runner.run_chunks(trace_chunk, 10, 3)
    shown, hidden = bars
    assert shown.kwargs["total"] == 1000 and shown.kwargs["disable"] is False
    assert shown.kwargs["desc"] == "trace" and shown.kwargs["initial"] == 0
    assert shown.updates == [30] * 33 + [10]
    assert hidden.kwargs["disable"] is True and hidden.updates == [3, 3, 3, 1]


def test_a_failing_chunk_raises_after_the_chunks_before_it():
    merged = []
    with pytest.raises(ZeroDivisionError, match="chunk at 20"):
        runner.run_chunks(failing_chunk, 50, 10, on_merge=lambda i, s: merged.append(i))
    assert merged == [1, 2]


# ------------------------------------------------------------ merge and resume
def test_ordered_merge_takes_each_chunk_once_whatever_the_arrival_order():
    parts = [Trace((i,)) for i in range(8)]
    seen = []
    merger = runner.OrderedMerge(on_merge=lambda i, s: seen.append((i, s.chunks)))
    arrival = [3, 1, 0, 1, 2, 7, 5, 6, 4, 0]  # with two repeats
    taken = [merger.add(i, parts[i]) for i in arrival]
    assert taken == [True, True, True, False, True, True, True, True, True, False]
    assert merger.stats.chunks == tuple(range(8)) and merger.next == 8
    assert not merger.buffer and merger.max_held == 4  # 7, 5, 6 and 4 at once
    assert [i for i, _ in seen] == list(range(1, 9))
    assert seen[2] == (3, (0, 1, 2))


def test_resumed_run_equals_the_uninterrupted_one(bars):
    full = runner.run_chunks(trace_chunk, 23, 5, shared=(7,))
    saved = {}
    runner.run_chunks(trace_chunk, 23, 5, shared=(7,), on_merge=lambda i, s: saved.setdefault(i, s))
    assert sorted(saved) == [1, 2, 3, 4, 5]
    for k in (0, 2, 5):
        resume = (k, saved.get(k))
        out = runner.run_chunks(trace_chunk, 23, 5, shared=(7,), resume=resume, progress=True)
        assert out.stats == full.stats and (out.n_chunks, out.n_run) == (5, 5 - k)
        done = min(5 * k, 23)  # trajectories resumed
        assert bars[-1].kwargs["initial"] == done and sum(bars[-1].updates) == 23 - done


@pytest.mark.parametrize(
    "resume, exc",
    [
        ((6, Trace(())), ValueError),  # past the last chunk
        ((2, None), ValueError),  # the prefix's statistics are missing
        ((0, Trace(())), ValueError),  # statistics without a prefix
        ((-1, None), ValueError),
        (3, TypeError),
    ],
)
def test_bad_resume_is_refused(resume, exc):
    with pytest.raises(exc, match="`resume`"):
        runner.run_chunks(trace_chunk, 23, 5, resume=resume)


@pytest.mark.parametrize(
    "kw, exc, name",
    [
        (dict(n_trajectories=0), ValueError, "n_trajectories"),
        (dict(n_trajectories=2.5), TypeError, "n_trajectories"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(chunk_fn="trace_chunk"), TypeError, "chunk_fn"),
        (dict(n_threads=0), ValueError, "n_threads"),
        (dict(client=object()), NotImplementedError, "client"),
    ],
)
def test_bad_arguments_raise_naming_them(kw, exc, name):
    args = dict(chunk_fn=trace_chunk, n_trajectories=10, chunk_size=3)
    args.update(kw)
    with pytest.raises(exc, match=f"`{name}`"):
        runner.run_chunks(**args)


# ------------------------------------------------------ writable worker inputs
Packed = collections.namedtuple("Packed", "weights settings n")


@dataclasses.dataclass(frozen=True)
class Config:
    a: np.ndarray
    name: str


def read_only(a):
    a = np.array(a)
    a.flags.writeable = False
    return a


def test_writable_reaches_every_array_of_a_nested_structure():
    packed = Packed(
        weights=(read_only([1.0, 2.0]), np.zeros(2), (read_only([[3.0]]),)),
        settings=read_only([4, 5]),
        n=3,
    )
    cfg = Config(a=read_only([6.0]), name="x")
    out_packed, out_cfg = distributed._writable_inputs((packed, cfg))
    assert type(out_packed) is Packed and type(out_cfg) is Config
    leaves = [
        out_packed.weights[0],
        out_packed.weights[1],
        out_packed.weights[2][0],
        out_packed.settings,
        out_cfg.a,
    ]
    assert all(a.flags.writeable for a in leaves)
    assert out_packed.weights[1] is packed.weights[1]  # already writable: no copy
    assert out_packed.n == 3 and out_cfg.name == "x"
    np.testing.assert_array_equal(out_packed.weights[2][0], [[3.0]])
    assert out_packed.settings.dtype == packed.settings.dtype
    again = distributed._writable_inputs((packed, cfg))  # the same inputs: cached
    assert again[0] is out_packed and again[1] is out_cfg


def test_writable_returns_writable_structures_unchanged():
    packed = Packed(weights=(np.ones(2), [np.zeros(1)]), settings={"s": np.ones(1)}, n=1)
    assert distributed._writable(packed) is packed


# ---------------------------------------------------------------------- layering
def imported_modules(module):
    """Every module name ``module``'s source imports (relative ones resolved)."""
    import ast
    import importlib

    mod = importlib.import_module(module)
    package = mod.__name__.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(open(mod.__file__).read())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.update(f"{base}.{a.name}" for a in node.names)
            names.add(base)
    return names


@pytest.mark.parametrize("module", ["tfkernels.studies.runner", "tfkernels.studies.distributed"])
def test_runner_knows_no_study(module):
    studies = {"decay", "stats", "lipschitz", "paper"}
    bad = {
        n
        for n in imported_modules(module)
        if n.startswith("tfkernels.studies.") and n.split(".")[2] in studies
    }
    assert not bad, bad
    assert not {n for n in imported_modules(module) if n.split(".")[0] in ("dask",)}

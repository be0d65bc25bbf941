"""Fuzzing (issue 15, part 6): the public API and the command line's parsers, driven with
arbitrary arguments.

Every public call must return, or raise TypeError, ValueError or FloatingPointError
whose message names one of its arguments (a backticked name of its signature); any
other exception fails. Each example corrupts none, one or two arguments of an
otherwise valid call with values from :data:`JUNK` (wrong types, NaN and inf, negative
and huge integers, bools, strings, None, arrays of a wrong shape or dtype, masked
arrays), so that the checks are reached in every order and the valid calls run the
kernels. Shapes stay tiny (d <= 8, T <= 4, B <= 4, N <= 4, <= 16 trajectories), so the
kernels compile once per dtype and each call takes milliseconds. Sizes are fuzzed with
values that are out of range (0, negative, >= 2**63), not with huge valid ones, which
would rightly run for hours or raise MemoryError.

The command line's parsers are driven with arbitrary flag values: parsing and the
checks of ``check_args`` either succeed or exit with status 2 and a message that names
the flag. The runs are derandomized (the same examples on every run, no example
database), so CI is deterministic.
"""

import argparse
import contextlib
import inspect
import io
import json
import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import tfkernels as tfk
from tfkernels import cli
from tfkernels.cli import common
from tfkernels.methods import ACTIVATIONS, METHODS, MODES

TP = tfk.TransformerParams
#: ``TFKERNELS_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py`` explores further, with
#: random (not derandomized) examples.
_EXPLORE = int(os.environ.get("TFKERNELS_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=_EXPLORE or 150,
    deadline=None,
    derandomize=not _EXPLORE,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ALLOWED = (TypeError, ValueError, FloatingPointError)
MAX_SEED = 2**63 - 1


def _masked(shape):
    return np.ma.masked_array(np.zeros(shape), mask=np.zeros(shape, dtype=bool))


#: Values that are wrong for (almost) every argument, or right for some and wrong for
#: others: the fuzzer puts each one everywhere.
JUNK_VALUES = [
    None,
    True,
    False,
    np.bool_(True),
    0,
    -1,
    -(2**63) - 1,
    2**63 + 1,
    2**64,
    10**30,
    np.int64(-3),
    np.uint64(2**64 - 1),
    0.0,
    -0.5,
    0.5,
    8.0,
    2.5,
    1e300,
    -1e300,
    1e-300,
    float("nan"),
    float("inf"),
    -float("inf"),
    np.float32("nan"),
    np.float64(2.0),
    1j,
    "",
    "x",
    "gelu",
    "euler",
    "accelerated",
    "float32",
    b"bytes",
    [],
    [1.0, 2.0],
    (1,),
    {},
    {"a": 1},
    object(),
    np.float64,
    np.int64,
    np.dtype("f2"),
    "(f4,2)",
    "0,",
    np.zeros(0),
    np.zeros(3),
    np.zeros((2, 2)),
    np.zeros((2, 4, 8)),
    np.zeros((2, 4, 8), dtype=np.int64),
    np.zeros((2, 4, 8), dtype=np.float16),
    np.zeros((2, 4, 8), dtype=np.complex128),
    np.full((2, 4, 8), np.nan),
    np.zeros((0, 4, 8)),
    np.zeros((2, 0, 8)),
    np.zeros((2, 4, 8, 1)),
    np.array(2.0),
    np.array("gelu"),
    np.array([np.inf, 1.0]),
    np.array([None, 1.0], dtype=object),
    _masked((2, 4, 8)),
    _masked(3),
]
JUNK = st.one_of(
    st.sampled_from(JUNK_VALUES),
    st.floats(),
    st.integers(max_value=0),
    st.integers(min_value=2**63 + 1, max_value=2**80),
    st.text(max_size=4),
)


def names_an_argument(message, names):
    """Whether ``message`` names one of ``names`` in backticks."""
    return any(f"`{n}`" in message for n in names)


def call(fn, names, **kwargs):
    """``fn(**kwargs)``; an allowed exception must name one of ``names``; any other
    exception propagates (and fails the test)."""
    try:
        result = fn(**kwargs)
    except ALLOWED as err:
        msg = str(err)
        assert names_an_argument(msg, names), (
            f"{type(err).__name__} names none of {sorted(names)}: {msg}"
        )
        result = err
    event(f"{fn.__name__}: {type(result).__name__}")  # --hypothesis-show-statistics
    return result


@contextlib.contextmanager
def in_temporary_folder():
    """Run the body in a new empty working folder (relative paths land there)."""
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            yield tmp
        finally:
            os.chdir(cwd)


def signature(fn):
    return set(inspect.signature(fn).parameters)


@st.composite
def mixed(draw, valid, junk=JUNK):
    """Keyword arguments: the valid ones of ``valid`` (name -> strategy, drawn in order),
    none, one (most often) or two of them replaced by junk."""
    names = list(valid)
    k = draw(st.sampled_from([0, 1, 1, 1, 2]))
    bad = draw(st.lists(st.sampled_from(names), min_size=k, max_size=k, unique=True))
    return {n: draw(junk) if n in bad else draw(valid[n]) for n in names}


# -------------------------------------------------------------------- valid values
DTYPES = st.sampled_from([np.float32, np.float64])
SEEDS = st.one_of(st.integers(0, 2**16), st.just(MAX_SEED))


@st.composite
def params_kwargs(draw):
    """Valid keyword arguments of ``TransformerParams.random`` for a tiny model."""
    d = draw(st.sampled_from([1, 2, 4, 8]))
    attention, ffn, linear = draw(
        st.sampled_from([(a, f, lin) for a in (0, 1) for f in (0, 1) for lin in (0, 1)][1:])
    )
    return dict(
        d=d,
        n_heads=draw(st.sampled_from([h for h in (1, 2, 4) if d % h == 0])),
        d_ff=draw(st.one_of(st.none(), st.integers(1, 8))),
        damping=draw(st.sampled_from([0.0, 0.5, 4.0])),
        beta=draw(st.sampled_from([0.5, 1.0, 2.0])),
        activation=draw(st.sampled_from(list(ACTIVATIONS))),
        causal=draw(st.booleans()),
        attention=bool(attention),
        ffn=bool(ffn),
        linear=bool(linear),
        n_layers=draw(st.one_of(st.none(), st.integers(1, 3))),
        seed=draw(st.integers(0, 2**64)),
        dtype=draw(DTYPES),
        weight_scale=draw(st.sampled_from([0.5, 1.0])),
    )


@st.composite
def models(draw):
    return TP.random(**draw(params_kwargs()))


@st.composite
def schedules(draw, p):
    """Valid ``n_layers, method, t_final, save_every, alpha, c, noise`` for ``p``."""
    n = p.n_sets or draw(st.integers(1, 4))
    method = draw(st.sampled_from(list(METHODS)))
    averaged = method == "averaged"
    alpha = (
        draw(
            st.one_of(
                st.none(),
                st.floats(0.01, 1.0),
                st.just("accelerated"),
                st.lists(st.floats(0.01, 1.0), min_size=n, max_size=n).map(np.array),
            )
        )
        if averaged
        else None
    )
    return dict(
        n_layers=n,
        method=method,
        t_final=draw(st.sampled_from([1.0, 0.25, 2.0])),
        alpha=alpha,
        c=draw(st.sampled_from([0.5, 1.0])) if averaged else 1.0,
        noise=draw(
            st.one_of(
                st.just(0.0),
                st.floats(0.0, 0.1),
                st.lists(st.floats(0.0, 0.1), min_size=n, max_size=n),
            )
        ),
    )


def states(p, batch=None, seq_len=None):
    return st.builds(
        lambda b, t, s: tfk.random_states(b, t, p.d, seed=s, dtype=p.dtype),
        st.integers(1, 4) if batch is None else st.just(batch),
        st.integers(1, 4) if seq_len is None else st.just(seq_len),
        st.integers(0, 100),
    )


THREADS = st.sampled_from([None, 1])


# -------------------------------------------------------------------- the API
@FUZZ
@given(data=st.data())
def test_random_states(data):
    kw = data.draw(
        mixed(
            dict(
                batch=st.integers(1, 4),
                seq_len=st.integers(1, 4),
                d=st.integers(1, 8),
                seed=SEEDS,
                start=st.one_of(st.integers(0, 100), st.just(MAX_SEED - 3)),
                dtype=st.sampled_from([np.float32, np.float64, "float32", "f8"]),
                scale=st.floats(0.0, 10.0),
            )
        )
    )
    out = call(tfk.random_states, signature(tfk.random_states), **kw)
    if isinstance(out, np.ndarray):
        assert out.shape == (kw["batch"], kw["seq_len"], kw["d"]) and np.all(np.isfinite(out))


@FUZZ
@given(data=st.data())
def test_transformer_params_random(data):
    valid = data.draw(params_kwargs())
    kw = data.draw(mixed({k: st.just(val) for k, val in valid.items()}))
    p = call(TP.random, signature(TP.random), **kw)
    assert isinstance(p, (TP, Exception))


FIELDS = [
    "wq",
    "wk",
    "wv",
    "wo",
    "w1",
    "b1",
    "w2",
    "b2",
    "linear",
    "n_heads",
    "beta",
    "causal",
    "damping",
    "activation",
]


@FUZZ
@given(data=st.data())
def test_transformer_params_constructor_and_replace(data):
    p = data.draw(models())
    fields = {k: getattr(p, k) for k in FIELDS}
    kw = data.draw(mixed({k: st.just(val) for k, val in fields.items()}))
    call(TP, FIELDS, **kw)
    # replace() takes any field (and must name an unknown one)
    changes = data.draw(st.dictionaries(st.sampled_from(FIELDS + ["bogus", "d"]), JUNK, max_size=2))
    call(p.replace, FIELDS + ["bogus", "d", "changes"], **changes)


@FUZZ
@given(data=st.data())
def test_transformer_params_methods(data):
    p = data.draw(models())
    n = data.draw(st.one_of(st.integers(0, 3), JUNK))
    q = call(p.layer, ["n"], n=n)
    assert isinstance(q, (TP, Exception))
    dtype = data.draw(st.one_of(DTYPES, JUNK))
    call(p.astype, ["dtype"], dtype=dtype)
    A = data.draw(
        st.one_of(
            st.builds(lambda d: -np.eye(d), st.integers(1, 4)),
            st.just(p.linear) if p.linear is not None else st.nothing(),
            JUNK,
        )
    )
    call(TP.linear, ["A", "damping", "linear"], A=A, damping=data.draw(st.one_of(SEEDS, JUNK)))


@FUZZ
@given(data=st.data())
def test_vector_field(data):
    p = data.draw(models())
    kw = data.draw(
        mixed(
            dict(
                params=st.just(p),
                X=states(p),
                layer=st.integers(0, (p.n_sets or 1) - 1),
                n_threads=THREADS,
            )
        )
    )
    out = call(tfk.vector_field, signature(tfk.vector_field), **kw)
    if isinstance(out, np.ndarray):
        assert out.shape == kw["X"].shape and out.dtype == p.dtype


@FUZZ
@given(data=st.data())
def test_integrate(data):
    p = data.draw(models())
    sched = data.draw(schedules(p))
    n = sched["n_layers"]
    valid = dict(
        params=st.just(p),
        x0=states(p),
        **{k: st.just(val) for k, val in sched.items()},
        save_every=st.one_of(st.none(), st.sampled_from([k for k in (1, 2, 4) if n % k == 0])),
        seed=SEEDS,
        start=st.integers(0, 100),
        throw=st.booleans(),
        n_threads=THREADS,
    )
    kw = data.draw(mixed(valid))
    out = call(tfk.integrate, signature(tfk.integrate), **kw)
    if isinstance(out, np.ndarray):
        B, T, d = kw["x0"].shape
        k = kw["save_every"]
        assert out.shape == ((B, T, d) if k is None else (B, n // k + 1, T, d))


@FUZZ
@given(data=st.data())
def test_perturbation_decay(data):
    p = data.draw(models())
    sched = data.draw(schedules(p))
    valid = dict(
        params=st.just(p),
        n_trajectories=st.integers(1, 16),
        seq_len=st.integers(1, 4),
        **{k: st.just(val) for k, val in sched.items()},
        eps=st.one_of(st.none(), st.sampled_from([1e-6, 1e-3])),
        mode=st.sampled_from(list(MODES)),
        seed=SEEDS,
        chunk_size=st.one_of(st.none(), st.integers(1, 16)),
        n_threads=THREADS,
        progress=st.just(False),
        lambda_samples=st.integers(1, 4),
        bound_rtol=st.one_of(st.none(), st.sampled_from([0.0, 1e-3])),
        client=st.none(),
        checkpoint=st.none(),
    )
    kw = data.draw(mixed(valid))
    # progress=True draws a bar; a junk checkpoint such as "x" is a valid file name
    with contextlib.redirect_stderr(io.StringIO()), in_temporary_folder():
        res = call(tfk.perturbation_decay, signature(tfk.perturbation_decay), **kw)
    if isinstance(res, tfk.DecayResult):
        assert res.n_trajectories == kw["n_trajectories"]
        assert len(res.stats["mean"]) == sched["n_layers"] + 1


# ---------------------------------------------------------------- files
_RESULT = []


def a_result():
    """One small DecayResult (computed once)."""
    if not _RESULT:
        p = TP.random(d=4, n_heads=2, d_ff=4, damping=1.0, seed=0)
        _RESULT.append(tfk.perturbation_decay(p, 8, 2, 2, seed=0))
    return _RESULT[0]


JSON_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=3),
    st.lists(st.integers(0, 3), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


@FUZZ
@given(data=st.data())
def test_load_and_from_json_name_the_file(data):
    p = data.draw(models())
    with tempfile.TemporaryDirectory() as tmp:
        # TransformerParams.load on an archive with entries removed, replaced or added
        f = os.path.join(tmp, "p.npz")
        p.save(f)
        with np.load(f) as z:
            entries = dict(z)
        for k in data.draw(st.sets(st.sampled_from(sorted(entries) + ["extra"]), max_size=2)):
            value = data.draw(st.one_of(st.none(), st.sampled_from(JUNK_VALUES[:40]), JSON_JUNK))
            if value is None:
                entries.pop(k, None)
            else:
                try:
                    entries[k] = np.asarray(value)
                except ValueError:  # a ragged list: not storable
                    entries[k] = np.asarray(0.5)
        np.savez(f, **entries)
        q = call(TP.load, ["path"], path=f)
        assert isinstance(q, (TP, Exception))
        # DecayResult.from_json on a document with an entry removed or replaced
        doc = a_result().to_dict()
        key = data.draw(st.sampled_from(sorted(doc)))
        if data.draw(st.booleans()):
            del doc[key]
        else:
            doc[key] = data.draw(JSON_JUNK)
        g = os.path.join(tmp, "r.json")
        with open(g, "w") as fh:
            json.dump(doc, fh)
        r = call(tfk.DecayResult.from_json, ["path"], path=g)
        assert isinstance(r, (tfk.DecayResult, Exception))
        # bytes that are not a file of either kind
        raw = data.draw(st.binary(max_size=64))
        h = os.path.join(tmp, "raw")
        with open(h, "wb") as fh:
            fh.write(raw)
        call(TP.load, ["path"], path=h)
        call(tfk.DecayResult.from_json, ["path"], path=h)


@FUZZ
@given(path=st.one_of(JUNK, st.sampled_from(["p", "p.npz", "sub/p", "d", b"p", "\0"])))
def test_save_and_load_paths(path):
    """A path that names no writable file may raise the OS's error (OSError with the
    file name); any other value returns or raises an error naming `path`."""
    p = TP.linear(-np.eye(2))
    with in_temporary_folder():  # a relative path lands here, not in the repository
        os.mkdir("d")
        for fn in (p.save, TP.load, tfk.DecayResult.from_json):
            try:
                call(fn, ["path"], path=path)
            except OSError as err:
                assert err.filename is not None, err


# ------------------------------------------------- what the fuzzer found (regressions)
def test_sizes_numpy_cannot_allocate_are_named():
    # numpy's "Maximum allowed dimension exceeded" named no argument
    with pytest.raises(ValueError, match="`batch` × `seq_len` × `d`"):
        tfk.random_states(1, 2**63 + 1, 1)
    with pytest.raises(ValueError, match="the weights, `n_layers` × `d`"):
        TP.random(d=2**63 + 1, n_heads=1, attention=False, ffn=False, linear=True)
    p = TP.linear(-np.eye(2))
    with pytest.raises(ValueError, match="`n_layers`"):
        tfk.integrate(p, tfk.random_states(1, 1, 2), 2**63 - 1)
    with pytest.raises(ValueError, match="`lambda_samples` × `seq_len`"):
        tfk.perturbation_decay(p, 4, 2, 2, lambda_samples=2**63)


def test_a_blow_up_names_the_arguments_that_avoid_it():
    # the FloatingPointError named no argument ("more layers", "throw=False")
    p = TP.linear(np.eye(2))
    with pytest.raises(FloatingPointError, match="more `n_layers`.*`throw=False`"):
        tfk.integrate(p, tfk.random_states(1, 1, 2), 4, t_final=1e300)


def test_weight_scale_that_overflows_the_dtype_is_named():
    # was "`b1` contains NaN or inf", naming a weight random() drew, not its argument
    with pytest.raises(ValueError, match="`weight_scale`=1e\\+39 overflows float32"):
        TP.random(d=1, n_heads=1, attention=False, dtype=np.float32, weight_scale=1e39)
    assert TP.random(d=1, n_heads=1, weight_scale=1e39).dtype == np.float64  # fits


def test_trajectory_count_beyond_the_int64_keys_is_refused():
    # 2**64 trajectories built a list of 2.8e14 chunks until the machine ran out of memory
    p = TP.linear(-np.eye(2))
    with pytest.raises(ValueError, match="`n_trajectories` must be <= 9223372036854775808"):
        tfk.perturbation_decay(p, 2**64, 2, 2)


def test_constructor_messages_name_the_weights():
    p = TP.random(d=2, n_heads=1, ffn=False)
    with pytest.raises(ValueError, match="`wk`, `wv`, `wo` given but `wq` missing"):
        TP(wk=p.wk, wv=p.wv, wo=p.wo)
    with pytest.raises(ValueError, match="per-layer: `wq`; shared: `wk`, `wv`, `wo`"):
        p.replace(wq=p.wq[None])


def test_replace_names_an_unknown_field():
    # was dataclasses' "__init__() got an unexpected keyword argument 'bogus'"
    with pytest.raises(TypeError, match="unknown field.* `bogus`"):
        TP.linear(-np.eye(2)).replace(bogus=1)


@pytest.mark.parametrize(
    "n, exc, match",
    [(None, TypeError, "`n` must be an integer"), (-1, ValueError, "`n` must be >= 0")],
)
def test_layer_checks_n(n, exc, match):
    # layer(None) indexed with None (a new axis); layer(-1) took the last set
    p = TP.random(d=2, n_heads=1, n_layers=2)
    with pytest.raises(exc, match=match):
        p.layer(n)
    with pytest.raises(ValueError, match="`n`=2 but the parameters have 2 weight sets"):
        p.layer(2)  # was numpy's IndexError
    assert p.layer(1).n_sets is None and TP.linear(-np.eye(2)).layer(7).n_sets is None


def test_dtype_strings_numpy_fails_to_parse_are_named():
    # np.dtype("(f4,2)") raises SyntaxError and np.dtype("0,") ValueError
    for bad in ("(f4,2)", "0,"):
        with pytest.raises(TypeError, match="`dtype` must be float32 or float64"):
            tfk.random_states(1, 1, 1, dtype=bad)


@pytest.mark.parametrize(
    "path, exc, match",
    [
        (None, TypeError, "`path` must be a file name"),
        ("", ValueError, "`path` is empty"),
        ("a\0b", ValueError, "`path` .* contains a null character"),
    ],
)
def test_save_and_load_check_the_path(tmp_path, monkeypatch, path, exc, match):
    # save("") wrote a hidden ".npz" into the working folder; None and "\0" were
    # unnamed errors of os.fspath and zipfile
    monkeypatch.chdir(tmp_path)
    p = TP.linear(-np.eye(2))
    with pytest.raises(exc, match=match):
        p.save(path)
    with pytest.raises(exc, match=match):
        TP.load(path)
    assert list(tmp_path.iterdir()) == []


def test_save_and_load_take_bytes_paths(tmp_path):
    # save(b"...") failed in str.endswith
    p = TP.linear(-np.eye(2))
    p.save(os.fsencode(tmp_path / "p"))
    assert np.array_equal(TP.load(os.fsencode(tmp_path / "p")).linear, p.linear)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d.pop("stats"), "entry `stats` is missing"),
        (lambda d: d.update(rate="x"), "entry `rate` must be a number or null"),
        (lambda d: d.update(rate_ci=[1.0]), "entry `rate_ci` must be a list of two numbers"),
        (lambda d: d.update(stats=3), "entry `stats` must be an object of equally long"),
        (lambda d: d.update(n_valid=True), "entry `n_valid` must be an integer"),
    ],
)
def test_from_json_names_the_file_and_the_entry(tmp_path, edit, match):
    # was KeyError, TypeError or AttributeError with no file named
    doc = a_result().to_dict()
    edit(doc)
    f = tmp_path / "r.json"
    f.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=f"`path` '.*r.json' is not a DecayResult file.*{match}"):
        tfk.DecayResult.from_json(f)


@pytest.mark.parametrize("content", [b"\xed", b"{'a': 1}", b"[1, 2]", b""])
def test_from_json_of_something_else_names_the_file(tmp_path, content):
    # UnicodeDecodeError and JSONDecodeError named no file
    f = tmp_path / "r.json"
    f.write_bytes(content)
    with pytest.raises(ValueError, match="`path` '.*r.json' is not a DecayResult file"):
        tfk.DecayResult.from_json(f)


def test_from_json_round_trip_still_works(tmp_path):
    res = a_result()
    res.to_json(tmp_path / "r.json")
    back = tfk.DecayResult.from_json(tmp_path / "r.json")
    assert back.rate == res.rate and np.array_equal(back.stats["count"], res.stats["count"])


def test_a_client_that_is_not_a_dask_client_is_a_type_error():
    # NotImplementedError is neither TypeError nor ValueError; it stays one too (0.1.0)
    from tfkernels.studies.distributed import ClientTypeError

    with pytest.raises(ClientTypeError, match="`client`") as e:
        tfk.perturbation_decay(TP.linear(-np.eye(2)), 4, 2, 2, client=object())
    assert isinstance(e.value, TypeError) and isinstance(e.value, NotImplementedError)


# ---------------------------------------------------------------- the command line
def _flags(command):
    """Every option of ``command`` that takes a value, with its action."""
    parser = cli.build_parser([command])
    sub = parser.subcommands[command]
    return sub, {a.option_strings[0]: a for a in sub._actions if a.option_strings and a.nargs != 0}


FLAG_TEXT = st.one_of(
    st.sampled_from(
        [
            "0",
            "1",
            "-1",
            "2",
            "3",
            "16",
            "1e3",
            "1e6",
            "2.5",
            "8.0",
            "-1e-6",
            "1e-6",
            "1e39",
            "1e400",
            "nan",
            "inf",
            "-inf",
            "",
            " ",
            "x",
            "none",
            "both",
            "float32",
            "float16",
            "euler",
            "rk5",
            "8,32",
            "8,,x",
            "numpy,torch",
            str(2**63 - 1),
            str(2**63),
            str(2**64),
            "1_000",
            "0x10",
        ]
    ),
    st.text(max_size=6),
)


@pytest.mark.parametrize("command", sorted(cli.SUBCOMMANDS))
@settings(FUZZ, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_cli_flags_parse_or_exit_2_naming_the_flag(command, data, tmp_path):
    """Parsing and ``check_args`` succeed, or exit with status 2 on one line naming the
    flag (``--out`` stays inside a temporary folder)."""
    sub, actions = _flags(command)
    chosen = data.draw(st.lists(st.sampled_from(sorted(set(actions) - {"--out"})), max_size=3))
    argv = [command]
    for flag in chosen:
        text = data.draw(FLAG_TEXT)
        argv += [f"{flag}={text}"] if data.draw(st.booleans()) else [flag, text]
    out = os.path.join(
        str(tmp_path), data.draw(st.sampled_from(["new", "new/deeper", "file/below"]))
    )
    open(os.path.join(str(tmp_path), "file"), "w").close()
    argv += ["--out", out]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            parser = cli.build_parser(argv)
            args = parser.parse_args(argv)
            module = __import__(args._module, fromlist=["check_args"])
            module.check_args(args)
        except SystemExit as e:
            message = err.getvalue()
            assert e.code == 2, message
            assert message.count("\n") == 1 and message.startswith("tfkernels"), message
            assert any(f in message for f in chosen + ["--out"]), (argv, message)
            return
        except (TypeError, ValueError, OSError) as e:
            # check_args: a combination of flags, or --out; named like the parser does
            assert any(f"`{f}`" in str(e) for f in chosen + ["--out"]), (argv, str(e))
            return
    for flag in chosen:  # every value that passed has the type its check returns
        value = getattr(args, actions[flag].dest)
        assert value is None or isinstance(value, (int, float, str, tuple)), (flag, value)


def test_cli_types_reject_what_the_api_rejects():
    """The option types are the API's validators: the same value fails both, for one
    example of each kind (seed, count, positive real)."""
    seed = common.seed("--seed")
    for text in ("-1", str(2**63), "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            seed(text)
        with pytest.raises((TypeError, ValueError)):
            tfk.random_states(1, 1, 1, seed=common.parse_integer(text) if "." not in text else 1.5)
    assert seed(str(MAX_SEED)) == MAX_SEED
    assert tfk.random_states(1, 1, 1, seed=MAX_SEED).shape == (1, 1, 1)

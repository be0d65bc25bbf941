"""The softmax of heads whose queries and keys are one projection (``W_q = W_k``):
``structs.Settings.symmetric`` and ``maths.symmetric_exps``, which computes half of the
exponentials and mirrors them. Checked against SciPy's softmax column by column, on
the lane layout's ``w``-wide entries and the row layout's ``w = 1``, including a lane
whose diagonal scores are far apart (the fallback to each column's own maximum), and
each lane's bits independent of what the other lanes hold."""

import numpy as np
import pytest
import scipy.special

import tfkernels as tfk
from tfkernels import config, reference
from tfkernels.kernels import maths, pack_params, structs

RTOL = {"float64": 1e-14, "float32": 2e-6}
#: The exponentials clamp at ``EXP_LO``: the usual softmax leaves a weight that small
#: at e^EXP_LO of its column's largest, the shared path at up to e^(EXP_LO/2) (see
#: ``maths.symmetric_exps``), far below either dtype's resolution of the weights near 1.
ATOL = float(np.exp(maths.EXP_LO / 2))


def scores(T, w, H, dtype, seed, spread=None):
    """Transposed scores ``P (T keys, H·T·w)`` of H heads and w lanes, each head and
    lane ``s·Q Qᵀ`` of random tokens (with ``spread``, lane 0's first token scaled up
    so that the diagonal scores differ by about ``spread``), and the float64 matrices."""
    rng = np.random.default_rng(seed)
    S = np.empty((H, w, T, T))
    for h in range(H):
        for lane in range(w):
            Q = rng.standard_normal((T, 3))
            if spread is not None and lane == 0:
                Q[0] *= np.sqrt(spread / 3.0)
            S[h, lane] = 0.8 * Q @ Q.T
    S = S.astype(dtype).astype(np.float64)  # exactly the values the kernel gets
    P = np.empty((T, H * T * w), dtype=dtype)
    for h in range(H):
        for lane in range(w):
            P[:, (h * T + np.arange(T)) * w + lane] = S[h, lane].T  # key j, query i
    return P, S


def softmax_of(P, T, w, H, symmetric):
    out = P.copy()
    mt = np.zeros((3, P.shape[1]), dtype=P.dtype)
    maths.softmax_columns(out, P.shape[1], False, symmetric, mt, w)
    return out


def column(P, T, w, h, lane, i):
    return P[:, (h * T + i) * w + lane].astype(np.float64)


@pytest.mark.parametrize("width", ["lanes", 1])
@pytest.mark.parametrize("spread", [None, 400.0])
def test_symmetric_softmax_matches_scipy(dtype, width, spread):
    T, H = 11, 2
    w = structs.group_width(dtype) if width == "lanes" else 1
    P, S = scores(T, w, H, dtype, seed=3, spread=spread)
    got = softmax_of(P, T, w, H, True)
    for h in range(H):
        for lane in range(w):
            want = scipy.special.softmax(S[h, lane], axis=1)  # row i: query i
            for i in range(T):
                np.testing.assert_allclose(
                    column(got, T, w, h, lane, i), want[i], rtol=RTOL[np.dtype(dtype).name],
                    atol=ATOL,
                )  # fmt: skip
    if spread is None:  # the shared exponentials: each column sums to one, exactly shaped
        plain = softmax_of(P, T, w, H, False)
        np.testing.assert_allclose(got, plain, rtol=RTOL[np.dtype(dtype).name], atol=1e-30)


@pytest.mark.parametrize("spread", [None, 400.0])
def test_each_lane_alone(dtype, spread):
    """A lane's probabilities are the same bits whatever the other lanes hold, on the
    shared path and where another lane (lane 0, ``spread``) sends its head to the
    fallback: the lane run alone (w = 1) gives them too."""
    T, H = 9, 2
    w = structs.group_width(dtype)
    P, _ = scores(T, w, H, dtype, seed=5, spread=spread)
    got = softmax_of(P, T, w, H, True)
    for lane in range(w):
        alone = P[:, lane::w].copy()
        mine = softmax_of(alone, T, 1, H, True)
        assert np.array_equal(got[:, lane::w], mine)


def test_symmetric_flag():
    p = tfk.TransformerParams.random(8, 2, seed=0)
    assert not pack_params(p).settings.symmetric
    q = p.replace(wk=p.wq)
    assert pack_params(q).settings.symmetric
    assert not pack_params(q.replace(causal=True)).settings.symmetric
    wk = q.wk.copy()
    wk[0, 0] = np.nextafter(wk[0, 0], 1.0)  # one ulp apart: not the same projection
    assert not pack_params(q.replace(wk=wk)).settings.symmetric
    b = np.full(8, 0.1)
    assert pack_params(q.replace(bq=b, bk=b)).settings.symmetric
    assert not pack_params(q.replace(bq=b)).settings.symmetric
    layered = tfk.TransformerParams.random(8, 2, n_layers=3, seed=1)
    assert pack_params(layered.replace(wk=layered.wq)).settings.symmetric
    wk = layered.wq.copy()
    wk[2] += 1.0  # the last layer differs
    assert not pack_params(layered.replace(wk=wk)).settings.symmetric
    assert not pack_params(tfk.TransformerParams.random(8, 2, attention=False)).settings.symmetric
    # an ensemble draws each trajectory's own W_q and W_k
    ens = tfk.WeightEnsemble(d=8, n_heads=2, seed=0)
    assert not ens.pack().template.settings.symmetric


@pytest.mark.parametrize("T", [1, 5, 12])
def test_symmetric_model_matches_reference(dtype, T):
    p = tfk.TransformerParams.random(12, 3, d_ff=16, seed=2, dtype=dtype, damping=0.5)
    p = p.replace(wk=p.wq)
    x0 = tfk.random_states(11, T, 12, seed=4, dtype=dtype)
    got = tfk.vector_field(p, x0)
    want = reference.vector_field(p, x0)
    err = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert err < config.RTOL[np.dtype(dtype).name]

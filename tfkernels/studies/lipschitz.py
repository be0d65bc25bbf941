"""The theory beside the measured decay: estimates of the Lipschitz constants of f.

:func:`estimate_lipschitz` samples states along the study's trajectories and takes,
over them, the largest logarithmic 2-norm ``λ_max((J + Jᵀ)/2)`` (the one-sided
Lipschitz estimate λ̂, whose bound ``r_n ≤ exp(λ̂·t_n)`` the study checks) and the
largest spectral norm ``σ_max(J)`` (L̂) of the Jacobian J of the vector field. J is
applied through the JVP and VJP kernels (matrix-free Lanczos) for a field without
norms, and otherwise formed densely from T·d tangent kernels in column blocks: with
full decompositions up to :data:`DENSE_MAX`, past it with ARPACK's Lanczos on the dense
matrix, up to :data:`COLUMNS_MAX`.
"""

import math

import numpy as np
from scipy.sparse.linalg import ArpackError
from threadpoolctl import threadpool_limits

from .. import api, kernels
from ..ensemble import is_ensemble

#: Largest T·d for which the Jacobian is formed densely in the λ̂ estimate.
DENSE_MAX = 512
#: A Jacobian whose largest entry (dense) or ``‖J v_0‖`` (Lanczos) lies outside
#: ``[2^-SAFE_EXP, 2^SAFE_EXP]`` is scaled by a power of two before the eigenvalue
#: problems (exact, and ``JᵀJ`` then neither overflows nor underflows); others are
#: used as they are.
SAFE_EXP = 256


#: Largest T·d for which a Jacobian without an adjoint kernel (a layer map, or a field
#: with a norm) is formed at all: densely, by T·d tangent kernels in column blocks,
#: ``8·(T·d)²`` bytes (2 GiB at the limit; all-MiniLM-L6-v2, d = 384, up to T = 42).
#: Its cost is T·d layer JVPs per sampled state (measured in docs/performance.md).
COLUMNS_MAX = 16384
#: Bytes of the tangent buffers of one column block (states and tangents, float64).
BLOCK_BYTES = 1 << 25
#: What λ̂ and L̂ are for a block whose layer is not one step of a vector field.
MAP_NOTE = (
    "the layer is a map (post norm, or sequential/strang sub-steps), not one step of a "
    "vector field: λ̂ is the largest per-layer log-Lipschitz rate log‖Φ'(X)‖₂/Δt of the "
    "layer map Φ and L̂ the largest ‖Φ'(X)‖₂, over the sampled states"
)


def jacobian_object(params):
    """What λ̂ is estimated of: ``"vector field"`` when a layer is one step of the
    field (a parallel block without a post norm), else ``"layer map"``."""
    post = params.norm is not None and params.norm_position == "post"
    return "vector field" if params.block == "parallel" and not post else "layer map"


def _formed(params):
    """Whether λ̂'s Jacobian is formed column by column (a layer map, or a field with a
    norm: the kernels have no VJP of the norms or of the layer map for Lanczos)."""
    return jacobian_object(params) == "layer map" or params.norm is not None


def _too_large(params, seq_len):
    """Why λ̂ cannot be estimated at ``T·d = seq_len·d`` (None when it can): a Jacobian
    without an adjoint kernel is formed densely, up to :data:`COLUMNS_MAX`."""
    if _formed(params) and seq_len * params.d > COLUMNS_MAX:
        return (
            f"not estimated: the {jacobian_object(params)}'s Jacobian is formed densely (the "
            f"kernels have no VJP of it for Lanczos), up to T·d = {COLUMNS_MAX}"
        )
    return None


def _columns(X, apply):
    """``Jᵀ`` (T·d × T·d, row k = column k of J) from ``apply(Xs, E)``, which overwrites
    the unit tangents ``E (m, T, d)`` at the copies ``Xs`` of X with ``J·E[k]``, in
    column blocks of :data:`BLOCK_BYTES` (each column is computed on its own: the
    blocks do not change its bits)."""
    T, d = X.shape
    n = T * d
    Jt = np.zeros((n, n))
    m = max(1, min(n, BLOCK_BYTES // (16 * n)))
    Xs = np.empty((m, T, d))
    for lo in range(0, n, m):
        hi = min(n, lo + m)
        Xs[: hi - lo] = X
        E = Jt[lo:hi].reshape(hi - lo, T, d)
        E.reshape(hi - lo, n)[:, lo:hi] = np.eye(hi - lo)
        apply(Xs[: hi - lo], E)
    return Jt


def _map_jacobian(packed, X, layer, a, b, h):
    """Dense Jacobian (T·d × T·d) of the block's layer map at X (weight set ``layer``,
    step ``h``) via T·d tangent steps (a transposed view of :func:`_columns`)."""

    def apply(Xs, E):
        m = Xs.shape[0]
        lay, hs = np.full(m, layer, dtype=np.int64), np.full(m, h, dtype=np.float64)
        kernels.layer_jvp_kernel(Xs, E, packed, lay, a, b, hs)

    return _columns(X, apply).T


def _lognorm_map(packed, X, layer, a, b, h, full=True):
    """``(log‖Φ'(X)‖₂ / h, ‖Φ'(X)‖₂)`` of the layer map (NaN when not finite): by a
    full SVD (``full``), else by ARPACK on the dense ``Φ'``."""
    J = _map_jacobian(packed, X, layer, a, b, h)
    if not np.all(np.isfinite(J)):
        return math.nan, math.nan
    if full:
        s = float(np.linalg.norm(J, 2))
    else:
        s = _arpack_of_dense(J, symmetric_part=False)
    return (math.log(s) / h if s > 0 else -math.inf), s


def _arpack_of_dense(J, symmetric_part):
    """``λ_max((J + Jᵀ)/2)`` (``symmetric_part``) or ``σ_max(J)`` of the dense, finite J
    by ARPACK's Lanczos (``eigsh``, tolerance :data:`ARPACK_TOL`) on products with J
    and Jᵀ, scaled by a power of two when its entries are huge or tiny, as the full
    decompositions are: O((T·d)²) work per product, no O((T·d)³) decomposition."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    n = J.shape[0]
    c = _power_of_two_scale(float(np.max(np.abs(J))))
    Jc = J if c == 1.0 else J * c
    if symmetric_part:
        mv = lambda u: 0.5 * (Jc @ u + Jc.T @ u)  # noqa: E731
    else:
        mv = lambda u: Jc.T @ (Jc @ u)  # noqa: E731
    op = LinearOperator((n, n), matvec=mv, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(n)  # fixed: deterministic result
    top = float(eigsh(op, k=1, which="LA", v0=v0, tol=ARPACK_TOL, return_eigenvectors=False)[0])
    return top / c if symmetric_part else math.sqrt(max(top, 0.0)) / c


#: Relative tolerance of ARPACK on a dense Jacobian (its products are cheap).
ARPACK_TOL = 1e-13


#: The update's arguments of ``api.prepare_run`` after ``n_layers``, in order.
_RUN_KEYS = ("method", "t_final", "alpha", "c", "noise")


def _power_of_two_scale(m):
    """``2^-e`` with ``2^e ≈ m`` when the magnitude ``m`` lies outside
    ``[2^-SAFE_EXP, 2^SAFE_EXP]`` (or 1.0 for m = 0), else exactly 1.0."""
    if m == 0.0 or 2.0**-SAFE_EXP <= m <= 2.0**SAFE_EXP:
        return 1.0
    return math.ldexp(1.0, -math.frexp(m)[1])


def _jvp(packed, X, V, layers, out):
    """``out[b] = J_f(X[b])·V[b]`` with weight set ``layers[b]`` (the JVP kernel)."""
    kernels.jvp_kernel(X, V, packed, layers, out)


def _vjp(packed, X, G, layers, out):
    """``out[b] = J_f(X[b])ᵀ·G[b]`` with weight set ``layers[b]`` (the VJP kernel)."""
    kernels.vjp_kernel(X, G, packed, layers, out)


def _jacobian_dense(packed, X, layer):
    """Dense Jacobian (T·d × T·d, row-major vec) of f at X via T·d JVPs, in column
    blocks (a transposed view of :func:`_columns`)."""

    def apply(Xs, E):
        out = np.empty_like(E)
        _jvp(packed, Xs, E, np.full(Xs.shape[0], layer, dtype=np.int64), out)
        E[...] = out

    return _columns(X, apply).T


def _lognorm_lanczos(packed, X, layer):
    """``(λ_max((J + Jᵀ)/2), σ_max(J))`` at X by Lanczos (eigsh) with JVP and VJP."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    T, d = X.shape
    n = T * d
    X3 = X.reshape(1, T, d)
    lay = np.array([layer], dtype=np.int64)
    buf = np.empty((1, T, d))

    def jv(u):
        _jvp(packed, X3, np.ascontiguousarray(u.reshape(1, T, d)), lay, buf)
        return buf.ravel().copy()

    def vj(u):
        _vjp(packed, X3, np.ascontiguousarray(u.reshape(1, T, d)), lay, buf)
        return buf.ravel().copy()

    v0 = np.random.default_rng(0).standard_normal(n)  # fixed: deterministic result
    probe = jv(v0 / np.linalg.norm(v0))
    if not np.all(np.isfinite(probe)):
        return math.nan, math.nan
    c = _power_of_two_scale(float(np.max(np.abs(probe))))
    if c == 1.0:
        sym_mv = lambda u: 0.5 * (jv(u) + vj(u))  # noqa: E731
        gram_mv = lambda u: vj(jv(u))  # noqa: E731
    else:
        sym_mv = lambda u: 0.5 * (jv(u) * c + vj(u) * c)  # noqa: E731
        gram_mv = lambda u: vj(jv(u) * c) * c  # noqa: E731
    sym = LinearOperator((n, n), matvec=sym_mv, dtype=np.float64)
    gram = LinearOperator((n, n), matvec=gram_mv, dtype=np.float64)
    lam = eigsh(sym, k=1, which="LA", v0=v0, tol=1e-10, return_eigenvectors=False)[0]
    s2 = eigsh(gram, k=1, which="LA", v0=v0, tol=1e-10, return_eigenvectors=False)[0]
    return float(lam) / c, float(math.sqrt(max(s2, 0.0))) / c


def _sample_every(n_layers):
    """Layers between two sampled states: up to ``min(N, 8)`` evenly spaced layers."""
    want = min(n_layers, 8)
    return max(k for k in range(1, n_layers + 1) if n_layers % k == 0 and n_layers // k >= want)


def n_sampled_trajectories(n_layers, n_samples):
    """How many of the study's first trajectories :func:`estimate_lipschitz` samples."""
    return max(1, -(-n_samples // (n_layers // _sample_every(n_layers) + 1)))


def _sample_states(params, seq_len, n_layers, n_samples, run, seed, x0=None, start=0):
    """States ``(X, layer)`` along the first trajectories of the study (from trajectory
    ``start`` on).

    Up to ``min(N, 8)`` evenly spaced layers (0 and N included) of the first
    ``ceil(n_samples / layers)`` trajectories (:func:`n_sampled_trajectories`; those
    of ``x0`` when given, else standard normal ones), run with the study's update and
    noise; non-finite states are dropped. Layer n's state is paired with weight set
    ``min(n, N − 1)``.
    """
    every = _sample_every(n_layers)
    if x0 is None:
        n_traj = n_sampled_trajectories(n_layers, n_samples)
        x0 = api.random_states(
            n_traj, seq_len, params.d, seed=seed, start=start, dtype=params.dtype
        )
    n_traj = x0.shape[0]
    states = api.integrate(
        params, x0, n_layers, save_every=every, throw=False, seed=seed, start=start, **run
    )
    layers = np.minimum(np.arange(states.shape[1]) * every, n_layers - 1)
    picked = []
    for k in range(states.shape[1]):  # layer-major: spread over layers
        for b in range(n_traj):
            if np.all(np.isfinite(states[b, k])):
                picked.append((states[b, k], int(layers[k])))
    idx = np.linspace(0, len(picked) - 1, min(n_samples, len(picked))).round().astype(int)
    return [picked[i] for i in np.unique(idx)] if picked else []


def compile_sampling(params, seq_len, n_layers, run, seed):
    """Compile the kernels :func:`estimate_lipschitz` samples states with (one trajectory
    of :func:`_sample_states`), for :func:`tfkernels.compiling.prepare`."""
    _sample_states(params, seq_len, n_layers, 1, run, seed)


def compile_jacobian(packed64, seq_len, d, dense_max=DENSE_MAX, lanczos=True):
    """Compile the JVP (and, past ``dense_max`` when the field has no norm:
    ``lanczos``, the VJP) kernel that :func:`estimate_lipschitz` applies, with the
    argument types it uses, on zeros."""
    X = np.zeros((1, seq_len, d))
    lay = np.zeros(1, dtype=np.int64)
    _jvp(packed64, X, np.zeros_like(X), lay, np.empty_like(X))
    if lanczos and seq_len * d > dense_max:
        _vjp(packed64, X, np.zeros_like(X), lay, np.empty_like(X))


def _lognorm_dense(packed, X, layer, full=True):
    """``(λ_max((J + Jᵀ)/2), σ_max(J))`` at X from the dense Jacobian (NaN when it is
    not finite), scaled by a power of two when its entries are huge or tiny: by full
    decompositions (``full``), else by ARPACK on the dense J."""
    J = _jacobian_dense(packed, X, layer)
    if not np.all(np.isfinite(J)):
        return math.nan, math.nan
    if not full:
        return _arpack_of_dense(J, True), _arpack_of_dense(J, False)
    c = _power_of_two_scale(float(np.max(np.abs(J))))
    if c != 1.0:  # entries below 2^-600 of the largest change no eigenvalue, and
        J = J * c  # subnormal ones upset LAPACK's syevr ("Internal Error")
        J[np.abs(J) < 2.0**-600] = 0.0
    l1 = _largest_eigenvalue(0.5 * (J + J.T))
    l2 = math.sqrt(max(_largest_eigenvalue(J.T @ J), 0.0))
    return l1 / c, l2 / c


def _largest_eigenvalue(S):
    """Largest eigenvalue of the symmetric matrix ``S`` (LAPACK ``syevr``, that one only)."""
    from scipy.linalg import eigh

    n = S.shape[0]
    return float(eigh(S, eigvals_only=True, subset_by_index=[n - 1, n - 1], driver="evr")[0])


def estimate_ensemble(ens, seq_len, n_layers, *, n_samples=64, seed=0, run=None, x0=None):
    """λ̂ and L̂ of a ``WeightEnsemble``: the largest of :func:`estimate_lipschitz` over
    its first ``m`` members (``m`` = :func:`n_sampled_trajectories`, or the rows of
    ``x0``), member j on its own trajectory j (its initial state, noise and weights):
    the states the study's first trajectories visit, as for a fixed model. NaN when
    any member's estimate is (a maximum cannot leave one out). Same arguments and
    results as :func:`estimate_lipschitz` (``info["members"]``: m).
    """
    m = n_sampled_trajectories(n_layers, n_samples) if x0 is None else x0.shape[0]
    per = -(-n_samples // m)
    lam, lip, n, note, info = -math.inf, 0.0, 0, None, None
    for j in range(m):
        xj = None if x0 is None else x0[j : j + 1]
        l1, l2, info = estimate_lipschitz(
            ens.member(j, n_layers),
            seq_len,
            n_layers,
            n_samples=per,
            seed=seed,
            run=run,
            x0=xj,
            start=j,
        )
        if info["method"] is None:  # not estimated (too large): so for every member
            return l1, l2, dict(info, members=0)
        n += info["n_samples"]
        if math.isnan(l1) or math.isnan(l2):
            note = note or info["note"]
            lam = lip = math.nan
        elif not math.isnan(lam):
            lam, lip = max(lam, l1), max(lip, l2)
    if note is None and info["note"] is not None and not math.isnan(lam):
        note = info["note"]  # the layer map's note
    where = f"over members 0..{m - 1} of the ensemble, each on its own trajectory"
    out = dict(info, n_samples=n, members=m)
    out["note"] = where if note is None else f"{note}; {where}"
    return lam, lip, out


def estimate_lipschitz(
    params,
    seq_len,
    n_layers,
    *,
    n_samples=64,
    seed=0,
    run=None,
    dense_max=DENSE_MAX,
    x0=None,
    start=0,
):
    """Estimate the one-sided Lipschitz constant λ̂ and the Lipschitz constant L̂ of f.

    λ̂ is the largest logarithmic 2-norm ``λ_max((J + Jᵀ)/2)`` and L̂ the largest
    spectral norm ``σ_max(J)`` of the Jacobian J of f over states sampled along the
    study's trajectories (see :func:`_sample_states`), in float64. For a layer map
    (:func:`jacobian_object`) J is the map's ``Φ'`` and the estimates are
    ``log σ_max(Φ')/Δt`` and ``σ_max(Φ')`` (:data:`MAP_NOTE`).

    When ``T·d ≤ dense_max``, J is formed densely from T·d JVPs and decomposed in full
    (LAPACK). Past it, both come from Lanczos iterations
    (``scipy.sparse.linalg.eigsh``) on ``(J + Jᵀ)/2`` and ``JᵀJ``: matrix-free, applied
    with the JVP and VJP kernels, for a field without norms; for a layer map or a
    field with a norm (the kernels have no VJP of them) on the dense J, formed from
    T·d tangent kernels in column blocks, up to ``T·d =`` :data:`COLUMNS_MAX`
    (``8·(T·d)²`` bytes). That costs T·d layer JVPs per sampled state: for
    all-MiniLM-L6-v2 at T = 16 (T·d = 6144) about 33 s per state on 2 cores of an
    AVX-512 Xeon (32 s forming J, 1.3 s ARPACK), 302 MB (docs/performance.md), so
    ``n_samples`` sets the bill.
    Being a maximum over samples, λ̂ is a lower estimate of the supremum over all
    states the trajectories visit.

    The linear algebra runs with one BLAS thread, so that no BLAS threads are left
    spinning when the study's kernels start (measurements: docs/performance.md).

    Parameters
    ----------
    params : TransformerParams
        The model; the estimate is formed in float64 whatever its dtype.
    seq_len, n_layers : int
        Tokens T per state and layers N of the study.
    n_samples : int
        States to sample (fewer when some are non-finite).
    seed : int
        Seed of the study: the samples lie on its first trajectories.
    run : dict, optional
        The study's update, ``method, t_final, alpha, c, noise`` as for
        :func:`tfkernels.integrate` (their defaults when omitted).
    dense_max : int
        Largest T·d for which J is decomposed in full.
    x0 : ndarray, shape (n, seq_len, d), optional
        The initial states of the sampled trajectories (the study's first ones, at
        most :func:`n_sampled_trajectories`); None draws them standard normal.
    start : int
        Global index of the first sampled trajectory (its noise and drawn state).

    A ``WeightEnsemble`` is estimated member by member (:func:`estimate_ensemble`).

    A Jacobian with huge or tiny finite entries is scaled by a power of two first
    (:data:`SAFE_EXP`), so that ``JᵀJ`` does not overflow; one that is not finite (the
    JVP overflowed at a huge state) makes both estimates undetermined: a maximum over
    the samples cannot leave one out.

    Returns
    -------
    lambda_hat, L_hat : float
        NaN when undetermined: no sampled state is finite, or the Jacobian at one of
        them is not (``info["note"]`` says which).
    info : dict
        ``n_samples``, ``method`` ("dense": full decompositions, "dense-arpack":
        Lanczos on the dense J, or "lanczos": matrix-free), ``object``
        (:func:`jacobian_object`) and ``note`` (None, why the estimates are NaN, or
        :data:`MAP_NOTE`).
    """
    if is_ensemble(params):
        return estimate_ensemble(
            params, seq_len, n_layers, n_samples=n_samples, seed=seed, run=run, x0=x0
        )
    run = run or {}
    obj = jacobian_object(params)
    why = _too_large(params, seq_len)
    if why is not None:
        info = {"n_samples": 0, "method": None, "note": why, "object": obj}
        return math.nan, math.nan, info
    samples = _sample_states(params, seq_len, n_layers, n_samples, run, seed, x0, start)
    p64 = params if params.dtype == np.float64 else params.astype(np.float64)
    packed = kernels.pack_params(p64)
    full = seq_len * params.d <= dense_max
    formed = _formed(params)
    if obj == "layer map":
        upd = {"method": "euler", "t_final": 1.0, "alpha": None, "c": 1.0, "noise": 0.0, **run}
        a, b, h, _ = api.prepare_run(p64, n_layers, *(upd[k] for k in _RUN_KEYS))
    lam, lip = -math.inf, 0.0
    n_bad = 0
    with threadpool_limits(limits=1, user_api="blas"):
        for X, n in samples:
            X = np.ascontiguousarray(X, dtype=np.float64)
            layer = n if params.n_sets is not None else 0
            try:
                if obj == "layer map":
                    l1, l2 = _lognorm_map(packed, X, layer, a, b, float(h[n]), full)
                elif full or formed:
                    l1, l2 = _lognorm_dense(packed, X, layer, full)
                else:
                    l1, l2 = _lognorm_lanczos(packed, X, layer)
            except (np.linalg.LinAlgError, ArpackError):
                l1 = l2 = math.nan
            if math.isnan(l1) or math.isnan(l2):
                n_bad += 1
                continue
            lam, lip = max(lam, l1), max(lip, l2)
    note = None
    if not samples:
        note = "no sampled state is finite"
    elif n_bad:
        note = (
            f"the Jacobian of f is not finite (it overflows float64), or its eigenvalue "
            f"problem failed, at {n_bad} of the {len(samples)} sampled states"
        )
    if note is not None:
        lam, lip = math.nan, math.nan
    elif obj == "layer map":
        note = MAP_NOTE
    method = "dense" if full else ("dense-arpack" if formed else "lanczos")
    info = {"n_samples": len(samples), "method": method, "note": note, "object": obj}
    return lam, lip, info

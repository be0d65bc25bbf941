"""The token geometry of a state, measured inside the flow's driver at each saved layer.

:func:`measure_group` (compiled as :func:`measure_lanes` and :func:`measure_rows`)
takes a state in the layout of the drivers, ``X (T, d·L)`` with
lane ``l`` of token ``t``'s component ``k`` at ``X[t, k·L + l]`` (L lanes: a group of
the lane layout, or L = 1 for one trajectory of the row layout), and writes the metrics
of every lane (``tfkernels.studies.geometry``'s module docstring defines them) into a
row of ``vals``: mean cosine, ``dens``, cluster count, rank-collapse ratios (composite
and Frobenius) and interaction energy, each only when its bit of ``cfg.which`` is set.
Every loop over pairs or tokens runs across the lanes, so a group's metrics cost one
vectorized pass and each lane's values are those of the lane alone.

It is compiled with strict IEEE arithmetic (``jit.sjit``: no contraction into fused
multiply-adds, no reassociation): the norms and cosines are then the same operations in
the same order as the NumPy reference ``tfkernels.studies.geometry.geometry_metrics``
(the state scaled by a power of two, ``n_t = Σ_k x_tk²`` summed in k order,
``u = x/√n``, ``C_ij = Σ_k u_ik u_jk`` in k order), so the cosines have the same bits and
the counts compared with a threshold (``dens``, the cluster count) are the same numbers.

The cluster count is the rank of the 0/1 matrix ``A_ij = [C_ij > threshold]``, exact.
Its rows are kept as bit masks. When the relation is transitive (every row equals the
rows of its members: the tokens fall into cliques) A is, up to a permutation, block
diagonal with blocks of ones, and its rank is the number of distinct rows. Otherwise
(a chain of tokens within the threshold of their neighbours only) :func:`exact_rank`
reduces A to its distinct rows and columns and eliminates it modulo primes below 2^31:
each ``rank mod p ≤ rank``, and their maximum is the rank because the product of the
primes exceeds the Hadamard bound on every minor of a 0/1 matrix of that size
(:func:`tfkernels.kernels.structs.rank_primes`).
"""

import math

import numpy as np

from .jit import sijit as _sijit
from .jit import sjit as _sjit
from .simd import lanes, vadd, vcount_gt, vdiv, vload, vmul, vsplat, vsqrt, vstore, vzero

#: Bits of ``GeometryConfig.which``, metric q having bit ``2^q``.
MEAN_COSINE, DENS, CLUSTERS, RANK_COLLAPSE, RANK_COLLAPSE_FRO, ENERGY = 1, 2, 4, 8, 16, 32


@_sijit
def scaled_lanes(X, L, d, nl, gs):
    """``gs.Xs[t, k·L + l] = x_tk·2^{−e_l}`` with ``max_t,k |x_tk| = m·2^{e_l}``, m in
    [1/2, 1) (``math.frexp``): exact, a power of two, as the reference's ``np.ldexp``;
    ``gs.ok[l]`` whether lane ``l < nl`` is finite. The maxima and the finiteness test
    (``Σ 0·|x|``, NaN for a NaN or an inf) run across the lanes."""
    amax, fin = gs.acc[4], gs.acc[5]
    T = X.shape[0]
    for l in range(L):
        amax[l] = 0.0
        fin[l] = 0.0
    for t in range(T):
        for k in range(d):
            for l in range(L):
                v = abs(np.float64(X[t, k * L + l]))
                fin[l] += v * 0.0
                amax[l] = v if v > amax[l] else amax[l]
    for l in range(L):
        e = math.frexp(amax[l])[1]
        gs.ok[l] = l < nl and fin[l] == 0.0
        if e >= -1022:
            gs.s1[l] = math.ldexp(1.0, -e)  # in [2^-1024, 2^1022]: exact
            gs.s2[l] = 1.0
        else:  # a state of subnormal numbers: two exact scalings upward
            gs.s1[l] = math.ldexp(1.0, 600)
            gs.s2[l] = math.ldexp(1.0, -e - 600)
    for t in range(T):
        for k in range(d):
            for l in range(L):
                gs.Xs[t, k * L + l] = np.float64(X[t, k * L + l]) * gs.s1[l] * gs.s2[l]


@_sijit
def unit_tokens(T, d, L, gs):
    """``gs.U = Xs/‖x_t‖`` per token (``n_t = Σ_k x_tk²`` in k order, then the square
    root); a lane with a zero (or underflowing) token is marked not ok. With lanes
    (``L`` a multiple of the float64 vector's ``W``) a vector of W lanes at a time
    (:func:`~tfkernels.kernels.simd.vsqrt`, :func:`~tfkernels.kernels.simd.vdiv`: the
    same correctly rounded operations; the scalar loops ran the square roots and
    divisions one lane at a time)."""
    Xs, U = gs.Xs, gs.U
    if L == 1:
        for t in range(T):
            s = Xs[t, 0] * Xs[t, 0]
            for k in range(1, d):
                s = s + Xs[t, k] * Xs[t, k]
            gs.ok[0] = gs.ok[0] & (s > 0.0)
            s = np.sqrt(s)
            for k in range(d):
                U[t, k] = Xs[t, k] / s
        return
    n2 = gs.acc[0]
    z = vzero(U)
    W = lanes(U)
    dL = d * L
    for t in range(T):
        for v in range(L // W):
            o = t * dL + v * W
            x = vload(Xs, o, z)
            s = vmul(x, x)
            for k in range(1, d):
                x = vload(Xs, o + k * L, z)
                s = vadd(s, vmul(x, x))
            vstore(gs.acc, v * W, s)  # row 0 of acc: n2
            r = vsqrt(s)
            for k in range(d):
                vstore(U, o + k * L, vdiv(vload(Xs, o + k * L, z), r))
        for l in range(L):
            gs.ok[l] = gs.ok[l] & (n2[l] > 0.0)


@_sijit
def pair_pass_lanes(T, d, L, thr, store, gs):
    """The cosines of the pairs ``i < j`` of every lane, a vector of ``W`` lanes at a
    time (:func:`~tfkernels.kernels.simd.vmul`, :func:`~tfkernels.kernels.simd.vadd`:
    ``C_ij = Σ_k u_ik u_jk`` in k order, correctly rounded): their sum into ``acc[1]``
    (over j for each i, then over i), the count above the ``dens`` threshold ``thr``
    (``acc[3]``, an exact float) and, with ``store``, every ``C_ij`` (i ≤ j) into
    ``gs.C (T, T, L)``. ``L`` is a multiple of the vector's ``W`` lanes."""
    U, C, acc = gs.U, gs.C, gs.acc
    z = vzero(U)
    W = lanes(U)
    dL = d * L
    thr = vsplat(thr, z)
    for v in range(L // W):
        total = z
        count = z
        for i in range(T):
            oi = i * dL + v * W
            if store:
                c = vmul(vload(U, oi, z), vload(U, oi, z))
                for k in range(1, d):
                    c = vadd(c, vmul(vload(U, oi + k * L, z), vload(U, oi + k * L, z)))
                vstore(C, (i * T + i) * L + v * W, c)
            row = z
            for j in range(i + 1, T):
                oj = j * dL + v * W
                c = vmul(vload(U, oi, z), vload(U, oj, z))
                for k in range(1, d):
                    c = vadd(c, vmul(vload(U, oi + k * L, z), vload(U, oj + k * L, z)))
                row = vadd(row, c)
                count = vcount_gt(count, c, thr)
                if store:
                    vstore(C, (i * T + j) * L + v * W, c)
            total = vadd(total, row)
        vstore(acc, L + v * W, total)
        vstore(acc, 3 * L + v * W, count)


@_sijit
def pair_pass_rows(T, d, thr, store, gs):
    """:func:`pair_pass_lanes` of one trajectory (L = 1), in scalars: the same
    operations in the same order."""
    U, C, acc = gs.U, gs.C, gs.acc
    total = 0.0
    count = 0.0
    for i in range(T):
        if store:
            c = U[i, 0] * U[i, 0]
            for k in range(1, d):
                c = c + U[i, k] * U[i, k]
            C[i, i, 0] = c
        row = 0.0
        for j in range(i + 1, T):
            c = U[i, 0] * U[j, 0]
            for k in range(1, d):
                c = c + U[i, k] * U[j, k]
            row = row + c
            count += 1.0 if c > thr else 0.0
            if store:
                C[i, j, 0] = c
        total = total + row
    acc[1, 0] = total
    acc[3, 0] = count


@_sijit
def stored_pair_sums(T, nl, cfg, gs):
    """From the stored cosines ``gs.C`` (i ≤ j): the energy's ``Σ_ij e^{β(C_ij − 1)}``
    (``acc[2]``) and the bit masks of ``[C_ij > cfg.cluster_threshold]`` (``masks (T, W,
    L)``, both triangles and the diagonal), each only when its metric is asked for."""
    C, masks, es = gs.C, gs.masks, gs.acc[2]
    want_e = cfg.which & ENERGY != 0
    want_c = cfg.which & CLUSTERS != 0
    thr_c, beta = cfg.cluster_threshold, cfg.energy_beta
    one = np.uint64(1)
    for l in range(nl):
        es[l] = 0.0
        if want_c:
            for i in range(T):
                for w in range(masks.shape[1]):
                    masks[i, w, l] = 0
        for i in range(T):
            for j in range(i, T):
                c = C[i, j, l]
                if want_c and c > thr_c:
                    masks[i, j >> 6, l] |= one << np.uint64(j & 63)
                    masks[j, i >> 6, l] |= one << np.uint64(i & 63)
                if want_e:
                    e = math.exp(beta * (c - 1.0))
                    es[l] += e if i == j else e + e


@_sijit
def collapse_ratios(T, d, L, gs):
    """Dong et al.'s ratios ``‖X − 1·mean(X)‖/‖X‖`` of every lane of the scaled state:
    composite norm ``sqrt(‖·‖₁‖·‖_∞)`` into ``acc[4]``, Frobenius into ``acc[5]``
    (``R = X − 1·mean``; the 1-norm is the largest column sum of ``|·|``, the ∞-norm
    the largest row sum)."""
    Xs, a, mean = gs.Xs, gs.acc, gs.mean
    n1r, nir, n1x, nix, fr, fx = a[4], a[5], a[6], a[7], a[8], a[9]
    row_r, row_x, col_r, col_x = a[10], a[11], a[12], a[13]
    for l in range(L):
        n1r[l] = 0.0
        nir[l] = 0.0
        n1x[l] = 0.0
        nix[l] = 0.0
        fr[l] = 0.0
        fx[l] = 0.0
    for k in range(d):
        for l in range(L):
            mean[k, l] = 0.0
            col_r[l] = 0.0
            col_x[l] = 0.0
        for t in range(T):
            for l in range(L):
                mean[k, l] += Xs[t, k * L + l]
        for l in range(L):
            mean[k, l] = mean[k, l] / T
        for t in range(T):
            for l in range(L):
                x = Xs[t, k * L + l]
                r = x - mean[k, l]
                col_r[l] += abs(r)
                col_x[l] += abs(x)
                fr[l] += r * r
                fx[l] += x * x
        for l in range(L):
            n1r[l] = max(n1r[l], col_r[l])
            n1x[l] = max(n1x[l], col_x[l])
    for t in range(T):
        for l in range(L):
            row_r[l] = 0.0
            row_x[l] = 0.0
        for k in range(d):
            for l in range(L):
                x = Xs[t, k * L + l]
                row_r[l] += abs(x - mean[k, l])
                row_x[l] += abs(x)
        for l in range(L):
            nir[l] = max(nir[l], row_r[l])
            nix[l] = max(nix[l], row_x[l])
    for l in range(L):
        comp = math.sqrt(n1r[l] * nir[l]) / math.sqrt(n1x[l] * nix[l])
        nir[l] = math.sqrt(fr[l]) / math.sqrt(fx[l])
        n1r[l] = comp


@_sjit
def rows_equal(masks, i, j, l):
    """Whether rows ``i`` and ``j`` of lane ``l``'s bit matrix are equal."""
    for w in range(masks.shape[1]):
        if masks[i, w, l] != masks[j, w, l]:
            return False
    return True


@_sjit
def has_bit(masks, i, j, l):
    """``A_ij`` of lane ``l``."""
    return (masks[i, j >> 6, l] >> np.uint64(j & 63)) & np.uint64(1) != 0


@_sjit
def clique_count(masks, T, l, seen):
    """The number of distinct rows of lane ``l``'s bit matrix when every row equals the
    rows of all its members (the relation is an equivalence: cliques), else −1."""
    for i in range(T):
        seen[i] = 0
    count = 0
    for i in range(T):
        if seen[i]:
            continue
        count += 1
        for j in range(T):
            if has_bit(masks, i, j, l):
                if seen[j] or not rows_equal(masks, i, j, l):
                    return -1
                seen[j] = 1
        if not seen[i]:  # a row without its diagonal bit: not an equivalence
            return -1
    return count


@_sjit
def rank_mod(A, m, p, M):
    """Rank of the ``m × m`` integer matrix ``A`` modulo the prime ``p < 2^31`` (Gauss–
    Jordan elimination in ``M``; products stay below 2^62)."""
    for a in range(m):
        for b in range(m):
            M[a, b] = A[a, b] % p
    rank = 0
    for col in range(m):
        piv = -1
        for r in range(rank, m):
            if M[r, col] != 0:
                piv = r
                break
        if piv < 0:
            continue
        for b in range(m):
            M[rank, b], M[piv, b] = M[piv, b], M[rank, b]
        inv = 1  # M[rank, col]^(p − 2) mod p
        base, e = M[rank, col], p - 2
        while e > 0:
            if e & 1:
                inv = inv * base % p
            base = base * base % p
            e >>= 1
        for r in range(rank + 1, m):
            f = M[r, col] * inv % p
            if f != 0:
                for b in range(col, m):
                    M[r, b] = (M[r, b] - f * M[rank, b]) % p
        rank += 1
    return rank


@_sjit
def exact_rank(masks, T, l, primes, gs):
    """The rank over the rationals of lane ``l``'s 0/1 matrix (``T × T``, symmetric):
    its distinct rows ``reps`` (distinct columns are the same indices), then the maximum
    of the ranks modulo ``primes`` (enough of them: see the module docstring)."""
    reps, A, M = gs.reps, gs.A, gs.M
    m = 0
    for i in range(T):
        new = True
        for r in range(m):
            if rows_equal(masks, i, reps[r], l):
                new = False
                break
        if new:
            reps[m] = i
            m += 1
    for a in range(m):
        for b in range(m):
            A[a, b] = 1 if has_bit(masks, reps[a], reps[b], l) else 0
    best = 0
    for q in range(primes.shape[0]):
        best = max(best, rank_mod(A, m, primes[q], M))
        if best == m:
            break
    return best


@_sjit
def measure_lanes(X, nl, status, cfg, vals, gs):
    """:func:`measure_group` of a group of the lane layout (L, the lanes of X's
    dtype, a compile-time constant: every loop over the lanes is one vector)."""
    measure_group(X, lanes(X), nl, status, cfg, vals, gs)


@_sjit
def measure_rows(X, status, cfg, vals, gs):
    """:func:`measure_group` of one trajectory of the row layout (L = 1)."""
    measure_group(X, 1, 1, status, cfg, vals, gs)


@_sijit
def measure_group(X, L, nl, status, cfg, vals, gs):
    """The metrics of the lanes ``l < nl`` of ``X (T, d·L)`` whose ``status[l]`` is
    ``STATUS_OK`` (−1) into ``vals[l, :]`` (metric q, when its bit of ``cfg.which`` is
    set, in column ``cfg.cols[q]``; NaN in every column for a lane with a non-finite
    entry or a zero token). ``cfg`` a
    ``structs.GeometryConfig``, ``gs`` a ``structs.GeometryScratch``. Inlined into
    :func:`measure_lanes` and :func:`measure_rows`, which fix L."""
    T = X.shape[0]
    d = X.shape[1] // L
    which = cfg.which
    scaled_lanes(X, L, d, nl, gs)
    unit_tokens(T, d, L, gs)
    store = which & (CLUSTERS | ENERGY) != 0
    if which & (MEAN_COSINE | DENS | CLUSTERS | ENERGY):
        if L == 1:
            pair_pass_rows(T, d, cfg.dens_threshold, store, gs)
        else:
            pair_pass_lanes(T, d, L, cfg.dens_threshold, store, gs)
    if store:
        stored_pair_sums(T, nl, cfg, gs)
    if which & (RANK_COLLAPSE | RANK_COLLAPSE_FRO):
        collapse_ratios(T, d, L, gs)
    n_off = T * (T - 1)
    for l in range(nl):
        if status[l] != -1:
            continue
        col = cfg.cols
        if not gs.ok[l]:
            for q in range(vals.shape[1]):
                vals[l, q] = np.nan
            continue
        if which & MEAN_COSINE:
            vals[l, col[0]] = (gs.acc[1][l] + gs.acc[1][l]) / n_off
        if which & DENS:
            vals[l, col[1]] = (2 * np.int64(gs.acc[3][l])) / n_off
        if which & CLUSTERS:
            k = clique_count(gs.masks, T, l, gs.reps)
            if k < 0:
                k = exact_rank(gs.masks, T, l, cfg.primes, gs)
            vals[l, col[2]] = k
        if which & RANK_COLLAPSE:
            vals[l, col[3]] = gs.acc[4][l]
        if which & RANK_COLLAPSE_FRO:
            vals[l, col[4]] = gs.acc[5][l]
        if which & ENERGY:
            vals[l, col[5]] = gs.acc[2][l] / (T * T)

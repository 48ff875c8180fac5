r"""The numba loops behind :mod:`normlab.kernels.norm`.

Every normalization is computed from four small building blocks over a contiguous run of values ("segment")
that shares one statistic, and, for batch norm over (N, C) rows, from the same four over a block of rows:

======================  ======================================================  ======================
block                   computes                                                memory
======================  ======================================================  ======================
``shifted_sums``        :math:`\sum (x - s)`, :math:`\sum (x - s)^2` in float64  reads x
``normalize``           :math:`y = ((x - s) - \delta)\,a + b`                     reads x, writes y
``grad_sums``           :math:`\sum dy`, :math:`\sum dy\,x_c` in float64        reads dy, x
``input_grad``          :math:`dx = a\,dy + b\,x_c + k`                          reads dy, x, writes dx
======================  ======================================================  ======================

Notation: ``s`` is the *shift* (the first value the statistic is taken over, as in the reference), ``δ`` the
mean of the shifted values, so the mean is ``s + δ`` and the centered input is :math:`x_c = (x - s) - δ`.
Subtracting ``s`` first is exact for values within a factor of two of it, so a float32 input with mean 1e4
and standard deviation 1 keeps its precision (the same trick as the reference's shifted two-pass).  From the
two shifted sums over n values, :math:`\delta = S_1/n` and :math:`\sigma^2 = S_2/n - \delta^2`; both sums are
float64, and the subtraction loses only :math:`(\delta/\sigma)^2` ulps of float64, which is small because the
shift is one of the values.  Nothing is ever formed as :math:`E[x^2] - E[x]^2` in the input's precision.

Backward recomputes :math:`x_c` from x and the two per-statistic scalars instead of storing :math:`\hat x`: one
array less to write in forward and to read in backward.  With :math:`g = \gamma\,dy` and
:math:`\hat x = x_c\,r` (:math:`r = 1/\sqrt{\sigma^2+\epsilon}`), the closed form of the reference,
:math:`dx = r\,(g - \langle g\rangle - \hat x \langle g \hat x\rangle)`, is per statistic an affine function of
dy and :math:`x_c`:

.. math::

    dx = (r\gamma)\,dy \;-\; \frac{r^3}{n}\Big(\sum g\,x_c\Big)\,x_c \;-\; \frac{r}{n}\sum g

so one pass reduces the two sums and one pass writes dx.  Where a statistic's values fit in cache (a row of
layer norm, a group, a channel of batch norm over (N, C, H, W)) both passes run back to back on the same
values, so memory sees roughly one read of x per forward and one read of (dy, x) per backward.

Reductions are compiled with ``fastmath={"reassoc", "contract"}`` only: reassociation lets LLVM keep several
partial sums in SIMD lanes (about 3.5x faster than a serial chain here), and changes float64 sums at the 1e-16
level.  No ``nnan``/``ninf``: NaN and inf propagate exactly as in NumPy.  The elementwise writers use strict
IEEE arithmetic (they vectorize without any flag).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from normlab.kernels._compile import REDUCE, entry, helper


# ----------------------------------------------------------------------------------- segment building blocks
@helper(fastmath=REDUCE)
def shifted_sums(x, shift):
    """(Σ (x - shift), Σ (x - shift)²) over a contiguous 1-D segment, accumulated in float64."""
    s1 = 0.0
    s2 = 0.0
    for i in range(x.shape[0]):
        d = np.float64(x[i]) - shift
        s1 += d
        s2 += d * d
    return s1, s2


@helper()
def normalize(x, y, shift, shifted_mean, scale, bias):
    """y = ((x - shift) - shifted_mean) * scale + bias over a segment; all scalars in x's dtype."""
    for i in range(x.shape[0]):
        y[i] = ((x[i] - shift) - shifted_mean) * scale + bias


@helper(fastmath=REDUCE)
def grad_sums(dy, x, shift, shifted_mean):
    """(Σ dy, Σ dy * x_c) over a segment, x_c = (x - shift) - shifted_mean recomputed.

    The terms are centered (nothing large cancels), so they are summed 64 at a time in x's dtype (SIMD lanes)
    and those partial sums accumulated in float64.  The variance's shifted sums (``shifted_sums``) stay float64
    throughout: there the subtraction s2/n - δ² can cancel.
    """
    sg = 0.0
    sgx = 0.0
    n = x.shape[0]
    i = 0
    while i + 64 <= n:
        a = dy.dtype.type(0.0)
        b = dy.dtype.type(0.0)
        for j in range(i, i + 64):
            a += dy[j]
            b += dy[j] * ((x[j] - shift) - shifted_mean)
        sg += np.float64(a)
        sgx += np.float64(b)
        i += 64
    for j in range(i, n):
        g = np.float64(dy[j])
        sg += g
        sgx += g * np.float64((x[j] - shift) - shifted_mean)
    return sg, sgx


@helper()
def input_grad(dy, x, dx, shift, shifted_mean, a, b, k):
    """dx = a * dy + b * x_c + k over a segment (the closed-form backward, see the module docstring)."""
    for i in range(x.shape[0]):
        dx[i] = a * dy[i] + b * ((x[i] - shift) - shifted_mean) + k


# ----------------------------------------------------------------------------------- per-statistic scalars
@helper()
def finish_stats(s1, s2, n, center):
    """(shifted_mean, var) from the shifted sums of n values; var is biased and never negative (NaN stays NaN)."""
    if (
        not center
    ):  # RMS norm: no mean is subtracted, the "variance" is the mean square (shift is 0)
        return 0.0, s2 / n
    shifted_mean = s1 / n
    var = s2 / n - shifted_mean * shifted_mean
    if var < 0.0:  # rounding can undershoot a true 0 by an ulp
        var = 0.0
    return shifted_mean, var


@helper()
def inverse_std(var, eps):
    """1 / sqrt(var + eps): 0 where var + eps == 0 (constant input, eps=0); NaN where it is not finite (NaN
    statistics or an overflowed variance), so the whole group's output is NaN, as in the reference."""
    denom = var + eps
    if denom == 0.0:
        return 0.0
    if denom < np.inf:  # False for NaN as for inf
        return 1.0 / np.sqrt(denom)
    return np.nan


@helper()
def grad_coefficients(rstd, sg, sgx, n, input_stats, center):
    """(b, k) of dx = (r γ) dy + b x_c + k for one statistic, from Σ g and Σ g x_c (g = γ dy).

    Both vanish when the statistics did not come from this input (eval mode: they are constants).
    """
    if not input_stats:
        return 0.0, 0.0
    b = -rstd * rstd * rstd * sgx / n  # variance term
    k = -rstd * sg / n if center else 0.0  # mean term; RMS norm has no mean
    return b, k


# ----------------------------------------------------------------------------------- batch norm, (N, C, S)
@entry(parallel=True)
def bn_planes_forward_train(x, weight, bias, eps, y, shift, shifted_mean, var, rstd):
    """Batch norm of x (N, C, S), S > 1: per channel, stats over its N planes, then y; parallel over C.

    The channel's N*S values are read twice back to back (stats, then y), so the second read hits cache.
    """
    n_, c_, s_ = x.shape
    n = n_ * s_
    for c in prange(c_):
        sh = x[0, c, 0]
        s1 = 0.0
        s2 = 0.0
        for i in range(n_):
            a1, a2 = shifted_sums(x[i, c], np.float64(sh))
            s1 += a1
            s2 += a2
        dm, v = finish_stats(s1, s2, n, True)
        r = inverse_std(v, eps)
        shift[c] = sh
        shifted_mean[c] = dm
        var[c] = v
        rstd[c] = r
        scale = rstd[c] * weight[c]
        for i in range(n_):
            normalize(x[i, c], y[i, c], sh, shifted_mean[c], scale, bias[c])


@entry(parallel=True)
def bn_planes_forward_given(x, weight, bias, shift, shifted_mean, rstd, y):
    """y = ((x - shift[c]) - shifted_mean[c]) * rstd[c] * weight[c] + bias[c] for x (N, C, S), statistics given."""
    n_, c_ = x.shape[:2]
    for c in prange(c_):
        scale = rstd[c] * weight[c]
        for i in range(n_):
            normalize(x[i, c], y[i, c], shift[c], shifted_mean[c], scale, bias[c])


@entry(parallel=True)
def bn_planes_backward(dy, x, shift, shifted_mean, rstd, weight, input_stats, dx, dweight, dbias):
    """Batch norm backward for (N, C, S): per channel, reduce Σdy and Σdy·x_c, then write dx; parallel over C.

    ``dweight[c] = r Σ dy x_c`` and ``dbias[c] = Σ dy`` (float64) fall out of the same reduction.
    """
    n_, c_, s_ = x.shape
    n = n_ * s_
    for c in prange(c_):
        sdy = 0.0
        sdyx = 0.0
        for i in range(n_):
            a1, a2 = grad_sums(dy[i, c], x[i, c], shift[c], shifted_mean[c])
            sdy += a1
            sdyx += a2
        r = np.float64(rstd[c])
        w = np.float64(weight[c])
        dweight[c] = r * sdyx
        dbias[c] = sdy
        b, k = grad_coefficients(r, w * sdy, w * sdyx, n, input_stats, True)
        a = rstd[c] * weight[c]
        bt = x.dtype.type(b)
        kt = x.dtype.type(k)
        for i in range(n_):
            input_grad(dy[i, c], x[i, c], dx[i, c], shift[c], shifted_mean[c], a, bt, kt)


# ----------------------------------------------------------------------------------- batch norm, (N, C)
# Rows are split into one block per thread, one prange iteration each; a block streams its rows contiguously
# and adds into its own row of a (blocks, C) float64 partial-sum array, merged after the parallel loop.  Every
# block shifts by the same x[0, :], so merging shifted sums is plain addition (no Chan update needed).  Every
# pass walks its rows forwards: walking the second pass backwards (to start on rows the reduction left in
# L2) measured 20-50% slower, the hardware prefetchers follow descending streams badly here.  The reductions
# take four rows per sweep: the partial sums are loaded and stored once per four values, which measured 1.7x
# faster than one row per sweep.


@helper()
def _block_rows(n_rows, blocks, k):
    """Rows [lo, hi) of block k when n_rows rows are split into ``blocks`` nearly equal blocks."""
    step = (n_rows + blocks - 1) // blocks
    return min(n_rows, k * step), min(n_rows, (k + 1) * step)


@helper()
def _rows_shifted_sums(x, lo, hi, shift, p1, p2):
    """p1[c] = Σ_i (x[i, c] - shift[c]), p2[c] = Σ_i (x[i, c] - shift[c])² over rows lo..hi, float64."""
    p1[:] = 0.0
    p2[:] = 0.0
    i = lo
    while i + 4 <= hi:
        r0, r1, r2, r3 = x[i], x[i + 1], x[i + 2], x[i + 3]
        for c in range(x.shape[1]):  # independent columns: vectorizes without reassociation
            d0 = np.float64(r0[c]) - shift[c]
            d1 = np.float64(r1[c]) - shift[c]
            d2 = np.float64(r2[c]) - shift[c]
            d3 = np.float64(r3[c]) - shift[c]
            p1[c] += (d0 + d1) + (d2 + d3)
            p2[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
        i += 4
    for j in range(i, hi):
        for c in range(x.shape[1]):
            d = np.float64(x[j, c]) - shift[c]
            p1[c] += d
            p2[c] += d * d


@helper()
def _rows_grad_sums(dy, x, lo, hi, shift, shifted_mean, p1, p2):
    """p1[c] = Σ_i dy[i, c], p2[c] = Σ_i dy[i, c] x_c[i, c] over rows lo..hi, four rows a sweep.

    The terms are centered, so each sweep adds its four in x's dtype and only their sum in float64.
    """
    p1[:] = 0.0
    p2[:] = 0.0
    i = lo
    while i + 4 <= hi:
        for c in range(x.shape[1]):
            g0, g1, g2, g3 = dy[i, c], dy[i + 1, c], dy[i + 2, c], dy[i + 3, c]
            x0 = (x[i, c] - shift[c]) - shifted_mean[c]
            x1 = (x[i + 1, c] - shift[c]) - shifted_mean[c]
            x2 = (x[i + 2, c] - shift[c]) - shifted_mean[c]
            x3 = (x[i + 3, c] - shift[c]) - shifted_mean[c]
            p1[c] += np.float64((g0 + g1) + (g2 + g3))
            p2[c] += np.float64((g0 * x0 + g1 * x1) + (g2 * x2 + g3 * x3))
        i += 4
    for j in range(i, hi):
        for c in range(x.shape[1]):
            g = np.float64(dy[j, c])
            p1[c] += g
            p2[c] += g * np.float64((x[j, c] - shift[c]) - shifted_mean[c])


@helper()
def _rows_normalize(x, y, lo, hi, shift, shifted_mean, scale, bias):
    """y[i, c] = ((x[i, c] - shift[c]) - shifted_mean[c]) * scale[c] + bias[c] for rows lo..hi."""
    for i in range(lo, hi):
        row = x[i]
        out = y[i]
        for c in range(row.shape[0]):
            out[c] = ((row[c] - shift[c]) - shifted_mean[c]) * scale[c] + bias[c]


@helper()
def _rows_input_grad(dy, x, dx, lo, hi, shift, shifted_mean, a, b, k):
    """dx[i, c] = a[c] dy[i, c] + b[c] x_c[i, c] + k[c] for rows lo..hi."""
    for i in range(lo, hi):
        row = x[i]
        grow = dy[i]
        out = dx[i]
        for c in range(row.shape[0]):
            out[c] = a[c] * grow[c] + b[c] * ((row[c] - shift[c]) - shifted_mean[c]) + k[c]


# The serial steps between parallel loops live in plain (non-parallel) functions: inside a parallel function
# every array expression outside a prange becomes a parallel region of its own, and a thousand tiny ones cost
# milliseconds.


@helper()
def _copy_row(x, shift, shift64):
    """shift = x[0] (in x's dtype) and shift64 = the same values in float64."""
    for c in range(x.shape[1]):
        shift[c] = x[0, c]
        shift64[c] = x[0, c]


@helper()
def _product(a, b, out):
    for c in range(a.shape[0]):
        out[c] = a[c] * b[c]


@helper()
def _sum_blocks(parts, out):
    """out[j] = Σ_k parts[k, j], summing whole rows (contiguous) one after the other."""
    out[:] = parts[0]
    for k in range(1, parts.shape[0]):
        row = parts[k]
        for j in range(out.shape[0]):
            out[j] += row[j]


@helper()
def _merge_stats(s1, s2, n, eps, weight, shifted_mean, var, rstd, scale):
    """Add up the blocks' partial shifted sums; per column the mean, variance, 1/std and rstd*weight."""
    t1 = np.empty(s1.shape[1])
    t2 = np.empty(s1.shape[1])
    _sum_blocks(s1, t1)
    _sum_blocks(s2, t2)
    for c in range(s1.shape[1]):
        dm, v = finish_stats(t1[c], t2[c], n, True)
        shifted_mean[c] = dm
        var[c] = v
        rstd[c] = inverse_std(v, eps)
        scale[c] = rstd[c] * weight[c]


@helper()
def _merge_grads(sg, sgx, n, rstd, weight, input_stats, dweight, dbias, a, b, k):
    """Add up the blocks' partial Σdy, Σdy·x_c; per column dweight, dbias and the coefficients of dx."""
    _sum_blocks(sg, dbias)  # dbias[c] = Σ dy
    t2 = np.empty(sg.shape[1])
    _sum_blocks(sgx, t2)
    for c in range(sg.shape[1]):
        sdy = dbias[c]
        sdyx = t2[c]
        r = np.float64(rstd[c])
        w = np.float64(weight[c])
        dweight[c] = r * sdyx
        bc, kc = grad_coefficients(r, w * sdy, w * sdyx, n, input_stats, True)
        a[c] = rstd[c] * weight[c]
        b[c] = bc
        k[c] = kc


@entry(parallel=True)
def bn_rows_forward_train(x, weight, bias, eps, blocks, y, shift, shifted_mean, var, rstd):
    """Batch norm of x (N, C) with the batch's statistics: parallel partial sums, merge, parallel write of y."""
    n, c_ = x.shape
    shift64 = np.empty(c_)
    _copy_row(x, shift, shift64)
    s1 = np.empty((blocks, c_))
    s2 = np.empty((blocks, c_))
    for k in prange(blocks):
        lo, hi = _block_rows(n, blocks, k)
        _rows_shifted_sums(x, lo, hi, shift64, s1[k], s2[k])
    scale = np.empty_like(rstd)
    _merge_stats(s1, s2, n, eps, weight, shifted_mean, var, rstd, scale)
    for k in prange(blocks):
        lo, hi = _block_rows(n, blocks, k)
        _rows_normalize(x, y, lo, hi, shift, shifted_mean, scale, bias)


@entry(parallel=True)
def bn_rows_forward_given(x, weight, bias, blocks, y, shift, shifted_mean, rstd):
    """Batch norm of x (N, C) with given statistics (eval): y only."""
    scale = np.empty_like(rstd)
    _product(rstd, weight, scale)
    for k in prange(blocks):
        lo, hi = _block_rows(x.shape[0], blocks, k)
        _rows_normalize(x, y, lo, hi, shift, shifted_mean, scale, bias)


@entry(parallel=True)
def bn_rows_backward(
    dy, x, shift, shifted_mean, rstd, weight, input_stats, blocks, dx, dweight, dbias
):
    """Batch norm backward for x (N, C): parallel partial Σdy, Σdy·x_c; merge into coefficients; write dx."""
    n, c_ = x.shape
    sg = np.empty((blocks, c_))
    sgx = np.empty((blocks, c_))
    for k in prange(blocks):
        lo, hi = _block_rows(n, blocks, k)
        _rows_grad_sums(dy, x, lo, hi, shift, shifted_mean, sg[k], sgx[k])
    a = np.empty_like(rstd)
    b = np.empty_like(rstd)
    kk = np.empty_like(rstd)
    _merge_grads(sg, sgx, n, rstd, weight, input_stats, dweight, dbias, a, b, kk)
    for k in prange(blocks):
        lo, hi = _block_rows(n, blocks, k)
        _rows_input_grad(dy, x, dx, lo, hi, shift, shifted_mean, a, b, kk)


# ----------------------------------------------------------------------------------- layer / RMS norm, rows
@entry(parallel=True)
def rows_forward(x, weight, bias, eps, center, y, shift, shifted_mean, var, rstd):
    """Layer norm (center=True) or RMS norm of each row of x (R, D); weight/bias per column; parallel over R.

    A row is read twice back to back (stats, then y), the second time from L1/L2.
    """
    r_, d_ = x.shape
    for r in prange(r_):
        row = x[r]
        sh = (
            row[0] if center else row[0] - row[0]
        )  # RMS norm: no shift (its statistic is not a variance)
        s1, s2 = shifted_sums(row, np.float64(sh))
        dm, v = finish_stats(s1, s2, d_, center)
        shift[r] = sh
        shifted_mean[r] = dm
        var[r] = v
        rstd[r] = inverse_std(v, eps)
        out = y[r]
        rs = rstd[r]
        dmr = shifted_mean[r]
        for j in range(d_):
            out[j] = ((row[j] - sh) - dmr) * rs * weight[j] + bias[j]


@entry(parallel=True)
def rows_backward(dy, x, shift, shifted_mean, rstd, weight, center, blocks, dx, dweight, dbias):
    """Layer/RMS norm backward over rows of x (R, D); parallel over blocks of rows.

    Per row: Σ g and Σ g·x_c (g = weight * dy) give the row's coefficients, then dx.  dweight/dbias (float64,
    (D,)) are column sums over all rows, so each block adds into its own row of a (blocks, D) partial sum,
    merged at the end.
    """
    d_ = x.shape[1]
    pw = np.empty((blocks, d_))
    pb = np.empty((blocks, d_))
    for k in prange(blocks):
        lo, hi = _block_rows(x.shape[0], blocks, k)
        _rows_backward_block(
            dy, x, dx, lo, hi, shift, shifted_mean, rstd, weight, center, pw[k], pb[k]
        )
    _sum_blocks(pw, dweight)
    _sum_blocks(pb, dbias)


@helper(fastmath=REDUCE)
def _row_grad_sums(dy, x, shift, shifted_mean, weight):
    """(Σ weight·dy, Σ weight·dy·x_c) over one row: products and 64-term partial sums in x's dtype (SIMD
    lanes), the partial sums accumulated in float64."""
    sg = 0.0
    sgx = 0.0
    n = x.shape[0]
    i = 0
    while i + 64 <= n:
        a = x.dtype.type(0.0)
        b = x.dtype.type(0.0)
        for j in range(i, i + 64):
            g = weight[j] * dy[j]
            a += g
            b += g * ((x[j] - shift) - shifted_mean)
        sg += np.float64(a)
        sgx += np.float64(b)
        i += 64
    for j in range(i, n):
        g = np.float64(weight[j]) * np.float64(dy[j])
        sg += g
        sgx += g * np.float64((x[j] - shift) - shifted_mean)
    return sg, sgx


@helper()
def _row_coefficients(dy, x, shift, shifted_mean, rstd, weight, center):
    """(b, k) of dx = rstd·weight·dy + b·x_c + k for one row, in x's dtype."""
    sg, sgx = _row_grad_sums(dy, x, shift, shifted_mean, weight)
    b, k = grad_coefficients(np.float64(rstd), sg, sgx, x.shape[0], True, center)
    return x.dtype.type(b), x.dtype.type(k)


@helper()
def _rows_backward_block(dy, x, dx, lo, hi, shift, shifted_mean, rstd, weight, center, pw, pb):
    """dx for rows lo..hi, and their parts of dweight (Σ dy·x̂) and dbias (Σ dy) added into pw, pb.

    Four rows share one sweep over the columns, so pw and pb are loaded, converted and stored once per four
    rows (the sweep is bound by that float64 work otherwise).
    """
    pw[:] = 0.0
    pb[:] = 0.0
    i = lo
    while i + 4 <= hi:
        b0, k0 = _row_coefficients(dy[i], x[i], shift[i], shifted_mean[i], rstd[i], weight, center)
        b1, k1 = _row_coefficients(
            dy[i + 1], x[i + 1], shift[i + 1], shifted_mean[i + 1], rstd[i + 1], weight, center
        )
        b2, k2 = _row_coefficients(
            dy[i + 2], x[i + 2], shift[i + 2], shifted_mean[i + 2], rstd[i + 2], weight, center
        )
        b3, k3 = _row_coefficients(
            dy[i + 3], x[i + 3], shift[i + 3], shifted_mean[i + 3], rstd[i + 3], weight, center
        )
        r0, r1, r2, r3 = rstd[i], rstd[i + 1], rstd[i + 2], rstd[i + 3]
        for j in range(x.shape[1]):
            w = weight[j]
            g0, g1, g2, g3 = dy[i, j], dy[i + 1, j], dy[i + 2, j], dy[i + 3, j]
            x0 = (x[i, j] - shift[i]) - shifted_mean[i]
            x1 = (x[i + 1, j] - shift[i + 1]) - shifted_mean[i + 1]
            x2 = (x[i + 2, j] - shift[i + 2]) - shifted_mean[i + 2]
            x3 = (x[i + 3, j] - shift[i + 3]) - shifted_mean[i + 3]
            dx[i, j] = r0 * w * g0 + b0 * x0 + k0
            dx[i + 1, j] = r1 * w * g1 + b1 * x1 + k1
            dx[i + 2, j] = r2 * w * g2 + b2 * x2 + k2
            dx[i + 3, j] = r3 * w * g3 + b3 * x3 + k3
            # the four rows' terms are added in x's dtype, their sum in float64
            pw[j] += np.float64(
                (g0 * (x0 * r0) + g1 * (x1 * r1)) + (g2 * (x2 * r2) + g3 * (x3 * r3))
            )
            pb[j] += np.float64((g0 + g1) + (g2 + g3))
        i += 4
    for r in range(i, hi):
        b, k = _row_coefficients(dy[r], x[r], shift[r], shifted_mean[r], rstd[r], weight, center)
        for j in range(x.shape[1]):
            xc = (x[r, j] - shift[r]) - shifted_mean[r]
            dx[r, j] = rstd[r] * weight[j] * dy[r, j] + b * xc + k
            pw[j] += np.float64(dy[r, j] * (xc * rstd[r]))
            pb[j] += np.float64(dy[r, j])


# ----------------------------------------------------------------------------------- group / instance norm
# x is viewed as (N*G, Cg*S): each row is one (sample, group) statistic over Cg channels of S positions each;
# the channel of segment j of row r is (r % G) * Cg + j.  Instance norm is the case Cg = 1.


@entry(parallel=True)
def groups_forward(x, groups, s_, weight, bias, eps, y, shift, shifted_mean, var, rstd):
    """Group norm forward: per (sample, group) row, stats over its Cg*S values, then y per channel."""
    r_, m = x.shape
    cg = m // s_
    for r in prange(r_):
        row = x[r]
        sh = row[0]
        s1, s2 = shifted_sums(row, np.float64(sh))
        dm, v = finish_stats(s1, s2, m, True)
        shift[r] = sh
        shifted_mean[r] = dm
        var[r] = v
        rstd[r] = inverse_std(v, eps)
        c0 = (r % groups) * cg
        for j in range(cg):
            seg = slice(j * s_, (j + 1) * s_)
            normalize(
                row[seg], y[r, seg], sh, shifted_mean[r], rstd[r] * weight[c0 + j], bias[c0 + j]
            )


@entry(parallel=True)
def groups_backward(dy, x, groups, s_, shift, shifted_mean, rstd, weight, dx, dweight, dbias):
    """Group norm backward: per row, Σdy and Σdy·x_c per channel segment, then dx; parallel over rows.

    The per-segment sums are kept in (N*G, Cg) arrays and summed over the samples afterwards into the
    parameter gradients dweight[c] = Σ_n r Σ dy x_c and dbias[c] = Σ_n Σ dy (float64, (C,)).
    """
    r_, m = x.shape
    cg = m // s_
    sdy = np.empty((r_, cg))
    sdyx = np.empty((r_, cg))
    for r in prange(r_):
        c0 = (r % groups) * cg
        sg = 0.0
        sgx = 0.0
        for j in range(cg):
            seg = slice(j * s_, (j + 1) * s_)
            a1, a2 = grad_sums(dy[r, seg], x[r, seg], shift[r], shifted_mean[r])
            sdy[r, j] = a1
            sdyx[r, j] = a2
            w = np.float64(weight[c0 + j])
            sg += w * a1
            sgx += w * a2
        b, k = grad_coefficients(np.float64(rstd[r]), sg, sgx, m, True, True)
        bt = x.dtype.type(b)
        kt = x.dtype.type(k)
        for j in range(cg):
            seg = slice(j * s_, (j + 1) * s_)
            a = rstd[r] * weight[c0 + j]
            input_grad(dy[r, seg], x[r, seg], dx[r, seg], shift[r], shifted_mean[r], a, bt, kt)
    _group_param_grads(sdy, sdyx, rstd, groups, dweight, dbias)


@helper()
def _group_param_grads(sdy, sdyx, rstd, groups, dweight, dbias):
    """dweight[c] = Σ_n rstd[n, g] Σ dy x_c and dbias[c] = Σ_n Σ dy, from the per-(row, segment) sums."""
    cg = sdy.shape[1]
    dweight[:] = 0.0
    dbias[:] = 0.0
    for r in range(sdy.shape[0]):
        c0 = (r % groups) * cg
        for j in range(cg):
            dweight[c0 + j] += np.float64(rstd[r]) * sdyx[r, j]
            dbias[c0 + j] += sdy[r, j]

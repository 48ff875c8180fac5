r"""The numba loops behind :mod:`normlab.kernels.layers`: im2col/col2im, pooling, elementwise activations.

**Convolution layout.**  The reference (:mod:`normlab.functional.conv`) forms ``cols`` with one row per output
position, (N·OH·OW, C·KH·KW).  The fast path forms its transpose, one row per kernel entry k = (c, i, j) and
one column per output position (n, p, q):

.. math::

    \mathrm{cols}^\top[k,\ (n, p, q)] = x_{\text{pad}}[n,\ c,\ p\,s_h + i\,d_h,\ q\,s_w + j\,d_w]

so that :func:`im2col` writes each row as one contiguous stream (a thread per block of rows) and
:func:`col2im` reads each row as one stream.  The three matrix products stay single BLAS calls on it
(see :mod:`normlab.kernels.layers`).  Padding is never materialized: positions outside the input read as 0
(im2col) or are dropped (col2im).

Every loop here is plain IEEE arithmetic (no fastmath); the parallel loops are over independent output
blocks, so results do not depend on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from normlab.kernels._compile import entry, helper


@helper()
def _valid_range(size, out_size, stride, offset):
    """The output indices q in [lo, hi) whose input index q·stride + offset lies in [0, size)."""
    lo = 0 if offset >= 0 else (-offset + stride - 1) // stride
    last = size - 1 - offset  # the largest q·stride allowed
    hi = 0 if last < 0 else min(out_size, last // stride + 1)
    return min(lo, hi), hi


@helper()
def _blocks_of(total, blocks, b):
    """Items [lo, hi) of block b when ``total`` items are cut into ``blocks`` nearly equal blocks."""
    step = (total + blocks - 1) // blocks
    return min(total, b * step), min(total, (b + 1) * step)


# ----------------------------------------------------------------------------------- convolution
@entry(parallel=True)
def im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, blocks, cols):
    """cols (C·KH·KW, N, OH·OW) from x (N, C, H, W): row k = (c, i, j) holds x[n, c, p·sh + i·dh - ph,
    q·sw + j·dw - pw] at column (n, p·OW + q), 0 where that lies in the padding.

    Parallel over (row, block of samples) tasks: each task writes one contiguous stretch of its row.
    """
    n_, c_, h, w = x.shape
    rows = c_ * kh * kw
    for task in prange(rows * blocks):
        k = task // blocks
        lo, hi = _blocks_of(n_, blocks, task % blocks)
        c = k // (kh * kw)
        i = (k // kw) % kh
        j = k % kw
        q_lo, q_hi = _valid_range(w, ow, sw, j * dw - pw)
        for n in range(lo, hi):
            out = cols[k, n]
            for p in range(oh):
                r = p * sh + i * dh - ph
                base = p * ow
                if r < 0 or r >= h:
                    for q in range(ow):
                        out[base + q] = 0
                    continue
                src = x[n, c, r]
                for q in range(q_lo):
                    out[base + q] = 0
                start = q_lo * sw + j * dw - pw
                for q in range(q_lo, q_hi):
                    out[base + q] = src[start + (q - q_lo) * sw]
                for q in range(q_hi, ow):
                    out[base + q] = 0


@entry(parallel=True)
def col2im(dcols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, blocks, dx):
    """dx (N, C, H, W) = the sum, over every kernel entry (c, i, j) and output position, of dcols's value at
    that (row, column) added onto the input position im2col read it from (the adjoint of :func:`im2col`).

    Parallel over (channel, block of samples) tasks, which own disjoint parts of dx.  Within a task the kernel
    offsets (i, j) are the outer loop, as in the reference's col2im, so every input position accumulates its
    terms in the same order.  dx must be zeroed by the caller.
    """
    n_, c_, h, w = dx.shape
    for task in prange(c_ * blocks):
        c = task // blocks
        lo, hi = _blocks_of(n_, blocks, task % blocks)
        for i in range(kh):
            for j in range(kw):
                k = (c * kh + i) * kw + j
                q_lo, q_hi = _valid_range(w, ow, sw, j * dw - pw)
                start = q_lo * sw + j * dw - pw
                for n in range(lo, hi):
                    src = dcols[k, n]
                    for p in range(oh):
                        r = p * sh + i * dh - ph
                        if r < 0 or r >= h:
                            continue
                        out = dx[n, c, r]
                        base = p * ow
                        for q in range(q_lo, q_hi):
                            out[start + (q - q_lo) * sw] += src[base + q]


@entry(parallel=True)
def channels_first(rows, bias, blocks, y):
    """y[n, o, l] = rows[o, n, l] + bias[o]: the product W·colsᵀ (OC, N, L) laid out as (N, OC, L), plus the
    bias.  Parallel over (output channel, block of samples)."""
    n_, oc, l_ = y.shape
    for task in prange(oc * blocks):
        o = task // blocks
        lo, hi = _blocks_of(n_, blocks, task % blocks)
        b = bias[o]
        for n in range(lo, hi):
            src = rows[o, n]
            out = y[n, o]
            for t in range(l_):
                out[t] = src[t] + b


@entry(parallel=True)
def channels_outer(dy, g, dbias):
    """g[o, n, l] = dy[n, o, l] (the output gradient as the (OC, N·L) matrix of the weight-gradient product),
    and dbias[o] = Σ_{n, l} dy[n, o, l] accumulated in float64.  Parallel over output channels."""
    n_, oc, l_ = dy.shape
    for o in prange(oc):
        total = 0.0
        for n in range(n_):
            src = dy[n, o]
            out = g[o, n]
            part = 0.0
            for t in range(l_):
                out[t] = src[t]
                part += src[t]
            total += part
        dbias[o] = total


# ----------------------------------------------------------------------------------- pooling
@helper(inline="always")
def _better(v, best, k):
    """Whether value v at window offset k replaces the best so far: the first value starts the search; a
    later one wins if larger, or if it is the first NaN (a NaN best is never replaced).  A bitwise
    expression, so the caller compiles to selects instead of branches (twice as fast)."""
    return (k == 0) | (v > best) | ((v != v) & (best == best))


@entry(parallel=True)
def max_pool_forward(x, kh, kw, sh, sw, ph, pw, y, argmax):
    """Per plane of x (P, H, W): y[t, p, q] = the maximum of window (p, q) and argmax[t, p, q] its offset
    i·KW + j in row-major window order.

    As the reference (NumPy's ``argmax`` over the window): the first maximum wins a tie, a NaN wins over any
    number (the first NaN), and padding positions count as -inf.  Without padding every window lies inside
    the plane and is read without bounds checks.  Parallel over planes.
    """
    planes, h, w = x.shape
    oh, ow = y.shape[1:]
    neg_inf = x.dtype.type(-np.inf)
    padded = ph > 0 or pw > 0
    for t in prange(planes):
        plane = x[t]
        out = y[t]
        arg = argmax[t]
        for p in range(oh):
            for q in range(ow):
                best = neg_inf
                best_k = np.int32(0)
                for i in range(kh):
                    r = p * sh + i - ph
                    rc = min(max(r, 0), h - 1)  # clamped: always a valid read
                    for j in range(kw):
                        col = q * sw + j - pw
                        if padded:
                            v = plane[rc, min(max(col, 0), w - 1)]
                            v = v if (0 <= r < h) & (0 <= col < w) else neg_inf
                        else:
                            v = plane[r, col]
                        k = np.int32(i * kw + j)
                        take = _better(v, best, k)
                        best = v if take else best
                        best_k = k if take else best_k
                out[p, q] = best
                arg[p, q] = best_k


@entry(parallel=True)
def max_pool_backward(dy, argmax, kh, kw, sh, sw, ph, pw, dx):
    """dx (P, H, W), zeroed by the caller: each window's gradient added to the position of its maximum
    (dropped if that was padding).  Parallel over planes.

    Windows that do not overlap (stride >= kernel, the usual pooling) send at most one gradient to each
    position: one pass.  Overlapping windows: one sweep per kernel offset, outermost as in the reference's
    col2im, so a position adds its gradients in the reference's order.
    """
    planes, h, w = dx.shape
    oh, ow = dy.shape[1:]
    disjoint = sh >= kh and sw >= kw
    for t in prange(planes):
        out = dx[t]
        grad = dy[t]
        arg = argmax[t]
        if disjoint:
            for p in range(oh):
                for q in range(ow):
                    k = arg[p, q]
                    r = p * sh + k // kw - ph
                    col = q * sw + k % kw - pw
                    if 0 <= r < h and 0 <= col < w:
                        out[r, col] += grad[p, q]
            continue
        for i in range(kh):
            for j in range(kw):
                k = i * kw + j
                for p in range(oh):
                    r = p * sh + i - ph
                    if r < 0 or r >= h:
                        continue
                    for q in range(ow):
                        col = q * sw + j - pw
                        if arg[p, q] == k and 0 <= col < w:
                            out[r, col] += grad[p, q]


@entry(parallel=True)
def avg_pool_forward(x, kh, kw, sh, sw, ph, pw, divisor, y):
    """y[t, p, q] = (Σ window) / divisor[p, q] per plane of x (P, H, W), padding counted as 0.

    Summed as NumPy sums the reference's strided window view: each window row left to right, then the row
    sums top to bottom (so the results agree bit for bit for windows narrower than 8).
    """
    planes, h, w = x.shape
    oh, ow = y.shape[1:]
    zero = x.dtype.type(0)
    for t in prange(planes):
        plane = x[t]
        for p in range(oh):
            for q in range(ow):
                total = zero
                for i in range(kh):
                    r = p * sh + i - ph
                    row = zero
                    for j in range(kw):
                        col = q * sw + j - pw
                        if 0 <= r < h and 0 <= col < w:
                            row += plane[r, col]
                        else:
                            row += zero  # zero padding, as the reference
                    total += row
                y[t, p, q] = total / divisor[p, q]


@entry(parallel=True)
def avg_pool_backward(dy, divisor, kh, kw, sh, sw, ph, pw, dx):
    """dx (P, H, W), zeroed by the caller: every value of window (p, q) receives dy[t, p, q] / divisor[p, q].

    Kernel offsets are the outer loop, as in the reference's col2im, so overlapping windows add up in the
    same order.  Parallel over planes.
    """
    planes, h, w = dx.shape
    oh, ow = dy.shape[1:]
    for t in prange(planes):
        out = dx[t]
        for i in range(kh):
            for j in range(kw):
                for p in range(oh):
                    r = p * sh + i - ph
                    if r < 0 or r >= h:
                        continue
                    for q in range(ow):
                        col = q * sw + j - pw
                        if 0 <= col < w:
                            out[r, col] += dy[t, p, q] / divisor[p, q]


# ----------------------------------------------------------------------------------- activations
# Elementwise over flat contiguous arrays, split into one block per thread.


@entry(parallel=True)
def relu_forward(x, blocks, y):
    """y = max(x, 0), NaN kept (as ``np.maximum``)."""
    for b in prange(blocks):
        lo, hi = _blocks_of(x.size, blocks, b)
        for t in range(lo, hi):
            v = x[t]
            y[t] = v if (v > 0 or v != v) else x.dtype.type(0)  # as np.maximum: NaN kept, -0.0 -> 0


@entry(parallel=True)
def relu_backward(dy, saved, blocks, dx):
    """dx = dy where the forward's input (or output) was > 0, else 0."""
    for b in prange(blocks):
        lo, hi = _blocks_of(dy.size, blocks, b)
        for t in range(lo, hi):
            dx[t] = dy[t] if saved[t] > 0 else dy.dtype.type(0)


@entry(parallel=True)
def sigmoid_forward(x, blocks, y):
    """y = sigmoid(x), computed in x's dtype."""
    one = x.dtype.type(1)
    for b in prange(blocks):
        lo, hi = _blocks_of(x.size, blocks, b)
        for t in range(lo, hi):
            v = x[t]
            e = np.exp(-np.abs(v))
            y[t] = one / (one + e) if v >= 0 else e / (one + e)


@entry(parallel=True)
def sigmoid_backward(dy, s, blocks, dx):
    """dx = dy·s·(1 - s) from the forward's output s (evaluated as the reference: (dy·s)·(1 - s))."""
    one = s.dtype.type(1)
    for b in prange(blocks):
        lo, hi = _blocks_of(dy.size, blocks, b)
        for t in range(lo, hi):
            dx[t] = dy[t] * s[t] * (one - s[t])


@entry(parallel=True)
def relu_inplace(y, blocks):
    """y = max(y, 0) in place (the fused batch norm + ReLU)."""
    for b in prange(blocks):
        lo, hi = _blocks_of(y.size, blocks, b)
        for t in range(lo, hi):
            v = y[t]
            if not (v > 0 or v != v):
                y[t] = 0


@entry(parallel=True)
def sigmoid_inplace(y, blocks):
    """y = sigmoid(y) in place (the fused batch norm + sigmoid)."""
    one = y.dtype.type(1)
    for b in prange(blocks):
        lo, hi = _blocks_of(y.size, blocks, b)
        for t in range(lo, hi):
            v = y[t]
            e = np.exp(-np.abs(v))
            y[t] = one / (one + e) if v >= 0 else e / (one + e)

"""The numba-cuda kernels, built on first use for one compute dtype and one block shape.

Nothing here imports ``numba.cuda`` at module import: :func:`kernels` does, so that ``import normlab`` works
on machines without CUDA.  Every kernel is written once and compiled per (compute dtype, block shape): the
block shape sizes the shared-memory reduction buffers, which CUDA needs as compile-time constants, so it is
a closure constant of the factory.

Conventions of every kernel below:

* ``CT`` is the compute type (float32 for float16/bfloat16/float32 input, float64 for float64 input);
  elementwise arithmetic runs in it, and the input's dtype is converted to it on load (``CT(x[i])``) and
  back on store (the array's own dtype);
* sums are accumulated in float64 (``ACC``): per thread, then across the block by a shared-memory tree, then
  across blocks by the finalize step.  The kernels are memory bound, so the wider adds cost no time on a
  GPU with fast float64 (H100/H200) and keep the statistics within float64 rounding of the reference's;
* every sum is *shifted*: ``x - shift`` with ``shift`` one sample of the same statistic (the first, as the
  reference takes), so a channel with mean 1e4 and standard deviation 1 sums values of size 1, not 1e4;
* loops are grid-stride or block-stride, so any shape works with any grid (shapes need not divide the
  block size).
"""

from __future__ import annotations

import functools
import math
from types import ModuleType, SimpleNamespace

# ``numba.cuda``, bound by :func:`kernels` on first use.  It must be a module global (not a local of the
# factory): numba-cuda's simulator finds the ``cuda`` the kernels use among their globals and swaps it for
# its own emulation of the device module.
cuda: ModuleType | None = None


@functools.cache
def kernels(compute: str, threads: int, tile_x: int, tile_y: int) -> SimpleNamespace:
    """The kernels for compute dtype ``compute`` ("float32" or "float64"), ``threads`` threads per 1-D
    block (a power of two) and ``(tile_x, tile_y)`` 2-D blocks (``tile_y`` a power of two)."""
    global cuda
    from numba import cuda, float32, float64  # binds the module global, see above

    for name, value in (("threads", threads), ("tile_y", tile_y)):
        if value < 1 or value & (value - 1):
            raise ValueError(f"normlab.kernels.cuda: {name} must be a power of two, got {value}")
    CT = float32 if compute == "float32" else float64
    ACC = float64
    T = threads
    TX, TY = tile_x, tile_y

    @cuda.jit(device=True)
    def _inverse_std(denom):
        """1 / sqrt(var + eps), with the reference's rule: 0 where it is exactly 0 (a constant input with
        eps = 0 gives the bias), NaN where it is not a finite positive number (NaN or inf statistics make
        their whole group NaN)."""
        if denom == 0:
            return 0.0
        if denom > 0 and denom < math.inf:
            return 1.0 / math.sqrt(denom)
        return math.nan

    # ------------------------------------------------------------------------------------- block reductions
    @cuda.jit(device=True)
    def block_sum2(sh_a, sh_b, a, b):
        """Sum ``a`` and ``b`` over the threads of a 1-D block; every thread gets both sums."""
        t = cuda.threadIdx.x
        sh_a[t] = a
        sh_b[t] = b
        cuda.syncthreads()
        step = T // 2
        while step > 0:
            if t < step:
                sh_a[t] += sh_a[t + step]
                sh_b[t] += sh_b[t + step]
            cuda.syncthreads()
            step //= 2
        ra = sh_a[0]
        rb = sh_b[0]
        cuda.syncthreads()  # nobody may overwrite sh_a/sh_b until all have read the sums
        return ra, rb

    @cuda.jit(device=True)
    def column_sum2(sh_a, sh_b, a, b):
        """Sum ``a`` and ``b`` over threadIdx.y of a 2-D block (one column per threadIdx.x); result in row 0."""
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        sh_a[ty, tx] = a
        sh_b[ty, tx] = b
        cuda.syncthreads()
        step = TY // 2
        while step > 0:
            if ty < step:
                sh_a[ty, tx] += sh_a[ty + step, tx]
                sh_b[ty, tx] += sh_b[ty + step, tx]
            cuda.syncthreads()
            step //= 2
        return sh_a[0, tx], sh_b[0, tx]

    # ------------------------------------------------------------------------------------- batch norm, NCHW
    # x is viewed as (N, C, S); a channel's N*S values are N runs of S.  Grid (C, P): block (c, p) sums
    # the p-th of P equal slices of the channel's flattened N*S values.
    @cuda.jit
    def planes_partial(x, dy, shift, backward, out_a, out_b):
        """Per (channel, slice): forward Σd, Σd²; backward Σdy, Σdy·d; with d = x - shift[c]."""
        sh_a = cuda.shared.array(T, ACC)
        sh_b = cuda.shared.array(T, ACC)
        c = cuda.blockIdx.x
        p = cuda.blockIdx.y
        n_slices = cuda.gridDim.y
        s_len = x.shape[2]
        total = x.shape[0] * s_len
        chunk = (total + n_slices - 1) // n_slices
        start = p * chunk
        stop = min(total, start + chunk)
        sft = shift[c]
        a = ACC(0.0)
        b = ACC(0.0)
        # (n, s) of flat index j, stepped along with j: one integer division per thread, not per value
        j = start + cuda.threadIdx.x
        n = j // s_len
        s = j - n * s_len
        step_n = T // s_len
        step_s = T - step_n * s_len
        while j < stop:
            d = ACC(CT(x[n, c, s]) - sft)
            if backward:
                g = ACC(CT(dy[n, c, s]))
                a += g
                b += g * d
            else:
                a += d
                b += d * d
            j += T
            n += step_n
            s += step_s
            if s >= s_len:
                s -= s_len
                n += 1
        ra, rb = block_sum2(sh_a, sh_b, a, b)
        if cuda.threadIdx.x == 0:
            out_a[c, p] = ra
            out_b[c, p] = rb

    # ------------------------------------------------------------------------------------- batch norm, rows
    # x is viewed as (M, C): channels-last (M = N*H*W) or BatchNorm1d (M = N).  Block (TX, TY) covers TX
    # adjacent channels (coalesced loads along a row) and strides over the rows of its slice with TY threads.
    @cuda.jit
    def rows_partial(x, dy, shift, backward, out_a, out_b):
        """Per (channel, row slice): forward Σd, Σd²; backward Σdy, Σdy·d; with d = x - shift[c]."""
        sh_a = cuda.shared.array((TY, TX), ACC)
        sh_b = cuda.shared.array((TY, TX), ACC)
        c = cuda.blockIdx.x * TX + cuda.threadIdx.x
        p = cuda.blockIdx.y
        n_slices = cuda.gridDim.y
        m_len = x.shape[0]
        chunk = (m_len + n_slices - 1) // n_slices
        start = p * chunk
        stop = min(m_len, start + chunk)
        a = ACC(0.0)
        b = ACC(0.0)
        if c < x.shape[1]:
            sft = shift[c]
            m = start + cuda.threadIdx.y
            while m < stop:
                d = ACC(CT(x[m, c]) - sft)
                if backward:
                    g = ACC(CT(dy[m, c]))
                    a += g
                    b += g * d
                else:
                    a += d
                    b += d * d
                m += TY
        ra, rb = column_sum2(sh_a, sh_b, a, b)
        if cuda.threadIdx.y == 0 and c < x.shape[1]:
            out_a[c, p] = ra
            out_b[c, p] = rb

    # ------------------------------------------------------------------------------------- batch norm, finalize
    @cuda.jit
    def bn_finalize_forward(
        part_a, part_b, count, eps, weight, bias, dmean, var, rstd, scale, offset
    ):
        """One thread per channel: the statistics from the slices' sums, and γ/β folded into one scale and
        one offset so that ``y = (x - shift) * scale + offset``."""
        c = cuda.grid(1)
        if c >= part_a.shape[0]:
            return
        a = ACC(0.0)
        b = ACC(0.0)
        for p in range(part_a.shape[1]):
            a += part_a[c, p]
            b += part_b[c, p]
        dm = a / count
        v = max(b / count - dm * dm, 0.0)
        denom = v + eps
        r = _inverse_std(denom)
        dmean[c] = dm
        var[c] = v
        rstd[c] = r
        sc = ACC(weight[c]) * r
        scale[c] = sc
        offset[c] = ACC(bias[c]) - dm * sc

    @cuda.jit
    def bn_finalize_given(running_var, eps, weight, bias, rstd, scale, offset):
        """Eval mode: one thread per channel; the shift is the running mean, so the shifted mean is 0."""
        c = cuda.grid(1)
        if c >= running_var.shape[0]:
            return
        denom = ACC(running_var[c]) + eps
        r = _inverse_std(denom)
        rstd[c] = r
        scale[c] = ACC(weight[c]) * r
        offset[c] = bias[c]

    @cuda.jit
    def bn_finalize_backward(
        part_a, part_b, count, dmean, rstd, weight, input_stats, dweight, dbias, k_dy, k_d, k_0
    ):
        """One thread per channel: dβ = Σdy, dγ = Σdy·x̂, and the three coefficients of
        ``dx = k_dy * dy + k_d * (x - shift) + k_0``.

        With g = γ dy, x̂ = (d - dmean) rstd and means over the channel's n values,
        dx = rstd (g - <g> - x̂ <g x̂>) (batch statistics) or rstd g (running statistics).
        """
        c = cuda.grid(1)
        if c >= part_a.shape[0]:
            return
        sum_dy = ACC(0.0)
        sum_dy_d = ACC(0.0)
        for p in range(part_a.shape[1]):
            sum_dy += part_a[c, p]
            sum_dy_d += part_b[c, p]
        r = ACC(rstd[c])
        dm = ACC(dmean[c])
        w = ACC(weight[c])
        sum_dy_xhat = r * (sum_dy_d - dm * sum_dy)
        dbias[c] = sum_dy
        dweight[c] = sum_dy_xhat
        k1 = r * w
        if input_stats:
            k2 = -k1 * r * sum_dy_xhat / count
            k_dy[c] = k1
            k_d[c] = k2
            k_0[c] = -k1 * sum_dy / count - k2 * dm
        else:
            k_dy[c] = k1
            k_d[c] = 0.0
            k_0[c] = 0.0

    # ------------------------------------------------------------------------------------- batch norm, apply
    # x is viewed as (outer, inner): the (N*C, S) planes of NCHW, channel o % C for plane o, or the (M, C)
    # rows of channels-last / BatchNorm1d, channel j for column j.  Blocks take outer indices (grid-stride),
    # threads the inner ones: the channel is known without dividing per value (a 64-bit division costs more
    # than the value's memory traffic at H200 bandwidth).
    @cuda.jit
    def bn_apply_forward(x, shift, scale, offset, channels, planes, y):
        """Elementwise: ``y = (x - shift[c]) * scale[c] + offset[c]``."""
        o = cuda.blockIdx.x
        while o < x.shape[0]:
            plane_c = o % channels
            j = cuda.threadIdx.x
            while j < x.shape[1]:
                c = plane_c if planes else j
                y[o, j] = (CT(x[o, j]) - shift[c]) * scale[c] + offset[c]
                j += T
            o += cuda.gridDim.x

    @cuda.jit
    def bn_apply_backward(x, dy, shift, k_dy, k_d, k_0, channels, planes, dx):
        """Elementwise: ``dx = k_dy[c] dy + k_d[c] (x - shift[c]) + k_0[c]``."""
        o = cuda.blockIdx.x
        while o < x.shape[0]:
            plane_c = o % channels
            j = cuda.threadIdx.x
            while j < x.shape[1]:
                c = plane_c if planes else j
                dx[o, j] = k_dy[c] * CT(dy[o, j]) + k_d[c] * (CT(x[o, j]) - shift[c]) + k_0[c]
                j += T
            o += cuda.gridDim.x

    # ------------------------------------------------------------------------------------- per-row norms
    # Layer/RMS norm: x viewed as (R, D), one statistic per row, affine index j.  Group/instance norm: x viewed
    # as (N*G, C/G*S), one statistic per row, affine index (r % G) * C/G + j // S (LN is G = 1, S = 1).
    # One block per row (grid-stride over rows when there are more rows than blocks).
    @cuda.jit
    def row_forward(x, groups, s_len, weight, bias, eps, center, y, shift, dmean, var, rstd):
        sh_a = cuda.shared.array(T, ACC)
        sh_b = cuda.shared.array(T, ACC)
        d_len = x.shape[1]
        per_group = d_len // s_len
        r = cuda.blockIdx.x
        while r < x.shape[0]:
            sft = CT(x[r, 0]) if center else CT(0.0)
            a = ACC(0.0)
            b = ACC(0.0)
            j = cuda.threadIdx.x
            while j < d_len:
                d = ACC(CT(x[r, j]) - sft)
                a += d
                b += d * d
                j += T
            sa, sb = block_sum2(sh_a, sh_b, a, b)
            dm = sa / d_len if center else 0.0
            v = max(sb / d_len - dm * dm, 0.0)
            denom = v + eps
            rs = _inverse_std(denom)
            if cuda.threadIdx.x == 0:
                shift[r] = sft
                dmean[r] = dm
                var[r] = v
                rstd[r] = rs
            dm_c = CT(dm)
            rs_c = CT(rs)
            base = (r % groups) * per_group
            # affine index k = base + j // s_len without a division per value: k = j for layer/RMS norm
            # rows (s_len == 1, base == 0), else segment by segment
            if s_len == 1:
                j = cuda.threadIdx.x
                while j < d_len:
                    xhat = ((CT(x[r, j]) - sft) - dm_c) * rs_c
                    y[r, j] = xhat * weight[j] + bias[j]
                    j += T
            else:
                for seg in range(per_group):
                    w_k = weight[base + seg]
                    b_k = bias[base + seg]
                    j = seg * s_len + cuda.threadIdx.x
                    while j < (seg + 1) * s_len:
                        xhat = ((CT(x[r, j]) - sft) - dm_c) * rs_c
                        y[r, j] = xhat * w_k + b_k
                        j += T
            r += cuda.gridDim.x

    @cuda.jit
    def row_backward(
        x, dy, groups, s_len, weight, shift, dmean, rstd, center, dx, seg_dy, seg_dy_d
    ):
        """dx of one row per block.  With ``seg_dy`` of shape (R, C/G) (group layout) also writes, per row and
        channel segment, Σdy and Σdy·d over the segment's S values (the parameter gradients' partial sums)."""
        sh_a = cuda.shared.array(T, ACC)
        sh_b = cuda.shared.array(T, ACC)
        d_len = x.shape[1]
        per_group = d_len // s_len
        segments = seg_dy.shape[1] > 0
        r = cuda.blockIdx.x
        while r < x.shape[0]:
            sft = shift[r]
            base = (r % groups) * per_group
            # a = Σ g, b = Σ g d with g = γ dy, d = x - shift
            a = ACC(0.0)
            b = ACC(0.0)
            if segments:  # one block reduction per channel segment; they also give the row's sums
                for k in range(per_group):
                    ka = ACC(0.0)
                    kb = ACC(0.0)
                    j = k * s_len + cuda.threadIdx.x
                    while j < (k + 1) * s_len:
                        g = ACC(CT(dy[r, j]))
                        ka += g
                        kb += g * ACC(CT(x[r, j]) - sft)
                        j += T
                    ka, kb = block_sum2(sh_a, sh_b, ka, kb)
                    if cuda.threadIdx.x == 0:
                        seg_dy[r, k] = ka
                        seg_dy_d[r, k] = kb
                    w = ACC(weight[base + k])
                    a += w * ka
                    b += w * kb
            else:  # layer/RMS norm rows: s_len == 1, base == 0, affine index j
                j = cuda.threadIdx.x
                while j < d_len:
                    g = ACC(CT(dy[r, j]) * weight[j])
                    a += g
                    b += g * ACC(CT(x[r, j]) - sft)
                    j += T
                a, b = block_sum2(sh_a, sh_b, a, b)
            dm = ACC(dmean[r])
            rs = ACC(rstd[r])
            mean_g = a / d_len if center else 0.0
            mean_g_xhat = rs * (b - dm * a) / d_len
            rs_c = CT(rs)
            dm_c = CT(dm)
            mg_c = CT(mean_g)
            mgx_c = CT(mean_g_xhat)
            if s_len == 1:  # affine index as in row_forward
                j = cuda.threadIdx.x
                while j < d_len:
                    xhat = ((CT(x[r, j]) - sft) - dm_c) * rs_c
                    dx[r, j] = rs_c * (CT(dy[r, j]) * weight[j] - mg_c - xhat * mgx_c)
                    j += T
            else:
                for seg in range(per_group):
                    w_k = weight[base + seg]
                    j = seg * s_len + cuda.threadIdx.x
                    while j < (seg + 1) * s_len:
                        xhat = ((CT(x[r, j]) - sft) - dm_c) * rs_c
                        dx[r, j] = rs_c * (CT(dy[r, j]) * w_k - mg_c - xhat * mgx_c)
                        j += T
            r += cuda.gridDim.x

    @cuda.jit
    def column_param_partial(x, dy, shift, dmean, rstd, out_a, out_b):
        """Layer/RMS norm parameter gradients, per (column, row slice): Σdy and Σdy·x̂ with each row's x̂."""
        sh_a = cuda.shared.array((TY, TX), ACC)
        sh_b = cuda.shared.array((TY, TX), ACC)
        col = cuda.blockIdx.x * TX + cuda.threadIdx.x
        p = cuda.blockIdx.y
        n_slices = cuda.gridDim.y
        m_len = x.shape[0]
        chunk = (m_len + n_slices - 1) // n_slices
        start = p * chunk
        stop = min(m_len, start + chunk)
        a = ACC(0.0)
        b = ACC(0.0)
        if col < x.shape[1]:
            m = start + cuda.threadIdx.y
            while m < stop:
                g = ACC(CT(dy[m, col]))
                xhat = (ACC(CT(x[m, col]) - shift[m]) - dmean[m]) * rstd[m]
                a += g
                b += g * xhat
                m += TY
        ra, rb = column_sum2(sh_a, sh_b, a, b)
        if cuda.threadIdx.y == 0 and col < x.shape[1]:
            out_a[col, p] = ra
            out_b[col, p] = rb

    return SimpleNamespace(
        planes_partial=planes_partial,
        rows_partial=rows_partial,
        bn_finalize_forward=bn_finalize_forward,
        bn_finalize_given=bn_finalize_given,
        bn_finalize_backward=bn_finalize_backward,
        bn_apply_forward=bn_apply_forward,
        bn_apply_backward=bn_apply_backward,
        row_forward=row_forward,
        row_backward=row_backward,
        column_param_partial=column_param_partial,
    )

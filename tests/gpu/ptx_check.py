"""Compile every CUDA kernel to PTX for sm_90 (H100/H200), for every input dtype, without a GPU.

``python tests/gpu/ptx_check.py``: needs libnvvm and libnvrtc (a CUDA toolkit, or the nvidia-cuda-nvrtc wheel
plus ``LD_LIBRARY_PATH``) but no driver.  The simulator runs the kernels as Python, so it cannot tell whether
numba-cuda can type and compile them for a real device (float16 and bfloat16 conversions above all); this
does.  Exit status 0: all compiled; 1: some failed (listed); 2: no compiler here.  Not part of the pytest run:
40 compilations take about a minute.
"""

from __future__ import annotations

import sys
import types

ARCH = (9, 0)


def main() -> int:
    try:
        import numba.cuda.dispatcher as dispatcher
        from numba import boolean, cuda, float32, float64, int64
        from numba.cuda.types import bfloat16, float16
    except ImportError as exc:
        print(f"ptx_check: numba-cuda unavailable: {exc}")
        return 2
    # Device functions called from a kernel are compiled for "the current device"; with no driver, say sm_90.
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=ARCH)
    from normlab.kernels.cuda._build import kernels

    def arr(t, nd):
        return t[(slice(None),) * (nd - 1) + (slice(None, None, 1),)]

    failures = []
    for dt in (float32, float64, float16, bfloat16):
        ct = float64 if dt == float64 else float32
        k = kernels(str(ct), 256, 32, 8)
        x3, x2, c1, f2 = arr(dt, 3), arr(dt, 2), arr(ct, 1), arr(float64, 2)
        signatures = {
            "planes_partial": (x3, x3, c1, boolean, f2, f2),
            "rows_partial": (x2, x2, c1, boolean, f2, f2),
            "bn_finalize_forward": (f2, f2, float64, float64, c1, c1, c1, c1, c1, c1, c1),
            "bn_finalize_given": (c1, float64, c1, c1, c1, c1, c1),
            "bn_finalize_backward": (f2, f2, float64, c1, c1, c1, boolean, c1, c1, c1, c1, c1),
            "bn_apply_forward": (x2, c1, c1, c1, int64, boolean, x2),
            "bn_apply_backward": (x2, x2, c1, c1, c1, c1, int64, boolean, x2),
            "row_forward": (x2, int64, int64, c1, c1, float64, boolean, x2, c1, c1, c1, c1),
            "row_backward": (x2, x2, int64, int64, c1, c1, c1, c1, boolean, x2, f2, f2),
            "column_param_partial": (x2, x2, c1, c1, c1, f2, f2),
        }
        for name, signature in signatures.items():
            try:
                cuda.compile_ptx(getattr(k, name).py_func, signature, cc=ARCH)
            except Exception as exc:
                if "nvvm" in str(exc).lower() or "nvrtc" in str(exc).lower():
                    print(f"ptx_check: no CUDA compiler here: {' '.join(str(exc).split())[:300]}")
                    return 2
                failures.append(
                    f"{name}[{dt}]: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                )
    for failure in failures:
        print("FAILED", failure)
    print(
        f"ptx_check: {40 - len(failures)} of 40 kernel/dtype pairs compiled for sm_{ARCH[0]}{ARCH[1]}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Ratio benchmarks: normlab against PyTorch CPU and a naive NumPy baseline, run in one process, interleaved.

``python -m benchmarks.run`` (or ``make bench``) runs every registered row and prints the table; see
:mod:`benchmarks.run` for the options and :mod:`benchmarks.registry` for how to add rows.
"""

"""Rounding-error bounds of float32 arithmetic, for test tolerances.

A tolerance on a float32 result follows from how many roundings its value
went through, not from one CPU's observed error: two correct programs may
group the same sums differently (BLAS blocking, threads, vector widths).
"""

import numpy as np

#: float32 unit roundoff: half the machine epsilon, 2**-24.
U = float(np.finfo(np.float32).eps) / 2


def gamma(n):
    """Higham's bound on ``n`` float32 roundings in a chain.

    A sum of ``n`` terms (or a dot product of length ``n``) computed in any
    order is within ``gamma(n) * sum(|terms|)`` of the exact value.

    Arguments
    ---------
    n : int
        Number of roundings (accumulation length).

    Returns
    -------
    float

    Example
    -------
    >>> round(gamma(1) / U, 6)
    1.0
    """
    return n * U / (1 - n * U)

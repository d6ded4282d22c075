"""Native thread pools (OpenBLAS, OpenMP) through threadpoolctl, not ctypes.

On a busy 2-core machine a threaded OpenBLAS or OpenMP team spin-waits for a descheduled
partner: a PCA covariance took 7-19 s with the default threads and 1.3 s with one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

from threadpoolctl import threadpool_limits

_KEEP: list = []


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Limit the BLAS libraries loaded in this process (numpy's OpenBLAS) to ``n`` threads."""
    with threadpool_limits(limits=max(1, int(n)), user_api="blas"):
        yield


def limit_native_threads(n: int, user_api: Literal["blas", "openmp"] | None = None) -> None:
    """Cap BLAS and OpenMP pools of this process at ``n`` threads for good (worker processes)."""
    _KEEP.append(threadpool_limits(limits=max(1, int(n)), user_api=user_api))

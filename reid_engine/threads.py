"""Thread pools of the native libraries, as the query path needs them.

A single query multiplies small matrices (a pool of 100 candidates by 512 dimensions). OpenBLAS runs such
products on every core and its idle threads then spin for a while, so the next native work of the same query
(a graph walk per segment, one thread each) shares the cores with them: on a 2-core machine a camera-filtered
pool search took 36-39 ms instead of 15-22 ms after one re-ranked query (docs/storage.md). ``one_blas_thread``
keeps BLAS on one thread for the span of a query; batch work (a commit's exact searches) keeps every core
outside queries. The limit is the process's: while a query runs, a background merge's products of the same
process run on one thread too, which leaves the other core to the query.
"""
from __future__ import annotations

import functools
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, TypeVar, cast

F = TypeVar("F", bound=Callable[..., Any])

_lock = threading.Lock()  # guards the controller and the depth of overlapping queries
_controller: Optional[Any] = None
_modules_seen = -1
_depth = 0
_limiter: Optional[Any] = None


def _blas() -> Any:
    """The process's BLAS libraries with threads of their own (NumPy's OpenBLAS, ...), found again whenever
    modules were imported since the last look (an import may load another BLAS; finding them takes about 5 ms,
    limiting them 12 us). An OpenMP-threaded BLAS (FAISS's own) is left out: its limit would hold only in the
    thread that set it, and a single query runs no product through it."""
    global _controller, _modules_seen
    if _controller is None or len(sys.modules) != _modules_seen:  # the caller holds _lock
        from threadpoolctl import ThreadpoolController

        blas = ThreadpoolController().select(user_api="blas")
        _controller = blas.select(threading_layer=sorted({c.threading_layer for c in blas.lib_controllers}
                                                         - {"openmp"}))
        _modules_seen = len(sys.modules)
    return _controller


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """A context in which BLAS products run on one thread. Queries of several threads overlap: each sets the
    limit (an OpenBLAS may keep it per thread after a product) and the last to leave restores what was there
    before the first came (a limit restored per context would let an early leaver give the threads back under a
    later query, or a later one keep the limit for good)."""
    global _depth, _limiter
    with _lock:
        ctl = _blas()
        limiter = ctl.limit(limits=1) if ctl.lib_controllers else None
        if _depth == 0:
            _limiter = limiter
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _limiter is not None:
                _limiter.restore_original_limits()
                _limiter = None


def on_one_blas_thread(fn: F) -> F:
    """``fn`` run inside ``one_blas_thread`` (a query entry point)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with one_blas_thread():
            return fn(*args, **kwargs)

    return cast(F, wrapper)

"""Thread pools of the native libraries, as the query path needs them.

A single query multiplies small matrices (a pool of 100 candidates by 512 dimensions). OpenBLAS runs such
products on every core and its idle threads then spin for a while, so the next native work of the same query
(a graph walk per segment, one thread each) shares the cores with them: on a 2-core machine a camera-filtered
pool search took 36-39 ms instead of 15-22 ms after one re-ranked query (docs/storage.md). ``one_blas_thread``
keeps BLAS on the calling thread for the span of a query; batch work (a commit's exact searches) keeps every
core.
"""
from __future__ import annotations

import functools
import sys
import threading
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable, Optional, TypeVar, cast

F = TypeVar("F", bound=Callable[..., Any])

_lock = threading.Lock()
_controller: Optional[Any] = None
_modules_seen = -1


def _blas() -> Any:
    """The process's BLAS libraries (NumPy's, FAISS's, ...), found again whenever modules were imported since
    the last look (an import may load another BLAS; finding them takes about 5 ms, limiting them 12 us)."""
    global _controller, _modules_seen
    with _lock:
        if _controller is None or len(sys.modules) != _modules_seen:
            from threadpoolctl import ThreadpoolController

            _modules_seen = len(sys.modules)
            _controller = ThreadpoolController().select(user_api="blas")
        return _controller


def one_blas_thread() -> AbstractContextManager[Any]:
    """A context in which BLAS products run on one thread (the previous limits come back on exit)."""
    ctl = _blas()
    return ctl.limit(limits=1) if ctl.lib_controllers else nullcontext()


def on_one_blas_thread(fn: F) -> F:
    """``fn`` run inside ``one_blas_thread`` (a query entry point)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with one_blas_thread():
            return fn(*args, **kwargs)

    return cast(F, wrapper)

"""The encoder interface every runtime implements.

An encoder turns person crops into L2-comparable float32 embeddings. The base
class owns decoding, preprocessing, batching and prefetching; a runtime only
implements ``_forward`` on one preprocessed batch.
"""
from __future__ import annotations

import logging
import os
import re
import sys
from abc import ABC, abstractmethod
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..errors import ImageReadError, InvalidInputError
from ..images import ImageLike, PreprocessSpec, load_image
from .preprocessing import normalize_batch, resize_to_spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderSpec:
    """A registered encoder: its name, runtime, preprocessing and default weights."""

    name: str
    runtime: str  # the native runtime: "onnxruntime", "openvino" or "torch"
    preprocess: PreprocessSpec
    builder: Callable[..., "Encoder"] = field(compare=False, repr=False)
    dim: Optional[int] = None
    default_weights: Optional[str] = None  # relative to the shared assets folder
    weights_suffixes: tuple[str, ...] = ()
    description: str = ""
    #: runtimes the model can execute on, fastest first on a CPU (measured); empty = only ``runtime``
    runtimes: tuple[str, ...] = ()
    #: keyword options ``create_encoder`` passes to the builder; None = read them from the builder's signature
    options: Optional[tuple[str, ...]] = None


@dataclass
class EncodeResult:
    """Features of the images that decoded, and what failed."""

    features: np.ndarray  # (n_ok, D) float32
    ok: list[int]  # positions in the input that produced a row
    failures: list[tuple[int, str]]  # (position, one-line reason)


#: present when an NVIDIA driver is loaded (CUDA needs it); /dev/dxg: the GPU of WSL 2
_NVIDIA_DEVICES = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg")
_DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")


def _nvidia_driver() -> bool:
    return any(os.path.exists(p) for p in _NVIDIA_DEVICES)


def resolve_device(device: Optional[str]) -> str:
    """Resolve ``None``/"auto" to "cuda" when a CUDA device is usable, else "cpu"; check a named device."""
    if device not in (None, "auto"):
        if not _DEVICE.fullmatch(str(device)):
            raise InvalidInputError(f"device {device!r}: expected 'cpu', 'cuda', 'cuda:N' or 'auto'")
        if device != "cpu" and not _nvidia_driver():
            raise InvalidInputError(f"device {device!r}: no NVIDIA driver is loaded here; use 'cpu' or 'auto'")
        return str(device)
    if "torch" not in sys.modules and not _nvidia_driver():
        return "cpu"  # no NVIDIA driver: no CUDA, and no need to load torch (hundreds of MB) to learn that
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # torch missing or broken: CPU is always there
        return "cpu"


def default_threads() -> int:
    """Threads for intra-op parallelism: every core the process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _show(show_progress: Optional[bool], total: int) -> bool:
    """Progress bars default to on for long work in a terminal, off otherwise."""
    if show_progress is None:
        return total > 256 and sys.stderr.isatty()
    return bool(show_progress)


class Encoder(ABC):
    """Embeds person crops; subclasses implement ``_forward`` for one runtime.

    A runtime that applies the normalisation itself (inside its graph) sets
    ``takes_uint8`` and implements ``_forward_uint8`` on the resized uint8 BGR
    batch. A runtime that can run several batches at once (one per session or
    inference stream; ``_forward`` must then be thread-safe) sets
    ``concurrent_batches``: whole batches are then decoded, normalised and run
    by that many workers side by side, with no barrier between them.
    """

    #: decode/resize threads per encoder in the one-batch-at-a-time pipeline
    decode_workers: int = 2
    #: the runtime normalises inside its graph: it gets uint8 BGR (B, H, W, 3)
    takes_uint8: bool = False
    #: batches the runtime can run at the same time
    concurrent_batches: int = 1

    def __init__(self, spec: EncoderSpec, weights: Path, weights_sha256: str, device: str = "cpu") -> None:
        self.spec = spec
        self.weights = weights
        self.weights_sha256 = weights_sha256
        self.device = device
        self.preprocess_spec = spec.preprocess
        self.runtime = spec.runtime  # the runtime that actually executes the model
        self.dim: int = spec.dim or 0  # set by subclasses from the model when unknown

    @property
    def name(self) -> str:
        return self.spec.name

    @abstractmethod
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Run the network on a float32 (B, 3, H, W) batch; return (B, D) features."""

    def _forward_uint8(self, batch: np.ndarray) -> np.ndarray:
        """Run the network on resized uint8 BGR (B, H, W, 3); normalises then calls ``_forward``."""
        return self._forward(normalize_batch(batch, self.preprocess_spec))

    def describe(self) -> dict[str, Any]:
        """What an index records about the encoder that built it."""
        return {
            "name": self.spec.name,
            "runtime": self.runtime,
            "weights_sha256": self.weights_sha256,
            "weights_path": str(self.weights),
            "dim": self.dim,
            "preprocess": self.preprocess_spec.to_dict(),
        }

    # -- public API -----------------------------------------------------------------
    def encode(
        self,
        images: Sequence[ImageLike],
        batch_size: int = 32,
        show_progress: Optional[bool] = None,
    ) -> np.ndarray:
        """Embed images (paths or arrays) -> float32 (N, D), input order kept.

        Raises ImageReadError on the first image that cannot be decoded.
        """
        result = self._run(images, batch_size, show_progress, strict=True)
        return result.features

    def encode_files(
        self,
        images: Sequence[ImageLike],
        batch_size: int = 32,
        show_progress: Optional[bool] = None,
        strict: bool = False,
    ) -> EncodeResult:
        """Like ``encode`` but unreadable images are skipped and reported (unless strict)."""
        return self._run(images, batch_size, show_progress, strict=strict)

    # -- machinery ------------------------------------------------------------------
    def _load_into(
        self, images: Sequence[ImageLike], rows: range, first: int, out: np.ndarray, out_f: Optional[np.ndarray]
    ) -> list[tuple[int, ImageReadError]]:
        """Decode and resize ``images[rows]`` into ``out[row - first]`` (uint8), normalise them into
        ``out_f`` when given, and return the failures (their rows hold garbage)."""
        failed: list[tuple[int, ImageReadError]] = []
        spec = self.preprocess_spec
        for pos in rows:
            try:
                out[pos - first] = resize_to_spec(load_image(images[pos]), spec)
            except ImageReadError as exc:
                failed.append((pos, exc))
        if out_f is not None and len(rows):
            a, b = rows.start - first, rows.stop - first
            normalize_batch(out[a:b], spec, out=out_f[a:b])
        return failed

    def _new_batch(self, n: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        spec = self.preprocess_spec
        out = np.empty((n, spec.height, spec.width, 3), dtype=np.uint8)
        out_f = None if self.takes_uint8 else np.empty((n, 3, spec.height, spec.width), dtype=np.float32)
        return out, out_f

    def _forward_alone(self, batch: np.ndarray) -> np.ndarray:
        """The network on a call's only batch (nothing runs beside it); a runtime with batches side by side
        on parts of the cores puts every core on it."""
        return self._forward(batch)

    def _finish(
        self, start: int, end: int, out: np.ndarray, out_f: Optional[np.ndarray],
        failed: list[tuple[int, ImageReadError]], strict: bool, alone: bool = False,
    ) -> tuple[list[int], Optional[np.ndarray], list[tuple[int, str]]]:
        """Drop the failed rows, run the network (``alone``: the call's only batch); returns (positions,
        features or None, failures)."""
        failed.sort(key=lambda f: f[0])
        if failed and strict:
            raise failed[0][1]
        batch = out if self.takes_uint8 else out_f
        assert batch is not None
        if failed:
            bad = {pos for pos, _ in failed}
            ok = [p for p in range(start, end) if p not in bad]
            batch = batch[[p - start for p in ok]]
        else:
            ok = list(range(start, end))
        feats = None
        if ok:
            if self.takes_uint8:
                feats = self._forward_uint8(batch)
            else:
                feats = self._forward_alone(batch) if alone else self._forward(batch)
        return ok, feats, [(pos, str(exc)) for pos, exc in failed]

    def _encode_batch(
        self, images: Sequence[ImageLike], start: int, end: int, strict: bool
    ) -> tuple[list[int], Optional[np.ndarray], list[tuple[int, str]]]:
        """Decode, normalise and run one whole batch in the calling thread."""
        out, out_f = self._new_batch(end - start)
        failed = self._load_into(images, range(start, end), start, out, out_f)
        return self._finish(start, end, out, out_f, failed, strict)

    def _batches(
        self, images: Sequence[ImageLike], batch_size: int, strict: bool
    ) -> Iterator[tuple[list[int], Optional[np.ndarray], list[tuple[int, str]]]]:
        """Yield (positions, features, failures) per batch, in input order."""
        if self.concurrent_batches > 1 and len(images) > batch_size:
            yield from self._batches_concurrent(images, batch_size, strict)
        else:  # one batch (a query's images) cannot run side by side: it gets the whole machine
            yield from self._batches_prefetched(images, batch_size, strict, alone=len(images) <= batch_size)

    def _batches_concurrent(
        self, images: Sequence[ImageLike], batch_size: int, strict: bool
    ) -> Iterator[tuple[list[int], Optional[np.ndarray], list[tuple[int, str]]]]:
        """Whole batches on ``concurrent_batches`` workers, one more queued so none waits."""
        n = len(images)
        workers = self.concurrent_batches
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reid-batch") as pool:
            pending: deque[Future] = deque()
            starts = iter(range(0, n, batch_size))

            def submit() -> None:
                s = next(starts, None)
                if s is not None:
                    pending.append(pool.submit(self._encode_batch, images, s, min(s + batch_size, n), strict))

            for _ in range(workers + 1):
                submit()
            try:
                while pending:
                    result = pending.popleft().result()
                    submit()
                    yield result
            finally:
                for f in pending:
                    f.cancel()

    def _batches_prefetched(
        self, images: Sequence[ImageLike], batch_size: int, strict: bool, alone: bool = False
    ) -> Iterator[tuple[list[int], Optional[np.ndarray], list[tuple[int, str]]]]:
        """The network runs here, one batch at a time; a thread pool decodes, resizes and
        normalises up to two batches ahead (one task per worker per batch: a future per
        small crop would cost more than decoding it)."""
        n = len(images)
        workers = max(1, min(self.decode_workers, default_threads()))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reid-decode") as pool:
            pending: deque[tuple[int, int, np.ndarray, Optional[np.ndarray], list[Future]]] = deque()
            starts = iter(range(0, n, batch_size))

            def submit() -> None:
                s = next(starts, None)
                if s is None:
                    return
                e = min(s + batch_size, n)
                out, out_f = self._new_batch(e - s)
                step = max(1, -(-(e - s) // workers))
                futures = [
                    pool.submit(self._load_into, images, range(a, min(a + step, e)), s, out, out_f)
                    for a in range(s, e, step)
                ]
                pending.append((s, e, out, out_f, futures))

            for _ in range(2):  # the current batch and the next one
                submit()
            try:
                while pending:
                    start, end, out, out_f, futures = pending.popleft()
                    submit()
                    failed: list[tuple[int, ImageReadError]] = []
                    for fut in futures:
                        failed.extend(fut.result())
                    yield self._finish(start, end, out, out_f, failed, strict, alone)
            finally:
                for _, _, _, _, rest in pending:
                    for f in rest:
                        f.cancel()

    def _run(
        self, images: Sequence[ImageLike], batch_size: int, show_progress: Optional[bool], strict: bool
    ) -> EncodeResult:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InvalidInputError(f"batch_size {batch_size!r}: expected a positive integer")
        if isinstance(images, (str, Path, np.ndarray)) and not (
            isinstance(images, np.ndarray) and images.ndim == 4
        ):
            images = [images]  # a single image
        n = len(images)
        chunks: list[np.ndarray] = []
        ok_all: list[int] = []
        failures_all: list[tuple[int, str]] = []
        bar = tqdm(total=n, unit="img", desc=f"encode {self.name}", disable=not _show(show_progress, n))
        try:
            for ok, feats, failures in self._batches(images, batch_size, strict):
                if ok:
                    feats = np.asarray(feats, dtype=np.float32)
                    if feats.ndim != 2 or feats.shape[0] != len(ok):
                        raise InvalidInputError(
                            f"encoder {self.name}: model returned shape {feats.shape}, expected ({len(ok)}, D)"
                        )
                    chunks.append(feats)
                    ok_all.extend(ok)
                for _pos, reason in failures:
                    log.warning("skipping %s", reason)
                failures_all.extend(failures)
                bar.update(len(ok) + len(failures))
        finally:
            bar.close()
        dim = self.dim or (chunks[0].shape[1] if chunks else 0)
        features = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
        return EncodeResult(np.ascontiguousarray(features, dtype=np.float32), ok_all, failures_all)

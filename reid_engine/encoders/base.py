"""The encoder interface every runtime implements.

An encoder turns person crops into L2-comparable float32 embeddings. The base
class owns decoding, preprocessing, batching and prefetching; a runtime only
implements ``_forward`` on one preprocessed batch.
"""
from __future__ import annotations

import logging
import os
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


@dataclass
class EncodeResult:
    """Features of the images that decoded, and what failed."""

    features: np.ndarray  # (n_ok, D) float32
    ok: list[int]  # positions in the input that produced a row
    failures: list[tuple[int, str]]  # (position, one-line reason)


def resolve_device(device: Optional[str]) -> str:
    """Resolve ``None``/"auto" to "cuda" when a CUDA device is usable, else "cpu"."""
    if device not in (None, "auto"):
        if device not in ("cpu",) and not str(device).startswith("cuda"):
            raise InvalidInputError(f"device {device!r}: expected 'cpu', 'cuda', 'cuda:N' or 'auto'")
        return str(device)
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

    Runtimes that can apply the normalisation themselves (inside their graph)
    override ``_forward_uint8`` and receive the resized uint8 BGR batch instead.
    """

    #: decode/resize threads per encoder; the network gets the cores while they wait on I/O
    decode_workers: int = 2

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
    def _load_resized(self, item: ImageLike) -> np.ndarray:
        return resize_to_spec(load_image(item), self.preprocess_spec)

    def _load_into(
        self, images: Sequence[ImageLike], positions: range, out: np.ndarray, first: int
    ) -> list[tuple[int, ImageReadError]]:
        """Decode and resize ``images[positions]`` into ``out[pos - first]``; return the failures."""
        failed: list[tuple[int, ImageReadError]] = []
        for pos in positions:
            try:
                out[pos - first] = self._load_resized(images[pos])
            except ImageReadError as exc:
                failed.append((pos, exc))
        return failed

    def _submit_batch(
        self, pool: ThreadPoolExecutor, images: Sequence[ImageLike], start: int, end: int, workers: int
    ) -> tuple[int, int, np.ndarray, list[Future]]:
        spec = self.preprocess_spec
        out = np.empty((end - start, spec.height, spec.width, 3), dtype=np.uint8)
        # one task per worker, not per image: futures cost more than decoding a small crop
        step = max(1, -(-(end - start) // workers))
        futures = [
            pool.submit(self._load_into, images, range(s, min(s + step, end)), out, start)
            for s in range(start, end, step)
        ]
        return start, end, out, futures

    def _batches(
        self, images: Sequence[ImageLike], batch_size: int, strict: bool
    ) -> Iterator[tuple[list[int], np.ndarray, list[tuple[int, str]]]]:
        """Decode and resize batches on a thread pool, up to two batches ahead of the network.

        Yields (positions that decoded, uint8 BGR batch (B, H, W, 3), failures).
        """
        n = len(images)
        workers = max(1, min(self.decode_workers, default_threads()))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reid-decode") as pool:
            pending: deque[tuple[int, int, np.ndarray, list[Future]]] = deque()
            starts = iter(range(0, n, batch_size))
            for _ in range(2):  # the current batch and the next one
                s = next(starts, None)
                if s is not None:
                    pending.append(self._submit_batch(pool, images, s, min(s + batch_size, n), workers))
            while pending:
                start, end, out, futures = pending.popleft()
                s = next(starts, None)
                if s is not None:
                    pending.append(self._submit_batch(pool, images, s, min(s + batch_size, n), workers))
                failed: list[tuple[int, ImageReadError]] = []
                try:
                    for fut in futures:
                        failed.extend(fut.result())
                    if failed and strict:
                        raise min(failed, key=lambda f: f[0])[1]
                except BaseException:
                    for _, _, _, rest in pending:
                        for f in rest:
                            f.cancel()
                    raise
                if failed:
                    bad = {pos for pos, _ in failed}
                    ok = [p for p in range(start, end) if p not in bad]
                    batch = out[[p - start for p in ok]]
                else:
                    ok = list(range(start, end))
                    batch = out
                yield ok, batch, [(pos, str(exc)) for pos, exc in sorted(failed, key=lambda f: f[0])]

    def _run(
        self, images: Sequence[ImageLike], batch_size: int, show_progress: Optional[bool], strict: bool
    ) -> EncodeResult:
        if batch_size < 1:
            raise InvalidInputError(f"batch_size {batch_size}: expected a positive integer")
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
            for ok, batch, failures in self._batches(images, batch_size, strict):
                if len(ok):
                    feats = np.asarray(self._forward_uint8(batch), dtype=np.float32)
                    if feats.ndim != 2 or feats.shape[0] != len(ok):
                        raise InvalidInputError(
                            f"encoder {self.name}: model returned shape {feats.shape}, expected ({len(ok)}, D)"
                        )
                    chunks.append(feats)
                    ok_all.extend(ok)
                for pos, reason in failures:
                    log.warning("skipping %s", reason)
                failures_all.extend(failures)
                bar.update(len(ok) + len(failures))
        finally:
            bar.close()
        dim = self.dim or (chunks[0].shape[1] if chunks else 0)
        features = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
        return EncodeResult(np.ascontiguousarray(features, dtype=np.float32), ok_all, failures_all)

"""PyTorch encoder for models built in code (torchreid OSNet, the ViT ReID family).

Inference runs under ``torch.inference_mode`` with batch norm folded into the
preceding layers, channels-last for convolutional networks, and fp16 autocast
on a CUDA device. On the CPU the intra-op thread count is the encoder's own
(set around each call, restored after): unless given, it is tuned once on
probe crops, because on a shared or small machine one thread often beats all
of them (OpenMP threads wait at every layer for a core another process holds).
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import time
import warnings
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch import nn

from ..errors import InvalidInputError
from .base import Encoder, EncoderSpec, default_threads
from .fold import fold_batchnorm
from .preprocessing import channel_affine, normalize_batch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

#: the tolerance a faster execution of a model must meet against its source (max abs, cosine)
MAX_ABS_DIFF = 1e-3
MIN_COSINE = 0.9999


def probe_images(spec_height: int, spec_width: int, n: int = 4, seed: int = 0) -> np.ndarray:
    """Deterministic uint8 BGR test crops (n, H, W, 3): smooth gradients plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:spec_height, 0:spec_width].astype(np.float32)
    out = np.empty((n, spec_height, spec_width, 3), np.uint8)
    for i in range(n):
        base = np.stack(
            [
                128 + 100 * np.sin(yy / (9 + 3 * i) + c) * np.cos(xx / (7 + 2 * c) + i)
                for c in range(3)
            ],
            axis=-1,
        )
        out[i] = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return out


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max abs difference, smallest row cosine) between two feature matrices."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    cos = (a * b).sum(1) / np.maximum(na * nb, 1e-12)
    both_zero = (na == 0) & (nb == 0)
    cos[both_zero] = 1.0
    return diff, float(cos.min()) if cos.size else 1.0


def agrees(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two feature matrices agree within the project tolerance."""
    diff, cos = agreement(a, b)
    return diff < MAX_ABS_DIFF and cos > MIN_COSINE


@contextlib.contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (None: unchanged), then restore the previous count."""
    previous = torch.get_num_threads()
    if n and n != previous:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


class TorchEncoder(Encoder):
    """Runs an ``nn.Module`` that maps a normalised (B, 3, H, W) batch to (B, D) features."""

    def __init__(
        self,
        spec: EncoderSpec,
        weights: Path,
        weights_sha256: str,
        device: str,
        module: nn.Module,
        precision: str = "auto",
        channels_last: Optional[bool] = None,
        fold: bool = True,
        threads: Optional[int] = None,
    ) -> None:
        """``channels_last`` None: on for a GPU or a network with grouped convolutions; ``threads`` None: tuned."""
        super().__init__(spec, weights, weights_sha256, device)
        if precision not in PRECISIONS:
            raise InvalidInputError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InvalidInputError(f"device {device!r}: CUDA is not available")
        self.runtime = "torch"
        self.torch_device = torch.device(device)
        on_gpu = self.torch_device.type == "cuda"
        self.takes_uint8 = on_gpu  # on a GPU: upload uint8 (a quarter of the bytes), normalise there
        self.autocast_dtype = _DTYPES.get(precision) if precision != "auto" else (torch.float16 if on_gpu else None)
        if self.autocast_dtype is not None and not on_gpu:
            log.warning("%s: %s autocast on the CPU changes embeddings beyond the fp32 tolerance", spec.name, precision)
        if channels_last is None:  # depthwise/grouped convolutions run much faster channels-last in oneDNN
            channels_last = on_gpu or any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in module.modules())
        self.channels_last = bool(channels_last)
        self.threads: Optional[int] = int(threads) if threads else None
        module = module.eval()
        h, w = self.preprocess_spec.height, self.preprocess_spec.width
        example = torch.from_numpy(self._normalise_numpy(probe_images(h, w, n=2)))
        if fold:
            with torch_threads(self.threads or 1):
                module = self._folded(module, example)
        self.module = module.to(self.torch_device)
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        a, b, src = channel_affine(self.preprocess_spec)
        self._scale = torch.from_numpy(a).view(1, 3, 1, 1).to(self.torch_device)
        self._shift = torch.from_numpy(b).view(1, 3, 1, 1).to(self.torch_device)
        self._src = src
        with torch_threads(self.threads or 1):
            self.dim = int(self._forward(example.numpy()).shape[1])
        if precision == "auto" and self.autocast_dtype is not None:
            self._check_autocast(example.numpy())
        if self.threads is None and not on_gpu:
            self.threads = self._tune_threads()

    def _check_autocast(self, example: np.ndarray) -> None:
        """Keep automatic fp16 only if it reproduces fp32 within the project tolerance."""
        reduced = self._forward(example)
        dtype, self.autocast_dtype = self.autocast_dtype, None
        full = self._forward(example)
        if agrees(full, reduced):
            self.autocast_dtype = dtype
        else:
            diff, _ = agreement(full, reduced)
            log.info("%s: %s autocast differs from fp32 by %.2g; running fp32", self.name, dtype, diff)

    def _tune_threads(self) -> int:
        """The faster of one thread and all cores on a probe batch (best of two runs each)."""
        options = sorted({1, default_threads()})
        if len(options) == 1:
            return options[0]
        h, w = self.preprocess_spec.height, self.preprocess_spec.width
        x = self._normalise_numpy(probe_images(h, w, n=4))
        best: dict[int, float] = {}
        for _ in range(2):
            for n in options:
                self.threads = n
                t0 = time.perf_counter()
                self._forward(x)
                best[n] = min(best.get(n, float("inf")), time.perf_counter() - t0)
        chosen = min(best, key=best.__getitem__)
        log.debug("%s: %d intra-op threads (probe times %s)", self.name, chosen, best)
        return chosen

    def _normalise_numpy(self, batch_u8: np.ndarray) -> np.ndarray:
        return normalize_batch(batch_u8, self.preprocess_spec)

    def _folded(self, module: nn.Module, example: torch.Tensor) -> nn.Module:
        """The module with batch norm folded, if that leaves its output unchanged."""
        folded, count = fold_batchnorm(module, example[:1])
        if count == 0:
            return module
        with torch.inference_mode():
            reference = module(example).float().numpy()
            got = folded(example).float().numpy()
        if not agrees(reference, got):
            diff, _ = agreement(reference, got)
            log.warning("%s: batch-norm folding changed the output (max diff %.2g); running unfolded", self.name, diff)
            return module
        log.debug("%s: folded %d batch norms", self.name, count)
        return folded

    def _run_module(self, x: torch.Tensor) -> np.ndarray:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch_threads(self.threads if self.torch_device.type == "cpu" else None), torch.inference_mode():
            if self.autocast_dtype is not None:
                with torch.autocast(self.torch_device.type, dtype=self.autocast_dtype):
                    out = self.module(x)
            else:
                out = self.module(x)
            out = out.float().reshape(out.shape[0], -1)
        return out.cpu().numpy()

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.torch_device)
        return self._run_module(x)

    def _forward_uint8(self, batch: np.ndarray) -> np.ndarray:
        if not self.takes_uint8:  # the CPU: NumPy's fused per-channel pass, in the decode workers
            return super()._forward_uint8(batch)
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.torch_device, non_blocking=True)
        x = x.permute(0, 3, 1, 2)[:, self._src].float()
        return self._run_module(x * self._scale + self._shift)


def export_onnx(module: nn.Module, height: int, width: int) -> bytes:
    """Serialize a module to ONNX in memory, with a dynamic batch dimension."""
    example = torch.zeros(2, 3, height, width)
    buf = io.BytesIO()
    module = copy.deepcopy(module).eval().to("cpu").to(memory_format=torch.contiguous_format).float()
    with warnings.catch_warnings(), torch_threads(1):  # tracing runs the model once: tiny work per layer
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buf,  # type: ignore[arg-type]  # typed as a path, but the TorchScript exporter also writes to file objects
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    return buf.getvalue()


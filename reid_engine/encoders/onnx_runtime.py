"""ONNX Runtime encoder for exported ReID models (.onnx)."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import WeightsError
from ..images import PreprocessSpec
from .base import Encoder, EncoderSpec, default_threads

log = logging.getLogger(__name__)


class OnnxEncoder(Encoder):
    """Runs an exported ReID model with ONNX Runtime; input name and size read from the model."""

    def __init__(
        self,
        spec: EncoderSpec,
        weights: Path,
        weights_sha256: str,
        device: str = "cpu",
        threads: Optional[int] = None,
    ) -> None:
        super().__init__(spec, weights, weights_sha256, device)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or default_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(weights), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise WeightsError(f"{weights}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        if len(shape) != 4:
            raise WeightsError(f"{weights}: expected a 4-d image input (N, 3, H, W), got {shape}")
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        h, w = shape[2], shape[3]
        if isinstance(h, int) and isinstance(w, int) and (h, w) != (
            self.preprocess_spec.height,
            self.preprocess_spec.width,
        ):
            log.info("%s: model input is %dx%d; resizing crops to it", weights.name, h, w)
            self.preprocess_spec = dataclasses.replace(self.preprocess_spec, height=h, width=w)
        out = self.session.get_outputs()[0]
        dim = out.shape[-1] if out.shape and isinstance(out.shape[-1], int) else None
        if dim is None:
            probe = np.zeros((1, 3, self.preprocess_spec.height, self.preprocess_spec.width), np.float32)
            dim = int(self._forward(probe).shape[1])
        self.dim = int(dim)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        if self.fixed_batch and batch.shape[0] != self.fixed_batch:
            step = self.fixed_batch
            outs = [self._forward_exact(batch[i : i + step]) for i in range(0, batch.shape[0], step)]
            return np.concatenate(outs)
        return self._forward_exact(batch)

    def _forward_exact(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return out.reshape(out.shape[0], -1)


def build_onnx(spec: EncoderSpec, weights: Path, sha: str, device: str, **options) -> OnnxEncoder:
    return OnnxEncoder(spec, weights, sha, device, **options)


IMAGENET_RGB = PreprocessSpec()

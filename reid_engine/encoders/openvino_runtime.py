"""OpenVINO encoder for IR models (.xml + .bin)."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import WeightsError
from .base import Encoder, EncoderSpec, default_threads

log = logging.getLogger(__name__)


class OpenVinoEncoder(Encoder):
    """Runs an OpenVINO IR ReID model on the CPU (or GPU plugin when asked)."""

    def __init__(
        self,
        spec: EncoderSpec,
        weights: Path,
        weights_sha256: str,
        device: str = "cpu",
        threads: Optional[int] = None,
    ) -> None:
        super().__init__(spec, weights, weights_sha256, device)
        import openvino as ov

        if not weights.with_suffix(".bin").is_file():
            raise WeightsError(f"{weights}: the OpenVINO weights file {weights.with_suffix('.bin').name} is missing")
        core = ov.Core()
        try:
            model = core.read_model(str(weights))
        except Exception as exc:
            raise WeightsError(f"{weights}: not a readable OpenVINO IR model ({str(exc).splitlines()[0]})") from None
        inp = model.inputs[0]
        shape = list(inp.get_partial_shape().get_min_shape())
        if len(shape) != 4:
            raise WeightsError(f"{weights}: expected a 4-d image input (N, 3, H, W), got {shape}")
        h, w = int(shape[2]), int(shape[3])
        if (h, w) != (self.preprocess_spec.height, self.preprocess_spec.width):
            self.preprocess_spec = dataclasses.replace(self.preprocess_spec, height=h, width=w)
        try:  # a dynamic batch lets one call run a whole batch
            model.reshape({inp.get_any_name(): ov.PartialShape([-1, 3, h, w])})
        except Exception:
            log.debug("%s: batch dimension is fixed", weights.name)
        config = {"INFERENCE_NUM_THREADS": threads or default_threads(), "PERFORMANCE_HINT": "THROUGHPUT"}
        target = "GPU" if device.startswith("cuda") and "GPU" in core.available_devices else "CPU"
        self.compiled = core.compile_model(model, target, config)
        self.request = self.compiled.create_infer_request()
        self.dynamic = model.inputs[0].get_partial_shape()[0].is_dynamic
        out = self._forward(np.zeros((1, 3, h, w), np.float32))
        self.dim = int(out.shape[1])

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.dynamic:
            res = self.request.infer({0: batch})
            out = next(iter(res.values()))
            return np.asarray(out).reshape(batch.shape[0], -1)
        outs = []
        for i in range(batch.shape[0]):
            res = self.request.infer({0: batch[i : i + 1]})
            outs.append(np.asarray(next(iter(res.values()))).reshape(1, -1))
        return np.concatenate(outs)


def build_openvino(spec: EncoderSpec, weights: Path, sha: str, device: str, **options) -> OpenVinoEncoder:
    return OpenVinoEncoder(spec, weights, sha, device, **options)

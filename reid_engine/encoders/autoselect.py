"""Running a torch-defined model on the fastest runtime that reproduces it.

A model built in torch that runs on ONNX Runtime or OpenVINO is exported to
ONNX in memory and must reproduce the torch output on probe crops (max abs
difference < 1e-3, cosine > 0.9999) before it is used; otherwise the next
runtime in the spec's order is tried, ending with torch itself.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

from torch import nn

from ..errors import InvalidInputError, WeightsError
from .base import Encoder, EncoderSpec
from .runtimes import candidate_runtimes
from .torch_runtime import TorchEncoder, agreement, agrees, export_onnx, probe_images

log = logging.getLogger(__name__)


def build_from_torch(
    spec: EncoderSpec,
    weights: Path,
    sha: str,
    device: str,
    make_module: Callable[[], nn.Module],
    runtime: Optional[str] = None,
    threads: Optional[int] = None,
    precision: str = "auto",
    channels_last: Optional[bool] = None,
    streams: Optional[int] = None,
) -> Encoder:
    """Build a torch-defined model, then run it on the fastest runtime that reproduces it.

    ``precision`` and ``channels_last`` apply to torch; ``streams`` to the exported runtimes.
    """
    order = candidate_runtimes(spec, device, runtime)
    pinned = runtime not in (None, "auto")
    reference = TorchEncoder(
        spec, weights, sha, device, make_module(), precision=precision, channels_last=channels_last,
        threads=threads or 1,  # tuned below only if torch itself ends up running the model
    )
    onnx_bytes: Optional[bytes] = None
    for rt in order:
        if rt == "torch":
            return _tuned(reference, threads)
        try:
            if onnx_bytes is None:
                height, width = reference.preprocess_spec.height, reference.preprocess_spec.width
                onnx_bytes = export_onnx(reference.module, height, width)
            candidate = _exported_encoder(rt, spec, weights, sha, device, onnx_bytes, threads, streams)
        except Exception as exc:
            if pinned:
                raise WeightsError(f"{weights}: cannot run {spec.name} on {rt} ({str(exc).splitlines()[0]})") from None
            log.warning("%s: cannot run on %s (%s); trying the next runtime", spec.name, rt, str(exc).splitlines()[0])
            continue
        probe = probe_images(reference.preprocess_spec.height, reference.preprocess_spec.width)
        expected = reference._forward_uint8(probe)
        got = candidate._forward_uint8(probe)
        if agrees(expected, got):
            log.info("%s: running on %s (matches torch on probe crops)", spec.name, rt)
            return candidate
        diff, cos = agreement(expected, got)
        message = f"{spec.name} on {rt} differs from torch (max abs diff {diff:.3g}, cosine {cos:.6f})"
        if pinned:
            raise WeightsError(f"{weights}: {message}")
        log.warning("%s; trying the next runtime", message)
    return _tuned(reference, threads)


def _tuned(encoder: TorchEncoder, threads: Optional[int]) -> TorchEncoder:
    if threads is None and encoder.torch_device.type == "cpu":
        encoder.threads = encoder._tune_threads()
    return encoder


def _exported_encoder(
    rt: str,
    spec: EncoderSpec,
    weights: Path,
    sha: str,
    device: str,
    onnx_bytes: bytes,
    threads: Optional[int],
    streams: Optional[int],
) -> Encoder:
    if rt == "onnxruntime":
        from .onnx_runtime import OnnxEncoder

        return OnnxEncoder(spec, weights, sha, device, threads=threads, model=onnx_bytes, streams=streams)
    if rt == "openvino":
        from .openvino_runtime import OpenVinoEncoder

        return OpenVinoEncoder(spec, weights, sha, device, threads=threads, model=onnx_bytes, streams=streams)
    raise InvalidInputError(f"runtime {rt!r}: not an exported-model runtime")

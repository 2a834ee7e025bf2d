"""Which runtime executes a model: the spec's measured preference, or the user's pin.

Each registered spec lists the runtimes it can run on, fastest first as
measured on a CPU (``EncoderSpec.runtimes``; figures in docs/encoders.md).
``runtime=None`` or "auto" takes the first installed one that suits the
device; any other value pins that runtime. Importing this module is cheap
(no torch, no runtime packages).
"""
from __future__ import annotations

import importlib.util
from typing import Optional

from ..errors import InvalidInputError
from .base import EncoderSpec

RUNTIMES = ("torch", "onnxruntime", "openvino")


def runtime_available(runtime: str) -> bool:
    """Whether the Python package for a runtime is installed."""
    return importlib.util.find_spec(runtime) is not None


def candidate_runtimes(spec: EncoderSpec, device: str, runtime: Optional[str]) -> list[str]:
    """Runtimes to try for ``spec`` on ``device``, in order; a pinned runtime is the only one."""
    allowed = spec.runtimes or (spec.runtime,)
    if runtime not in (None, "auto"):
        if runtime not in RUNTIMES:
            raise InvalidInputError(f"runtime {runtime!r}: expected 'auto' or one of {', '.join(RUNTIMES)}")
        if runtime not in allowed:
            raise InvalidInputError(
                f"encoder {spec.name!r} runs on {', '.join(allowed)}; runtime {runtime!r} is not one of them"
            )
        return [runtime]
    order = list(allowed)
    if device.startswith("cuda"):
        # a CUDA device: torch (fp16 autocast) for torch models, else ONNX Runtime's CUDA provider
        order.sort(key=lambda r: {"torch": 0, "onnxruntime": 1}.get(r, 2))
    return [r for r in order if runtime_available(r)] or [spec.runtime]


def pick_exported_runtime(spec: EncoderSpec, device: str, runtime: Optional[str]) -> str:
    """The runtime for an exported model file (.onnx): ONNX Runtime or OpenVINO."""
    for r in candidate_runtimes(spec, device, runtime):
        if r in ("onnxruntime", "openvino"):
            return r
    raise InvalidInputError(f"encoder {spec.name!r}: no installed runtime can run an .onnx file")

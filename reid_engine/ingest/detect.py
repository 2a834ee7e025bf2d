"""Person detectors: BGR frame -> boxes and confidences, behind a name registry.

A detector is any object with ``detect(frame) -> Detections``. Two are built in,
both for SSD-style models whose output is ``[1, 1, N, 7]`` rows of
(image_id, label, confidence, x_min, y_min, x_max, y_max) in normalised
coordinates: ``openvino-ssd`` (OpenVINO IR, the default, with the Open Model
Zoo pedestrian detector from the shared assets) and ``onnx-ssd`` (an ONNX model
run by ONNX Runtime). Other models register their own factory.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Union

import cv2
import numpy as np

from ..assets import expand_user, shared_path
from ..encoders.base import default_threads
from ..encoders.openvino_runtime import check_model_file
from ..errors import InvalidInputError, UnknownNameError, WeightsError
from ..images import file_sha256, why_not_a_file

log = logging.getLogger(__name__)

DEFAULT_DETECTOR = "openvino-ssd"
#: confidence threshold of the ingest; 0.3 finds clearly more people than 0.5 on PETS S2.L1
#: (recall 0.75 vs 0.65 at IoU 0.5) for a small loss of precision (0.92 vs 0.93)
DEFAULT_THRESHOLD = 0.3
#: the default weights of the built-in detectors, relative to the shared assets folder
DEFAULT_DETECTOR_WEIGHTS = {
    "openvino-ssd": "weights/intel/pedestrian-detection-adas-0002/FP16/pedestrian-detection-adas-0002.xml",
}


@dataclass
class Detections:
    """People found in one frame: pixel boxes (x1, y1, x2, y2) and confidences."""

    boxes: np.ndarray  # (N, 4) float32
    scores: np.ndarray  # (N,) float32

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))


class Detector(Protocol):
    """Finds people in a frame."""

    name: str

    def detect(self, frame: np.ndarray) -> Detections:
        """Boxes in the frame's pixel coordinates, clipped to the frame."""
        ...

    def describe(self) -> dict[str, Any]:
        """What an ingest records about the detector (name, weights hash, threshold)."""
        ...


_DETECTORS: dict[str, Callable[..., Detector]] = {}


def register_detector(name: str, factory: Callable[..., Detector]) -> None:
    """Make a detector available by name; ``factory(weights=..., threshold=..., **options)`` builds it."""
    _DETECTORS[name] = factory


def list_detectors() -> list[str]:
    return sorted(_DETECTORS)


def create_detector(
    name: Optional[str] = None,
    weights: Optional[Union[str, Path]] = None,
    threshold: float = DEFAULT_THRESHOLD,
    **options: Any,
) -> Detector:
    """Build a detector by name and/or weights file (.xml -> openvino-ssd, .onnx -> onnx-ssd)."""
    if name is None:
        if weights is None:
            name = DEFAULT_DETECTOR
        else:
            suffix = Path(weights).suffix.lower()
            name = {".xml": "openvino-ssd", ".onnx": "onnx-ssd"}.get(suffix)
            if name is None:
                raise WeightsError(f"{weights}: cannot tell the detector from the file type; name one with --detector")
    if name not in _DETECTORS:
        raise UnknownNameError(f"unknown detector {name!r}: expected one of {', '.join(list_detectors())}")
    if weights is None:
        rel = DEFAULT_DETECTOR_WEIGHTS.get(name)
        if rel is None:
            raise WeightsError(f"detector {name!r} has no default weights: pass a weights file")
        weights = shared_path(rel)
    wpath = expand_user(weights)
    if not wpath.is_file():
        raise WeightsError(f"{wpath}: {why_not_a_file(wpath)}, expected a weights file for detector {name!r}")
    if not 0.0 <= threshold <= 1.0:
        raise InvalidInputError(f"detection threshold {threshold}: expected a number in [0, 1]")
    return _DETECTORS[name](weights=wpath.resolve(), threshold=threshold, **options)


def decode_ssd(out: np.ndarray, width: int, height: int, threshold: float, label: Optional[int] = None) -> Detections:
    """SSD DetectionOutput rows ``[..., 7]`` -> pixel Detections above ``threshold``."""
    rows = np.asarray(out, dtype=np.float32).reshape(-1, 7)
    stop = np.nonzero(rows[:, 0] < 0)[0]  # image_id -1 ends the valid rows
    if len(stop):
        rows = rows[: stop[0]]
    keep = rows[:, 2] >= threshold
    if label is not None:
        keep &= rows[:, 1] == label
    rows = rows[keep]
    boxes = rows[:, 3:7] * np.array([width, height, width, height], np.float32)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    ok = (boxes[:, 2] - boxes[:, 0] >= 2) & (boxes[:, 3] - boxes[:, 1] >= 2)
    return Detections(np.ascontiguousarray(boxes[ok]), np.ascontiguousarray(rows[ok, 2]))


class _SsdDetector:
    """Shared preprocessing of the SSD-style detectors: plain resize to the model input."""

    name = "ssd"

    def __init__(self, weights: Path, threshold: float, color: str = "BGR", label: Optional[int] = None) -> None:
        if color not in ("BGR", "RGB"):
            raise InvalidInputError(f"colour order {color!r}: expected 'BGR' or 'RGB'")
        self.weights = weights
        self.threshold = float(threshold)
        self.color = color
        self.label = label
        self.height = self.width = 0
        self.weights_sha256 = file_sha256(weights)

    def _input(self, frame: np.ndarray) -> np.ndarray:
        img = cv2.resize(frame, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        if self.color == "RGB":
            img = img[:, :, ::-1]
        return np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32)

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def detect(self, frame: np.ndarray) -> Detections:
        if frame is None or frame.ndim != 3 or frame.shape[2] != 3:
            raise InvalidInputError(f"expected a BGR frame (H, W, 3), got {getattr(frame, 'shape', None)}")
        out = self._run(self._input(frame))
        self._check_output(list(out.shape))
        return decode_ssd(out, frame.shape[1], frame.shape[0], self.threshold, self.label)

    def _check_output(self, shape: list[Any]) -> None:
        """An SSD DetectionOutput ends in rows of 7 (image, label, score, box); a dynamic length passes."""
        last = shape[-1] if shape else None
        if len(shape) < 2 or (isinstance(last, int) and last != 7):
            raise WeightsError(f"{self.weights}: model output of shape {shape}, expected SSD detections [1, 1, N, 7]")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "weights_sha256": self.weights_sha256, "threshold": self.threshold}


def _input_hw(shape: list[Any], weights: Path) -> tuple[int, int]:
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[2:]):
        raise WeightsError(f"{weights}: expected a fixed-size image input (N, 3, H, W), got {shape}")
    return int(shape[2]), int(shape[3])


class OpenVinoSsdDetector(_SsdDetector):
    """An SSD-style OpenVINO IR detector (default: pedestrian-detection-adas-0002)."""

    name = "openvino-ssd"

    def __init__(self, weights: Path, threshold: float = 0.5, threads: Optional[int] = None, **kw: Any) -> None:
        super().__init__(weights, threshold, **kw)
        import openvino as ov

        if not weights.with_suffix(".bin").is_file():
            raise WeightsError(f"{weights}: the OpenVINO weights file {weights.with_suffix('.bin').name} is missing")
        check_model_file(weights)
        core = ov.Core()
        try:
            model = core.read_model(str(weights))
        except Exception as exc:
            raise WeightsError(f"{weights}: not a readable OpenVINO IR model ({str(exc).splitlines()[0]})") from None
        shape = [d.get_length() if d.is_static else None for d in model.inputs[0].get_partial_shape()]
        self.height, self.width = _input_hw(shape, weights)
        self._check_output([d.get_length() if d.is_static else None for d in model.outputs[0].get_partial_shape()])
        config = {"INFERENCE_NUM_THREADS": threads or default_threads(), "PERFORMANCE_HINT": "LATENCY"}
        self.request = core.compile_model(model, "CPU", config).create_infer_request()

    def _run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(next(iter(self.request.infer({0: x}).values())))


class OnnxSsdDetector(_SsdDetector):
    """An SSD-style ONNX detector run by ONNX Runtime (input NCHW, 0-255 pixels)."""

    name = "onnx-ssd"

    def __init__(self, weights: Path, threshold: float = 0.5, threads: Optional[int] = None, **kw: Any) -> None:
        super().__init__(weights, threshold, **kw)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or default_threads()
        try:
            self.session = ort.InferenceSession(str(weights), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise WeightsError(f"{weights}: not a readable ONNX model ({str(exc).splitlines()[0]})") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.height, self.width = _input_hw(list(inp.shape), weights)
        self._check_output(list(self.session.get_outputs()[0].shape))

    def _run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: x})[0])


register_detector("openvino-ssd", OpenVinoSsdDetector)
register_detector("onnx-ssd", OnnxSsdDetector)

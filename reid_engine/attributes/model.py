"""The pedestrian attribute model (OpenVINO) and the ``attributes`` annotator built on it.

The model is Open Model Zoo ``person-attributes-recognition-crossroad-0230``:
a (N, 3, 160, 80) BGR 0-255 crop in (normalisation compiled into the IR),
three outputs out: eight attribute probabilities (``groups.BINARY`` order) and
two normalised (x, y) points where the top and the bottom clothing colour can
be read. The annotator stores the probabilities, both points, and the CIE Lab
colour of a small patch around each point.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from ..assets import expand_user, shared_path
from ..encoders.openvino_runtime import check_model_file
from ..errors import WeightsError
from ..images import ImageLike, load_image
from .groups import BINARY, SLICES, WIDTH, vector_to_note

log = logging.getLogger(__name__)

#: name the annotator is registered and stored under
ANNOTATOR_NAME = "attributes"
MODEL_NAME = "person-attributes-recognition-crossroad-0230"
#: environment variable that points at another copy of the model's .xml
MODEL_ENV = "REID_ENGINE_ATTRIBUTE_MODEL"
DEFAULT_MODEL = ("weights", "intel", MODEL_NAME, "FP32", f"{MODEL_NAME}.xml")


@dataclass(frozen=True)
class AttributeInput:
    """What the network wants: size and colour order (the IR does mean/scale itself)."""

    height: int = 160
    width: int = 80
    color: str = "BGR"
    #: half-size of the colour patch around a model point, as a fraction of the crop height
    patch: float = 0.04


def default_model_path() -> Path:
    """``$REID_ENGINE_ATTRIBUTE_MODEL`` if set, else the shared Open Model Zoo copy."""
    env = os.environ.get(MODEL_ENV, "")
    return expand_user(env) if env.strip() else shared_path(*DEFAULT_MODEL)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def patch_lab(img_bgr: np.ndarray, point: np.ndarray, half: int) -> np.ndarray:
    """Median CIE Lab (L 0-100, a, b) of the square patch around a normalised (x, y) point."""
    h, w = img_bgr.shape[:2]
    x = int(np.clip(round(float(point[0]) * w), 0, w - 1))
    y = int(np.clip(round(float(point[1]) * h), 0, h - 1))
    patch = img_bgr[max(0, y - half) : y + half + 1, max(0, x - half) : x + half + 1]
    lab = cv2.cvtColor(patch.astype(np.float32) / 255.0, cv2.COLOR_BGR2Lab)
    return np.median(lab.reshape(-1, 3), axis=0).astype(np.float32)


class AttributeModel:
    """Runs the attribute network on the CPU; ``predict`` returns (N, groups.WIDTH) float32."""

    def __init__(
        self, weights: Optional[Path] = None, threads: Optional[int] = None, spec: AttributeInput = AttributeInput()
    ):
        import openvino as ov

        from ..encoders.base import default_threads

        self.weights = Path(weights) if weights is not None else default_model_path()
        self.spec = spec
        if not self.weights.is_file():
            raise WeightsError(f"{self.weights}: attribute model not found (set {MODEL_ENV} to its .xml)")
        is_ir = self.weights.suffix.lower() == ".xml"
        if is_ir and not self.weights.with_suffix(".bin").is_file():
            raise WeightsError(
                f"{self.weights}: the OpenVINO weights file {self.weights.with_suffix('.bin').name} is missing"
            )
        # the .bin holds the weights: its hash names the model in caches
        self.weights_sha256 = _sha256(self.weights.with_suffix(".bin") if is_ir else self.weights)
        check_model_file(self.weights)
        core = ov.Core()
        try:
            model = core.read_model(str(self.weights))
        except Exception as exc:
            raise WeightsError(f"{self.weights}: not a model OpenVINO can read ({str(exc).splitlines()[0]})") from None
        shapes = [tuple(o.get_partial_shape().get_min_shape()) for o in model.outputs]
        wide = [i for i, s in enumerate(shapes) if len(s) >= 2 and s[1] == len(BINARY)]
        points = [i for i, s in enumerate(shapes) if len(s) >= 2 and s[1] == 2]
        if len(wide) != 1 or len(points) != 2:
            raise WeightsError(f"{self.weights}: expected outputs [1,8,1,1], [1,2,1,1], [1,2,1,1]; got {shapes}")
        # the IR lists the top colour point (output "456") before the bottom one ("459");
        # checked on pku_reid_dev crops: mean y 0.33 for the first, 0.65 for the second
        self._out_attr, self._out_top, self._out_bottom = wide[0], points[0], points[1]
        inp = model.inputs[0]
        try:  # one call per batch instead of one per crop
            model.reshape({inp.get_any_name(): ov.PartialShape([-1, 3, spec.height, spec.width])})
        except Exception:
            log.debug("%s: batch dimension is fixed", self.weights.name)
        config = {
            "INFERENCE_NUM_THREADS": int(threads or default_threads()),
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
            "ENABLE_CPU_PINNING": False,
        }
        self.compiled = core.compile_model(model, "CPU", config)
        self.dynamic = self.compiled.inputs[0].get_partial_shape()[0].is_dynamic
        self._lock = threading.Lock()
        self._request = self.compiled.create_infer_request()

    @property
    def name(self) -> str:
        return MODEL_NAME

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        outs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        chunks = [batch] if self.dynamic else [batch[i : i + 1] for i in range(len(batch))]
        with self._lock:
            for chunk in chunks:
                res = self._request.infer({0: np.ascontiguousarray(chunk)})
                outs.append(tuple(  # type: ignore[arg-type]
                    np.asarray(res[self.compiled.outputs[i]]).reshape(len(chunk), -1)
                    for i in (self._out_attr, self._out_top, self._out_bottom)
                ))
        return tuple(np.concatenate(parts).astype(np.float32) for parts in zip(*outs))  # type: ignore[return-value]

    def predict_arrays(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """(N, WIDTH) attribute vectors of decoded BGR crops."""
        out = np.zeros((len(images), WIDTH), np.float32)
        for start in range(0, len(images), max(1, batch_size)):
            block = images[start : start + batch_size]
            x = np.stack([
                cv2.resize(im, (self.spec.width, self.spec.height), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
                for im in block
            ]).astype(np.float32)
            probs, top, bottom = self._infer(x)
            for j, im in enumerate(block):
                row = out[start + j]
                row[: len(BINARY)] = np.clip(probs[j], 0.0, 1.0)
                half = max(1, int(round(self.spec.patch * im.shape[0])))
                row[SLICES["top_color"]] = patch_lab(im, top[j], half)
                row[SLICES["bottom_color"]] = patch_lab(im, bottom[j], half)
                row[SLICES["top_point"]] = top[j]
                row[SLICES["bottom_point"]] = bottom[j]
        return out

    def predict(self, images: Sequence[ImageLike], batch_size: int = 32) -> np.ndarray:
        """(N, WIDTH) attribute vectors of crops given as paths or BGR arrays, in input order."""
        out = np.zeros((len(images), WIDTH), np.float32)
        for start in range(0, len(images), max(1, batch_size)):
            block = [load_image(im) for im in images[start : start + batch_size]]
            out[start : start + len(block)] = self.predict_arrays(block, batch_size)
        return out


class AttributeAnnotator:
    """The ``attributes`` annotator: one dict of probabilities, points and colours per crop."""

    name = ANNOTATOR_NAME

    def __init__(self, model: AttributeModel):
        self.model = model

    def annotate(self, images: Sequence[ImageLike]) -> list[dict[str, Any]]:
        return [vector_to_note(v) for v in self.model.predict(images)]


_MODELS: dict[str, AttributeModel] = {}
_MODELS_LOCK = threading.Lock()


def shared_model(weights: Optional[Path] = None) -> AttributeModel:
    """One loaded model per weights file for the process (loading takes a second)."""
    path = Path(weights) if weights is not None else default_model_path()
    key = str(path.resolve())
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = AttributeModel(path)
        return _MODELS[key]


def build_annotator(device: Optional[str] = None) -> AttributeAnnotator:
    """Registry factory: the annotator on the process-wide model."""
    return AttributeAnnotator(shared_model())

"""OpenVINO encoder for IR models (.xml + .bin) and ONNX files (OpenVINO reads both).

The crop normalisation (colour order, scale, mean/std) is compiled into the
model with OpenVINO's pre-processing API, so the encoder feeds it the resized
uint8 batch straight from the decode threads.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..errors import InvalidInputError, WeightsError
from .base import Encoder, EncoderSpec, default_threads
from .runtimes import candidate_runtimes

log = logging.getLogger(__name__)

def check_model_file(path: Path) -> None:
    """Refuse, before OpenVINO reads it, a file that is neither an IR (.xml with a ``<net>`` root) nor an .onnx file:
    OpenVINO offers other files to every front end, and some print their parser errors to stderr."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return
    if suffix != ".xml":
        raise WeightsError(f"{path}: expected an OpenVINO IR (.xml beside its .bin) or an .onnx file")
    try:
        with path.open("rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if b"<net" not in head:
        raise WeightsError(f"{path}: not an OpenVINO IR (no <net> element), expected a model .xml")


class OpenVinoEncoder(Encoder):
    """Runs a ReID model with OpenVINO on the CPU; input size read from the model."""

    def __init__(
        self,
        spec: EncoderSpec,
        weights: Path,
        weights_sha256: str,
        device: str = "cpu",
        threads: Optional[int] = None,
        model: Optional[bytes] = None,
        embed_preprocessing: bool = True,
        streams: Optional[int] = None,
    ) -> None:
        """``model``: serialized ONNX bytes to run instead of reading ``weights`` (weights still names the source).

        ``streams``: inference streams that run whole batches side by side (default 1: one
        request using every thread); ``threads``: total CPU threads (default all cores).
        """
        super().__init__(spec, weights, weights_sha256, device)
        import openvino as ov

        self.runtime = "openvino"
        core = ov.Core()
        try:
            if model is not None:
                ov_model = core.read_model(model, ov.Tensor(np.empty(0, np.uint8)))
            else:
                if weights.suffix.lower() == ".xml" and not weights.with_suffix(".bin").is_file():
                    raise WeightsError(
                        f"{weights}: the OpenVINO weights file {weights.with_suffix('.bin').name} is missing"
                    )
                check_model_file(weights)
                ov_model = core.read_model(str(weights))
        except WeightsError:
            raise
        except Exception as exc:
            raise WeightsError(f"{weights}: not a model OpenVINO can read ({str(exc).splitlines()[0]})") from None
        inp = ov_model.inputs[0]
        pshape = inp.get_partial_shape()
        if pshape.rank.is_dynamic or pshape.rank.get_length() != 4:
            raise WeightsError(f"{weights}: expected a 4-d image input (N, 3, H, W), got {pshape}")
        h_dim, w_dim = pshape[2], pshape[3]
        h = h_dim.get_length() if h_dim.is_static else self.preprocess_spec.height
        w = w_dim.get_length() if w_dim.is_static else self.preprocess_spec.width
        if (h, w) != (self.preprocess_spec.height, self.preprocess_spec.width):
            log.info("%s: model input is %dx%d; resizing crops to it", weights.name, h, w)
            self.preprocess_spec = dataclasses.replace(self.preprocess_spec, height=h, width=w)
        try:  # a dynamic batch lets one call run a whole batch
            ov_model.reshape({inp.get_any_name(): ov.PartialShape([-1, 3, h, w])})
        except Exception:
            log.debug("%s: batch dimension is fixed", weights.name)
        self.takes_uint8 = False
        if embed_preprocessing:
            try:
                ov_model = self._embed_preprocessing(ov_model)
                self.takes_uint8 = True
            except Exception as exc:  # an exotic graph: normalise in NumPy instead
                log.debug("%s: cannot embed preprocessing (%s)", weights.name, exc)
        if device != "cpu":  # OpenVINO's GPU plug-in drives Intel GPUs, not CUDA devices
            log.info("%s: OpenVINO runs on the CPU (device %s not used)", weights.name, device)
            self.device = "cpu"
        n_threads = int(threads or default_threads())
        self.streams = max(1, min(int(streams or 1), n_threads))
        config: dict = {
            "INFERENCE_NUM_THREADS": n_threads,
            # keep fp32 even on CPUs with bf16 units, so embeddings match the source model
            "INFERENCE_PRECISION_HINT": "f32",
            # pinned threads stall when another process holds their core (a shared machine)
            "ENABLE_CPU_PINNING": False,
        }
        if self.streams == 1:
            config["PERFORMANCE_HINT"] = "LATENCY"  # one request per batch with every thread on it
        else:
            config["NUM_STREAMS"] = self.streams  # whole batches run side by side, threads split
        self.compiled = core.compile_model(ov_model, "CPU", config)
        self.concurrent_batches = self.streams
        self._idle: "queue.SimpleQueue" = queue.SimpleQueue()
        for _ in range(self.streams):
            self._idle.put(self.compiled.create_infer_request())
        batch_dim = self.compiled.inputs[0].get_partial_shape()[0]
        self.dynamic = batch_dim.is_dynamic
        self.fixed_batch = 0 if self.dynamic else batch_dim.get_length()
        out = self._forward_uint8(np.zeros((1, h, w, 3), np.uint8))
        self.dim = int(out.shape[1])

    def _embed_preprocessing(self, ov_model):  # type: ignore[no-untyped-def]
        import openvino as ov
        from openvino.preprocess import PrePostProcessor

        spec = self.preprocess_spec
        ppp = PrePostProcessor(ov_model)
        ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
        ppp.input().model().set_layout(ov.Layout("NCHW"))
        steps = ppp.input().preprocess()
        steps.convert_element_type(ov.Type.f32)
        if spec.color == "RGB":
            steps.reverse_channels()
        # (x * scale - mean) / std == (x - mean / scale) / (std / scale)
        mean = [float(m) / spec.scale for m in spec.mean]
        std = [float(s) / spec.scale for s in spec.std]
        if any(m != 0.0 for m in mean):
            steps.mean(mean)
        if any(s != 1.0 for s in std):
            steps.scale(std)
        return ppp.build()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch)
        n = batch.shape[0]
        step = n if self.dynamic else self.fixed_batch
        slices = [batch[i : i + step] for i in range(0, n, step)]
        if slices[-1].shape[0] < step:  # a fixed batch size: pad the last slice
            pad = np.zeros((step - slices[-1].shape[0],) + batch.shape[1:], batch.dtype)
            slices[-1] = np.concatenate([slices[-1], pad])
        request = self._idle.get()  # thread-safe: concurrent batches each take their own request
        try:
            outs = [np.asarray(request.infer({0: s})[self.compiled.outputs[0]]) for s in slices]
        finally:
            self._idle.put(request)
        return np.concatenate([o.reshape(o.shape[0], -1) for o in outs])[:n]

    def _forward_uint8(self, batch: np.ndarray) -> np.ndarray:
        if self.takes_uint8:
            return self._infer(batch)
        return super()._forward_uint8(batch)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        if self.takes_uint8:
            raise InvalidInputError(f"encoder {self.name}: this OpenVINO model takes uint8 BGR batches")
        return self._infer(np.asarray(batch, dtype=np.float32))


def build_openvino(
    spec: EncoderSpec,
    weights: Path,
    sha: str,
    device: str,
    threads: Optional[int] = None,
    runtime: Union[str, None] = None,
    streams: Optional[int] = None,
) -> OpenVinoEncoder:
    """Build an OpenVINO encoder (``runtime`` may only be None, "auto" or "openvino")."""
    candidate_runtimes(dataclasses.replace(spec, runtimes=("openvino",)), device, runtime)  # rejects other pins
    return OpenVinoEncoder(spec, weights, sha, device, threads=threads, streams=streams)

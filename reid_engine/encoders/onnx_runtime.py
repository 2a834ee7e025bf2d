"""ONNX Runtime encoder for exported ReID models (.onnx)."""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..errors import WeightsError
from .base import Encoder, EncoderSpec, default_threads
from .runtimes import pick_exported_runtime

log = logging.getLogger(__name__)

#: models up to this size get one session per core (weights are duplicated per session)
SMALL_MODEL_BYTES = 64 << 20


class OnnxEncoder(Encoder):
    """Runs an exported ReID model with ONNX Runtime; input name and size read from the model."""

    def __init__(
        self,
        spec: EncoderSpec,
        weights: Path,
        weights_sha256: str,
        device: str = "cpu",
        threads: Optional[int] = None,
        model: Optional[bytes] = None,
        streams: Optional[int] = None,
    ) -> None:
        """``model``: serialized ONNX bytes to run instead of reading ``weights`` (weights still names the source).

        ``streams``: sessions that run whole batches side by side, each with
        ``threads / streams`` threads. Default: one single-threaded session per core
        for models up to 64 MB (no barrier between threads at every layer; measured
        faster than one session using every core), one session for larger models.
        """
        super().__init__(spec, weights, weights_sha256, device)
        import onnxruntime as ort

        self.runtime = "onnxruntime"
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        elif device != "cpu":
            log.warning("%s: ONNX Runtime has no CUDA provider here; running on the CPU", weights.name)
            self.device = "cpu"
        n_threads = int(threads or default_threads())
        if streams is None:
            size = len(model) if model is not None else (weights.stat().st_size if weights.is_file() else 0)
            small = size <= SMALL_MODEL_BYTES and providers[0] == "CPUExecutionProvider"
            streams = n_threads if small else 1
        self.streams = max(1, min(int(streams), n_threads))
        self._n_threads = n_threads
        self._providers = providers
        try:
            self._source: Union[bytes, str] = model if model is not None else str(weights)
            self.sessions = [self._new_session(max(1, n_threads // self.streams)) for _ in range(self.streams)]
            self.session = self.sessions[0]
        except Exception as exc:  # onnxruntime raises its own exception types
            raise WeightsError(f"{weights}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.concurrent_batches = self.streams
        self._wide: Any = None  # every thread on one session, for a call's only batch (``_forward_alone``)
        self._wide_lock = threading.Lock()
        self._idle: "queue.SimpleQueue" = queue.SimpleQueue()
        for session in self.sessions:
            self._idle.put(session)
        shape = list(inp.shape)
        if len(shape) != 4:
            raise WeightsError(f"{weights}: expected a 4-d image input (N, 3, H, W), got {shape}")
        if "float" not in inp.type:
            raise WeightsError(f"{weights}: expected a float image input, got {inp.type}")
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

    def _new_session(self, threads: int):  # type: ignore[no-untyped-def]
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle workers sleep instead of spinning, leaving the cores to the decode threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(self._source, sess_options=opts, providers=self._providers)

    def _forward_alone(self, batch: np.ndarray) -> np.ndarray:
        """A call's only batch (a query's images) on a session with every thread: one OSNet x0.25 crop took
        10.3 ms instead of 14.1 ms on 2 cores. Made on first use (only sessions of one thread each exist)."""
        if self.streams == 1:
            return self._forward(batch)
        with self._wide_lock:
            if self._wide is None:
                self._wide = self._new_session(self._n_threads)
        return self._run_batch(self._wide, batch)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        session = self._idle.get()  # thread-safe: concurrent batches each take their own session
        try:
            return self._run_batch(session, batch)
        finally:
            self._idle.put(session)

    def _run_batch(self, session, batch: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
        """``batch`` through ``session``, in slices of the model's fixed batch size when it has one."""
        step = self.fixed_batch or batch.shape[0]
        return np.concatenate([self._run_session(session, batch[i : i + step]) for i in range(0, batch.shape[0], step)])

    def _run_session(self, session, batch: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
        out = session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return out.reshape(out.shape[0], -1)


def build_onnx(
    spec: EncoderSpec,
    weights: Path,
    sha: str,
    device: str,
    threads: Optional[int] = None,
    runtime: Union[str, None] = None,
    streams: Optional[int] = None,
) -> Encoder:
    """Build an encoder for an .onnx file: ONNX Runtime, or OpenVINO when asked or when auto picks it."""
    chosen = pick_exported_runtime(spec, device, runtime)
    if chosen == "openvino":
        from .openvino_runtime import OpenVinoEncoder

        return OpenVinoEncoder(spec, weights, sha, device, threads=threads, streams=streams)
    return OnnxEncoder(spec, weights, sha, device, threads=threads, streams=streams)

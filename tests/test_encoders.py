"""Encoders: registry, preprocessing, the batching pipeline, ONNX Runtime and OpenVINO on real weights."""
from __future__ import annotations

import csv
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from reid_engine.encoders import create_encoder, get_spec, list_encoders
from reid_engine.encoders.preprocessing import normalize_batch, resize_to_spec
from reid_engine.errors import ImageReadError, InvalidInputError, UnknownEncoderError, WeightsError
from reid_engine.images import PreprocessSpec, preprocess

from .conftest import write_crops

INTEL = "intel.person-reidentification-retail-{}"


def cross_camera_metrics(features: np.ndarray, rows: list[dict]) -> tuple[float, float]:
    """Rank-1 and mAP (%) of query camera 01 against gallery camera 02, cosine distance."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchreid.reid.metrics import evaluate_rank
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    q = np.array([r["role"] == "query" for r in rows])
    pids = np.array([int(r["pid"]) for r in rows])
    cams = np.array([int(r["camid"]) for r in rows])
    dist = 1.0 - f[q] @ f[~q].T
    cmc, m_ap = evaluate_rank(dist, pids[q], pids[~q], cams[q], cams[~q], max_rank=10, use_cython=False)
    return 100 * float(cmc[0]), 100 * float(m_ap)


@pytest.fixture(scope="session")
def protocol(pku: Path) -> tuple[list[Path], list[dict]]:
    """The 592 pku_reid_dev crops (query camera 01, then gallery camera 02) and their rows."""
    with open(pku / "protocol_cross_camera.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: (r["role"] != "query", r["file"]))
    assert len(rows) == 592
    return [pku / r["file"] for r in rows], rows


@pytest.fixture(scope="session")
def ort_features(protocol, osnet_onnx) -> np.ndarray:
    """ONNX Runtime embeddings of all 592 crops: the reference every other path is held to."""
    enc = create_encoder("osnet_x0_25_msmt17.onnx", osnet_onnx, runtime="onnxruntime")
    return enc.encode(protocol[0], batch_size=64)


# -- preprocessing -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec",
    [
        PreprocessSpec(),
        PreprocessSpec(height=256, width=128, color="BGR", scale=1.0, mean=(0, 0, 0), std=(1, 1, 1)),
        PreprocessSpec(height=64, width=32, color="RGB", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="cubic"),
        PreprocessSpec(height=50, width=30, color="BGR", interpolation="area"),
        PreprocessSpec(height=40, width=20, interpolation="nearest"),
    ],
)
def test_batch_preprocessing_equals_the_per_image_reference(spec):
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((128, 48), (300, 97), (40, 20))]
    batch = np.stack([resize_to_spec(im, spec) for im in imgs])
    got = normalize_batch(batch, spec)
    want = np.stack([preprocess(im, spec) for im in imgs])
    assert got.shape == want.shape == (3, 3, spec.height, spec.width) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


# -- registry ------------------------------------------------------------------------------
def test_issue_encoders_are_registered_with_their_preprocessing():
    names = {s.name for s in list_encoders()}
    for arch in ("osnet_x0_25", "osnet_x0_5", "osnet_x0_75", "osnet_x1_0", "osnet_ain_x1_0", "osnet_ibn_x1_0"):
        spec = get_spec(arch)
        assert spec.runtime == "torch" and spec.dim == 512 and spec.default_weights is None
        assert (spec.preprocess.color, spec.preprocess.height, spec.preprocess.width) == ("RGB", 256, 128)
        assert spec.preprocess.mean == (0.485, 0.456, 0.406) and spec.preprocess.scale == pytest.approx(1 / 255)
    for model in ("0277", "0286", "0287", "0288"):
        spec = get_spec(INTEL.format(model))
        assert spec.runtime == "openvino" and spec.runtimes == ("openvino",)
        assert (spec.preprocess.color, spec.preprocess.scale, spec.preprocess.mean, spec.preprocess.std) == (
            "BGR", 1.0, (0, 0, 0), (1, 1, 1))
    assert {"transreid_vit_b16", "transreid_vit_s16", "onnx", "openvino", "osnet_x0_25_msmt17.onnx"} <= names


def test_torch_encoders_never_fall_back_to_downloading():
    with pytest.raises(WeightsError, match="no default weights"):
        create_encoder("osnet_x0_25")
    with pytest.raises(WeightsError, match="no such file, expected a weights file"):
        create_encoder("osnet_x0_25", "/nonexistent/osnet.pth")


def test_bad_options_are_typed_errors(osnet_onnx):
    with pytest.raises(InvalidInputError, match="unknown option.*colour.*expected.*runtime"):
        create_encoder("osnet_x0_25_msmt17.onnx", osnet_onnx, colour="RGB")
    with pytest.raises(InvalidInputError, match="runtime 'tensorrt'"):
        create_encoder("osnet_x0_25_msmt17.onnx", osnet_onnx, runtime="tensorrt")
    with pytest.raises(InvalidInputError, match="runs on openvino"):
        create_encoder(INTEL.format("0288"), runtime="onnxruntime")
    with pytest.raises(UnknownEncoderError, match="expected one of .*osnet_x0_25"):
        create_encoder("osnet_x9")


# -- the batching pipeline (a tiny deterministic encoder from conftest) ----------------------
@pytest.mark.parametrize("concurrent", [1, 3])
def test_order_and_failures_survive_batching_and_prefetch(tmp_path, tiny_weights, concurrent):
    paths = write_crops(tmp_path, 23)
    bad = tmp_path / "zz_broken.png"
    bad.write_bytes(b"not a png")
    items = paths[:5] + [bad] + paths[5:] + [tmp_path / "missing.png"]
    enc = create_encoder("tiny-test", tiny_weights)
    enc.concurrent_batches = concurrent  # 1: prefetching decode pool; 3: whole-batch workers
    one = np.concatenate([enc.encode([p], batch_size=1) for p in paths])
    for bs in (1, 4, 7, 64):
        res = enc.encode_files(items, batch_size=bs)
        assert res.ok == list(range(5)) + list(range(6, 24))
        assert [pos for pos, _ in res.failures] == [5, 24] and "zz_broken.png" in res.failures[0][1]
        np.testing.assert_allclose(res.features, one, rtol=1e-5, atol=1e-5)
    with pytest.raises(ImageReadError, match="zz_broken"):
        enc.encode(items, batch_size=4)
    arrays = [cv2.imread(str(p)) for p in paths[:3]]
    np.testing.assert_allclose(enc.encode(arrays), one[:3], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(enc.encode(np.stack(arrays)), one[:3], rtol=1e-5, atol=1e-5)


# -- exported models: ONNX Runtime and OpenVINO ---------------------------------------------
def test_openvino_runs_the_onnx_osnet_like_onnxruntime(protocol, ort_features, osnet_onnx):
    enc = create_encoder("osnet_x0_25_msmt17.onnx", osnet_onnx, runtime="openvino")
    assert enc.runtime == "openvino" and enc.describe()["runtime"] == "openvino" and enc.dim == 512
    got = enc.encode(protocol[0], batch_size=64)
    assert np.abs(got - ort_features).max() < 1e-3
    cos = (got * ort_features).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ort_features, axis=1)
    assert cos.min() > 0.9999


def test_default_exported_path_matches_onnxruntime(protocol, ort_features, osnet_onnx):
    enc = create_encoder(weights=osnet_onnx)  # runtime chosen automatically
    assert enc.runtime == get_spec("osnet_x0_25_msmt17.onnx").runtimes[0]
    got = enc.encode(protocol[0][::4])
    assert np.abs(got - ort_features[::4]).max() < 1e-3


def test_onnx_osnet_reaches_the_reference_accuracy(protocol, ort_features):
    rank1, m_ap = cross_camera_metrics(ort_features, protocol[1])
    assert abs(rank1 - 74.7) <= 0.5 and abs(m_ap - 60.6) <= 0.5, (rank1, m_ap)


@pytest.mark.parametrize(
    "model, reference",
    [
        ("0288", (84.8, 71.1)),
        pytest.param("0277", (94.3, 87.1), marks=pytest.mark.slow),  # a larger network: ~20 s here
    ],
)
def test_intel_models_reach_the_reference_accuracy(protocol, model, reference):
    enc = create_encoder(INTEL.format(model))
    desc = enc.describe()
    assert desc["dim"] == 256 and desc["runtime"] == "openvino" and desc["preprocess"]["color"] == "BGR"
    rank1, m_ap = cross_camera_metrics(enc.encode(protocol[0], batch_size=64), protocol[1])
    assert abs(rank1 - reference[0]) <= 0.5 and abs(m_ap - reference[1]) <= 0.5, (rank1, m_ap)


def test_openvino_embedded_preprocessing_equals_numpy_preprocessing(shared, pku):
    from reid_engine.encoders.openvino_runtime import OpenVinoEncoder

    spec = get_spec(INTEL.format("0288"))
    xml = shared / spec.default_weights
    files = sorted(pku.glob("00[14]/*.png"))
    embedded = OpenVinoEncoder(spec, xml, "x", "cpu")
    plain = OpenVinoEncoder(spec, xml, "x", "cpu", embed_preprocessing=False)
    assert embedded.takes_uint8 and not plain.takes_uint8
    np.testing.assert_allclose(embedded.encode(files), plain.encode(files), atol=1e-4)


def test_openvino_ir_without_its_bin_is_a_weights_error(tmp_path, shared):
    xml = shared / get_spec(INTEL.format("0288")).default_weights
    lone = tmp_path / xml.name
    shutil.copy(xml, lone)
    with pytest.raises(WeightsError, match=r"\.bin is missing"):
        create_encoder("openvino", lone)


def test_a_corrupt_onnx_file_is_a_weights_error(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    for runtime in ("onnxruntime", "openvino"):
        with pytest.raises(WeightsError, match="broken.onnx"):
            create_encoder("onnx", bad, runtime=runtime)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_parallel_streams_give_the_same_embeddings(pku, osnet_onnx, runtime):
    files = sorted(pku.glob("00[14]/*.png"))
    one = create_encoder("osnet_x0_25_msmt17.onnx", osnet_onnx, runtime=runtime, streams=1, threads=1)
    two = create_encoder("osnet_x0_25_msmt17.onnx", osnet_onnx, runtime=runtime, streams=2, threads=2)
    assert (one.streams, two.streams) == (1, 2)
    np.testing.assert_allclose(two.encode(files, batch_size=7), one.encode(files, batch_size=5), atol=1e-5)


def test_a_call_s_only_batch_runs_on_one_session_with_every_thread(pku, osnet_onnx):
    """A query's image cannot share the cores with another batch: it runs on a session of every thread (made
    on first use), and gives the embeddings of the sessions of one thread each."""
    files = sorted(pku.glob("00[14]/*.png"))[:9]
    enc = create_encoder("osnet_x0_25_msmt17.onnx", osnet_onnx, runtime="onnxruntime", streams=2, threads=2)
    calls = []
    real = enc._run_session
    enc._run_session = lambda session, batch: calls.append(session) or real(session, batch)
    many = enc.encode(files, batch_size=4)  # three batches side by side: the per-stream sessions
    assert enc._wide is None and set(calls) <= set(enc.sessions)
    calls.clear()
    one = np.concatenate([enc.encode([f]) for f in files])
    assert enc._wide is not None and calls == [enc._wide] * len(files)
    assert enc._wide.get_session_options().intra_op_num_threads == 2
    np.testing.assert_allclose(one, many, atol=1e-5)
    calls.clear()
    np.testing.assert_allclose(enc.encode(files, batch_size=32), many, atol=1e-5)  # one batch of 9: alone too
    assert calls == [enc._wide]


def test_declared_torch_options_match_the_real_builders():
    """The lazy torch builders declare their options; they must be exactly what the implementations take."""
    import inspect

    from reid_engine.encoders.builtin import TORCH_OPTIONS
    from reid_engine.encoders.registry import encoder_options, get_spec
    from reid_engine.encoders.torchreid_models import build_torchreid_encoder
    from reid_engine.encoders.transformer import build_vit_encoder

    for impl, name in ((build_torchreid_encoder, "osnet_x0_25"), (build_vit_encoder, "transreid_vit_s16")):
        params = list(inspect.signature(impl).parameters)[4:]
        assert tuple(params) == TORCH_OPTIONS
        assert encoder_options(get_spec(name)) == list(TORCH_OPTIONS)


def test_auto_device_without_an_nvidia_driver_is_cpu_without_loading_torch(tmp_path):
    """Resolving "auto" must not import torch (hundreds of MB) when no NVIDIA driver is present."""
    import subprocess
    import sys

    from reid_engine.encoders import base

    if any(__import__("os").path.exists(p) for p in base._NVIDIA_DEVICES):
        pytest.skip("an NVIDIA driver is present here")
    code = ("import sys; from reid_engine.encoders import resolve_device; "
            "print(resolve_device(None), resolve_device('auto'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["cpu", "cpu", "False"]

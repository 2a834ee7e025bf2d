"""torchreid OSNet: the ONNX weights importer, strict checkpoint loading, the torch path and the default path."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from reid_engine.encoders import create_encoder, encoder_name_for_weights, get_spec
from reid_engine.encoders.base import default_threads
from reid_engine.encoders.cli import convert_weights
from reid_engine.encoders.convert import convert_onnx_weights, onnx_to_torchreid
from reid_engine.encoders.fold import fold_batchnorm, trace_layers
from reid_engine.encoders.torchreid_models import build_torchreid_model
from reid_engine.errors import InvalidInputError, WeightsError

from .test_encoders import cross_camera_metrics, ort_features, protocol  # noqa: F401  shared fixtures


def assert_same_embeddings(got: np.ndarray, want: np.ndarray) -> None:
    """The issue's tolerance: max abs difference < 1e-3 and cosine > 0.9999 on every row."""
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-3
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.9999


@pytest.fixture(scope="session")
def converted(tmp_path_factory, osnet_onnx) -> Path:
    """The ONNX OSNet converted to a torchreid checkpoint (never stored in the repo)."""
    return convert_onnx_weights(osnet_onnx, tmp_path_factory.mktemp("weights") / "osnet_x0_25_msmt17.pth")


@pytest.fixture(scope="session")
def converted_state(converted) -> "OrderedDict[str, torch.Tensor]":
    return torch.load(str(converted), map_location="cpu", weights_only=True)


# -- the importer -----------------------------------------------------------------------------
def test_converted_state_dict_is_a_complete_torchreid_osnet(converted_state):
    model = build_torchreid_model("osnet_x0_25")
    expected = model.state_dict()
    assert list(converted_state) == list(expected)
    assert all(converted_state[k].shape == expected[k].shape for k in expected)
    # a folded pair: identity batch norm carrying the bias
    assert torch.all(converted_state["conv1.bn.weight"] == 1) and torch.all(converted_state["conv1.bn.running_mean"] == 0)
    assert converted_state["conv1.bn.bias"].abs().sum() > 0
    # named initializers map by name
    assert converted_state["conv2.0.gate.fc1.weight"].shape == (1, 16, 1, 1)
    assert converted_state["fc.1.running_var"].min() > 0 and not torch.all(converted_state["fc.1.running_var"] == 1)


def test_torch_on_converted_weights_equals_onnxruntime_on_all_592_crops(protocol, ort_features, converted):
    enc = create_encoder("osnet_x0_25", converted, runtime="torch")  # thread count tuned on probe crops
    assert enc.runtime == "torch" and enc.describe()["runtime"] == "torch" and enc.dim == 512
    assert enc.threads in (1, default_threads()) and enc.channels_last  # OSNet has depthwise convolutions
    assert_same_embeddings(enc.encode(protocol[0], batch_size=64), ort_features)


def test_default_osnet_path_equals_onnxruntime_on_all_592_crops(protocol, ort_features, converted):
    enc = create_encoder("osnet_x0_25", converted)  # the automatic choice
    assert enc.runtime == get_spec("osnet_x0_25").runtimes[0]
    features = enc.encode(protocol[0], batch_size=64)
    assert_same_embeddings(features, ort_features)
    rank1, m_ap = cross_camera_metrics(features, protocol[1])
    assert abs(rank1 - 74.7) <= 0.5 and abs(m_ap - 60.6) <= 0.5, (rank1, m_ap)


def test_importer_refuses_a_graph_of_another_architecture(osnet_onnx, tmp_path):
    with pytest.raises(WeightsError, match=r"does not convert to osnet_x0_5: \d+ of 187 Conv nodes do not fit"):
        onnx_to_torchreid(osnet_onnx, "osnet_x0_5")
    with pytest.raises(WeightsError, match="not a readable ONNX model"):
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"nope")
        onnx_to_torchreid(bad)


def test_importer_lists_unused_initializers(osnet_onnx, tmp_path):
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(osnet_onnx))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    extra = numpy_helper.from_array(np.zeros(512, np.float32), "fc.0.extra_bias")
    model.graph.initializer.append(extra)
    add = helper.make_node("BatchNormalization", [gemm.output[0], "fc.0.extra_bias", "fc.0.extra_bias",
                                                  "fc.0.extra_bias", "fc.0.extra_bias"], ["unused_out"])
    model.graph.node.append(add)
    path = tmp_path / "extra.onnx"
    onnx.save(model, str(path))
    with pytest.raises(WeightsError, match=r"unexpected \(unused\) initializers \(1\): fc.0.extra_bias"):
        onnx_to_torchreid(path)


def test_convert_weights_command(osnet_onnx, tmp_path):
    out = tmp_path / "w.pth"
    r = CliRunner().invoke(convert_weights, [str(osnet_onnx), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.is_file() and "matches ONNX Runtime" in r.output and "--encoder osnet_x0_25" in r.output
    r = CliRunner().invoke(convert_weights, [str(osnet_onnx), "--out", str(out)])
    assert r.exit_code == 1 and "already exists" in r.output and r.output.count("\n") == 1
    r = CliRunner().invoke(convert_weights, [str(osnet_onnx), "--out", str(tmp_path / "x.pth"), "--arch", "osnet_x1_0"])
    assert r.exit_code == 1 and "does not convert to osnet_x1_0" in r.output
    assert not (tmp_path / "x.pth").exists() and not (tmp_path / "x.pth.part").exists()
    with pytest.raises(InvalidInputError, match="no such folder"):
        convert_onnx_weights(osnet_onnx, tmp_path / "nowhere" / "w.pth")


# -- strict checkpoint loading ------------------------------------------------------------------
def test_standard_torchreid_checkpoint_layouts_load(converted_state, tmp_path, pku):
    files = sorted(pku.glob("001/*.png"))
    plain = tmp_path / "plain.pth"
    torch.save(converted_state, plain)
    want = create_encoder("osnet_x0_25", plain, runtime="torch", threads=1).encode(files)
    wrapped = OrderedDict(("module." + k, v) for k, v in converted_state.items())
    wrapped["module.classifier.weight"] = torch.zeros(4101, 512)  # MSMT17's identities
    wrapped["module.classifier.bias"] = torch.zeros(4101)
    tar = tmp_path / "model.pth.tar"
    torch.save({"state_dict": wrapped, "epoch": 150, "rank1": 0.7}, tar)
    got = create_encoder("osnet_x0_25", tar, runtime="torch", threads=1).encode(files)
    np.testing.assert_allclose(got, want, atol=1e-6)
    old = OrderedDict((k, v) for k, v in converted_state.items() if not k.endswith("num_batches_tracked"))
    torch.save(old, tmp_path / "old.pth")
    create_encoder("osnet_x0_25", tmp_path / "old.pth", runtime="torch", threads=1)


def test_any_other_key_difference_is_listed(converted_state, tmp_path):
    broken = OrderedDict(converted_state)
    del broken["conv3.0.conv2b.1.conv2.weight"]
    broken["head.weight"] = torch.zeros(3)
    broken["fc.0.bias"] = torch.zeros(256)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(WeightsError) as info:
        create_encoder("osnet_x0_25", path, runtime="torch")
    msg = str(info.value)
    assert "missing keys (1): conv3.0.conv2b.1.conv2.weight" in msg
    assert "unexpected keys (1): head.weight" in msg
    assert "shape mismatches (1): fc.0.bias (256,) (model (512,))" in msg


def test_pickled_objects_are_refused_unless_trusted(converted_state, tmp_path):
    path = tmp_path / "objects.pth"
    torch.save({"state_dict": converted_state, "config": Path("/somewhere")}, path)
    with pytest.raises(WeightsError, match="trust_pickle=True"):
        create_encoder("osnet_x0_25", path, runtime="torch")
    assert create_encoder("osnet_x0_25", path, runtime="torch", trust_pickle=True, threads=1).dim == 512


def test_the_architecture_is_recognised_from_the_checkpoint(converted, tmp_path):
    assert encoder_name_for_weights(converted) == "osnet_x0_25"
    other = tmp_path / "other.pth"
    torch.save({"w": torch.zeros(3)}, other)
    with pytest.raises(WeightsError, match="fits none of the registered torch models"):
        encoder_name_for_weights(other)


# -- the fast torch path --------------------------------------------------------------------------
def test_batchnorm_folding_keeps_the_output():
    torch.manual_seed(0)
    model = build_torchreid_model("osnet_x0_25")
    for m in model.modules():  # non-trivial statistics, or folding would be an identity
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(2, 3, 256, 128)
    n_norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    folded, count = fold_batchnorm(model, x)
    assert count == n_norms + 1  # every conv batch norm and the one after fc.0
    assert not any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in folded.modules())
    with torch.no_grad():
        np.testing.assert_allclose(folded(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-4)
    calls = trace_layers(model, x)
    assert calls[0].layer == "conv1.conv" and calls[0].norm == "conv1.bn"
    assert sum(c.layer == "conv2.0.gate.fc1" for c in calls) == 4  # the shared gate runs once per stream


def test_a_runtime_that_does_not_reproduce_torch_is_never_used(converted, monkeypatch, caplog):
    """Auto skips a non-matching export (here: a deliberately wrong one) and ends on torch; a pin raises."""
    from reid_engine.encoders import autoselect
    from reid_engine.encoders.torch_runtime import export_onnx

    torch.manual_seed(1)
    wrong = build_torchreid_model("osnet_x0_25")  # random weights: not what the checkpoint holds
    monkeypatch.setattr(autoselect, "export_onnx", lambda module, h, w: export_onnx(wrong, h, w))
    enc = create_encoder("osnet_x0_25", converted, threads=1)
    assert enc.runtime == "torch"
    assert "on onnxruntime differs from torch" in caplog.text and "on openvino differs from torch" in caplog.text
    with pytest.raises(WeightsError, match="osnet_x0_25 on openvino differs from torch"):
        create_encoder("osnet_x0_25", converted, runtime="openvino", threads=1)

"""The ViT ReID family: construction without downloads, shapes, determinism, strict save/load round trip."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

from reid_engine.encoders import create_encoder, encoder_name_for_weights, get_spec
from reid_engine.encoders.preprocessing import normalize_batch
from reid_engine.encoders.torch_runtime import probe_images
from reid_engine.encoders.transformer import VIT_CONFIGS, build_vit_reid
from reid_engine.errors import WeightsError


@pytest.fixture(scope="module")
def small() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_vit_reid("transreid_vit_s16")
    # a trained-looking neck, so the batch norm is not an identity
    model.bottleneck.running_mean.uniform_(-0.1, 0.1)
    model.bottleneck.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def small_weights(small, tmp_path_factory):
    path = tmp_path_factory.mktemp("vit") / "vit_s16.pth"
    torch.save(small.state_dict(), path)
    return path


def test_overlapping_patches_and_token_count(small):
    cfg = VIT_CONFIGS["transreid_vit_s16"]
    assert cfg.stride < cfg.patch_size and cfg.grid == (21, 10)
    assert small.base.pos_embed.shape == (1, 1 + 21 * 10, 384)
    assert small.base.patch_embed.proj.stride == (12, 12) and small.base.patch_embed.proj.kernel_size == (16, 16)
    assert small.bottleneck.num_features == 384


def test_forward_shapes_and_determinism(small):
    x = torch.from_numpy(normalize_batch(probe_images(256, 128, n=3), get_spec("transreid_vit_s16").preprocess))
    with torch.inference_mode():
        a = small(x)
        b = small(x)
        alone = small(x[1:2])
    assert a.shape == (3, 384) and a.dtype == torch.float32
    assert torch.equal(a, b)
    torch.testing.assert_close(alone, a[1:2], rtol=1e-4, atol=1e-5)  # a row does not depend on its batch
    assert not torch.allclose(a[0], a[1])


def test_vit_b16_is_the_base_size():
    torch.manual_seed(0)
    model = build_vit_reid("transreid_vit_b16")
    n_params = sum(p.numel() for p in model.parameters())
    assert 85e6 < n_params < 87e6  # ViT-B/16 (86M) with a 211-token position table
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 256, 128)).shape == (1, 768)


def test_save_load_round_trip_through_create_encoder(small, small_weights, pku):
    assert encoder_name_for_weights(small_weights) == "transreid_vit_s16"
    enc = create_encoder("transreid_vit_s16", small_weights, runtime="torch", threads=1)
    assert enc.dim == 384 and enc.describe()["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    crops = probe_images(256, 128, n=2)
    with torch.inference_mode():
        want = small(torch.from_numpy(normalize_batch(crops, enc.preprocess_spec))).numpy()
    np.testing.assert_allclose(enc.encode(list(crops)), want, rtol=1e-4, atol=1e-4)
    files = sorted(pku.glob("001/*.png"))[:4]
    np.testing.assert_allclose(enc.encode(files), enc.encode(files, batch_size=1), atol=1e-5)


def test_checkpoint_layouts_and_strictness(small, tmp_path):
    state = small.state_dict()
    wrapped = OrderedDict(("module." + k, v) for k, v in state.items())
    wrapped["module.classifier.weight"] = torch.zeros(751, 384)
    path = tmp_path / "trained.pth"
    torch.save({"model": wrapped}, path)
    assert create_encoder("transreid_vit_s16", path, runtime="torch", threads=1).dim == 384
    partial = OrderedDict((k, v) for k, v in state.items() if not k.startswith("base.blocks.11."))
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match=r"missing keys \(\d+\): base.blocks.11.attn.proj.bias"):
        create_encoder("transreid_vit_s16", tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match=r"shape mismatches \(154\): base.blocks.0.attn.proj.bias \(384,\) \(model \(768,\)\)"):
        create_encoder("transreid_vit_b16", tmp_path / "trained.pth")


def test_no_transformer_weights_are_bundled():
    for name in ("transreid_vit_b16", "transreid_vit_s16"):
        assert get_spec(name).default_weights is None
        with pytest.raises(WeightsError, match="no default weights"):
            create_encoder(name)


def test_default_vit_path_reproduces_torch(small_weights, pku):
    files = sorted(pku.glob("004/*.png"))[:6]
    auto = create_encoder("transreid_vit_s16", small_weights)
    assert auto.runtime == get_spec("transreid_vit_s16").runtimes[0] == "openvino"
    want = create_encoder("transreid_vit_s16", small_weights, runtime="torch", threads=1).encode(files)
    got = auto.encode(files)
    assert np.abs(got - want).max() < 1e-3
    assert ((got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)).min() > 0.9999

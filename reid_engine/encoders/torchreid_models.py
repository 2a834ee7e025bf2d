"""torchreid's OSNet family, built without downloads and loaded strictly."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Optional

from torch import nn

from ..errors import UnknownEncoderError
from .base import Encoder, EncoderSpec
from .checkpoints import build_and_load, read_state_dict

log = logging.getLogger(__name__)


def _torchreid_models():  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():  # torchreid warns at import that its Cython metrics are missing
        warnings.simplefilter("ignore")
        from torchreid.reid import models
    return models


def build_torchreid_model(arch: str) -> nn.Module:
    """A torchreid model in eval mode with random weights; nothing is downloaded.

    The identity classifier exists only for training, so it is replaced by an
    identity (no parameters): its keys in a checkpoint are dropped on load.
    """
    models = _torchreid_models()
    if arch not in getattr(models, "__model_factory", {}):
        raise UnknownEncoderError(f"unknown torchreid model {arch!r}")
    model = models.build_model(arch, num_classes=1, pretrained=False, use_gpu=False)
    model.classifier = nn.Identity()
    return model.eval()


def load_torchreid_model(arch: str, weights: Path, trust_pickle: bool = False) -> nn.Module:
    """Build ``arch`` and load a torchreid checkpoint into it strictly."""
    state = read_state_dict(weights, trust_pickle=trust_pickle)
    return build_and_load(lambda: build_torchreid_model(arch), state, str(weights))


def build_torchreid_encoder(
    spec: EncoderSpec,
    weights: Path,
    sha: str,
    device: str,
    runtime: Optional[str] = None,
    threads: Optional[int] = None,
    precision: str = "auto",
    channels_last: Optional[bool] = None,
    trust_pickle: bool = False,
    streams: Optional[int] = None,
) -> Encoder:
    """Builder for the registered torchreid encoders (the spec name is the architecture)."""
    from .autoselect import build_from_torch

    model = load_torchreid_model(spec.name, weights, trust_pickle=trust_pickle)
    return build_from_torch(
        spec,
        weights,
        sha,
        device,
        lambda: model,
        runtime=runtime,
        threads=threads,
        precision=precision,
        channels_last=channels_last,
        streams=streams,
    )

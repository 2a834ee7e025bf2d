"""Tell which registered torch model a checkpoint belongs to, from its keys and shapes."""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ..errors import WeightsError
from .checkpoints import read_state_dict

log = logging.getLogger(__name__)

Signature = frozenset  # of (key, shape)


def _signature(state: dict, drop_prefixes: tuple[str, ...] = ("classifier.",)) -> Signature:
    return frozenset(
        (k, tuple(v.shape))
        for k, v in state.items()
        if not k.startswith(drop_prefixes) and not k.endswith("num_batches_tracked")
    )


def _factories(keys: frozenset) -> dict[str, Callable[[], nn.Module]]:
    """Model builders worth comparing with a checkpoint that has these keys (imports only what is needed)."""
    if any(k.startswith("base.blocks.") for k in keys):
        from .transformer import VIT_CONFIGS, build_vit_reid

        return {n: functools.partial(build_vit_reid, n) for n in VIT_CONFIGS}
    from .builtin import OSNET_ARCHS
    from .torchreid_models import build_torchreid_model

    return {a: functools.partial(build_torchreid_model, a) for a in OSNET_ARCHS}


_SIGNATURES: dict[str, Signature] = {}


def _model_signature(name: str, make: Callable[[], nn.Module]) -> Signature:
    if name not in _SIGNATURES:
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            _SIGNATURES[name] = _signature(make().state_dict())
    return _SIGNATURES[name]


def guess_torch_encoder(weights: Path) -> Optional[str]:
    """The registered torch encoder whose parameters exactly fit the checkpoint, or None."""
    try:
        sig = _signature(read_state_dict(weights))
    except WeightsError as exc:
        log.debug("%s: cannot inspect (%s)", weights, exc)
        return None
    for name, make in _factories(frozenset(k for k, _ in sig)).items():
        if _model_signature(name, make) == sig:
            return name
    return None

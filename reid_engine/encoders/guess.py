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


def _factories() -> dict[str, Callable[[], nn.Module]]:
    from .builtin import OSNET_ARCHS
    from .torchreid_models import build_torchreid_model
    from .transformer import VIT_CONFIGS, build_vit_reid

    out: dict[str, Callable[[], nn.Module]] = {a: functools.partial(build_torchreid_model, a) for a in OSNET_ARCHS}
    out.update({n: functools.partial(build_vit_reid, n) for n in VIT_CONFIGS})
    return out


@functools.lru_cache(maxsize=None)
def _model_signature(name: str) -> Signature:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = _factories()[name]()
    return _signature(model.state_dict())


def guess_torch_encoder(weights: Path) -> Optional[str]:
    """The registered torch encoder whose parameters exactly fit the checkpoint, or None."""
    try:
        sig = _signature(read_state_dict(weights))
    except WeightsError as exc:
        log.debug("%s: cannot inspect (%s)", weights, exc)
        return None
    for name in _factories():
        if _model_signature(name) == sig:
            return name
    return None

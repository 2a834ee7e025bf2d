"""Reading torch checkpoints and loading them strictly into a model."""
from __future__ import annotations

import logging
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from ..errors import WeightsError

log = logging.getLogger(__name__)

#: keys under which training code nests the model's weights
_NESTED_KEYS = ("state_dict", "model", "model_state_dict")
#: buffers that carry no inference state; old checkpoints lack them
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)


def _listing(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def read_state_dict(path: Path, trust_pickle: bool = False) -> "OrderedDict[str, torch.Tensor]":
    """The tensors of a torch checkpoint (.pth, .pth.tar): unwrapped from ``state_dict`` and ``module.`` free.

    Only tensors and plain containers are unpickled unless ``trust_pickle`` is set
    (a pickle can run code; set it only for files you trust).
    """
    try:
        obj: Any = torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{path}: the checkpoint holds Python objects besides tensors; re-save its state_dict, "
            f"or load it with trust_pickle=True if you trust the file ({str(exc).splitlines()[0][:120]})"
        ) from None
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable torch checkpoint ({str(exc).splitlines()[0][:160]})") from None
    for key in _NESTED_KEYS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    state: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"{path}: entry {key!r} is a {type(value).__name__}, expected a tensor")
        state[key[len("module.") :] if key.startswith("module.") else key] = value
    return state


def load_strict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    drop_prefixes: tuple[str, ...] = ("classifier.",),
) -> None:
    """Load ``state`` into ``model``; any missing, unexpected or mis-shaped key raises WeightsError.

    Keys starting with ``drop_prefixes`` (the training-time identity classifier)
    are ignored, and so are missing ``num_batches_tracked`` counters.
    """
    state = {k: v for k, v in state.items() if not k.startswith(drop_prefixes)}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL_SUFFIXES)]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [
        f"{k} {tuple(state[k].shape)} (model {tuple(expected[k].shape)})"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if mis_shaped:
        problems.append(f"shape mismatches ({len(mis_shaped)}): {_listing(mis_shaped)}")
    if problems:
        raise WeightsError(f"{source}: weights do not fit the model: " + "; ".join(problems))
    result = model.load_state_dict(state, strict=False)
    leftover = [k for k in result.missing_keys if not k.endswith(_OPTIONAL_SUFFIXES)]
    if leftover or result.unexpected_keys:  # cannot happen after the checks above
        raise WeightsError(f"{source}: weights do not fit the model: {_listing(leftover + result.unexpected_keys)}")


def build_and_load(
    make_model: Callable[[], nn.Module],
    state: Mapping[str, torch.Tensor],
    source: str,
    drop_prefixes: tuple[str, ...] = ("classifier.",),
) -> nn.Module:
    """Build a model without initialising it (shapes on the meta device) and load ``state`` strictly.

    Skipping the random initialisation saves seconds on large models; strict
    loading guarantees every parameter and buffer comes from the checkpoint.
    """
    with torch.device("meta"):
        model = make_model()
    model = model.to_empty(device="cpu")
    for name, buf in model.named_buffers():
        if name.endswith(_OPTIONAL_SUFFIXES):
            buf.zero_()  # may be absent from old checkpoints; never read in eval mode
    load_strict(model, state, source, drop_prefixes)
    return model.eval()

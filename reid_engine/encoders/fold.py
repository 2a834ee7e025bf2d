"""Find convolution + batch-norm pairs by running the model, and fold them for inference.

Pairs are found from the data flow, not from module names: a batch norm is the
partner of a convolution when, on every call, its input is that convolution's
output tensor. The same trace gives the execution order of the convolutions,
which the ONNX weights importer follows.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Optional, Union, cast

import torch
from torch import nn

log = logging.getLogger(__name__)

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_LAYERS = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class LayerCall:
    """One call of a conv or linear layer during a forward pass, and the batch norm fed by it."""

    layer: str  # qualified module name
    norm: Optional[str]  # the BatchNorm applied directly to its output, if any


def trace_layers(model: nn.Module, example: torch.Tensor) -> list[LayerCall]:
    """Run ``model`` once and list every Conv2d/Linear call in execution order (repeats kept)."""
    names = {m: n for n, m in model.named_modules()}
    calls: list[list] = []  # [layer name, norm name or None]
    last_output: dict[int, int] = {}  # id(output tensor) -> index in calls
    outputs: list[torch.Tensor] = []  # keep outputs alive so their ids stay unique

    def on_layer(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        last_output[id(output)] = len(calls)
        outputs.append(output)
        calls.append([names[module], None])

    def on_norm(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        idx = last_output.get(id(inputs[0]))
        if idx is not None and calls[idx][1] is None:
            calls[idx][1] = names[module]

    handles = []
    for m in model.modules():
        if isinstance(m, _LAYERS):
            handles.append(m.register_forward_hook(on_layer))
        elif isinstance(m, _NORMS):
            handles.append(m.register_forward_hook(on_norm))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [LayerCall(layer, norm) for layer, norm in calls]


def foldable_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(layer, batch norm) pairs that are always called together and can be merged."""
    partner: dict[str, set] = {}
    norm_users: dict[str, set] = {}
    for call in trace_layers(model, example):
        partner.setdefault(call.layer, set()).add(call.norm)
        if call.norm is not None:
            norm_users.setdefault(call.norm, set()).add(call.layer)
    modules = dict(model.named_modules())
    pairs = []
    for layer, norms in partner.items():
        if len(norms) != 1 or None in norms:
            continue
        norm = next(iter(norms))
        bn = modules[norm]
        if len(norm_users[norm]) != 1 or not bn.track_running_stats or bn.running_var is None:
            continue
        pairs.append((layer, norm))
    return pairs


def _merged(layer: Union[nn.Conv2d, nn.Linear], bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    assert bn.running_var is not None and bn.running_mean is not None  # foldable_pairs keeps tracked norms only
    w = layer.weight.detach().double()
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    inv = bn.running_var.detach().double().add(bn.eps).rsqrt()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(inv)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(inv)
    scale = gamma * inv
    if isinstance(layer, nn.Conv2d):
        new: nn.Module = nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            # torch types these attributes as tuple[int, ...]; a Conv2d holds pairs
            cast(tuple[int, int], layer.kernel_size),
            stride=cast(tuple[int, int], layer.stride),
            padding=cast(Union[str, tuple[int, int]], layer.padding),
            dilation=cast(tuple[int, int], layer.dilation),
            groups=layer.groups,
            bias=True,
            padding_mode=layer.padding_mode,
        )
        new.weight.data = (w * scale.view(-1, 1, 1, 1)).to(layer.weight.dtype)
    else:
        new = nn.Linear(layer.in_features, layer.out_features, bias=True)
        new.weight.data = (w * scale.view(-1, 1)).to(layer.weight.dtype)
    new.bias.data = ((b - bn.running_mean.detach().double()) * scale + beta).to(layer.weight.dtype)
    return new.to(layer.weight.device)


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` with each conv/linear + batch-norm pair merged into one layer.

    Returns the copy and the number of pairs folded. Callers should check the
    copy against the original (a layer whose output also feeds something other
    than its batch norm would change that other consumer).
    """
    pairs = foldable_pairs(model, example)
    folded = copy.deepcopy(model).eval()
    modules = dict(folded.named_modules())
    for layer, norm in pairs:
        # foldable_pairs pairs a Conv2d/Linear with a BatchNorm1d/2d only
        merged = _merged(cast(Union[nn.Conv2d, nn.Linear], modules[layer]),
                         cast(nn.modules.batchnorm._BatchNorm, modules[norm]))
        folded.set_submodule(layer, merged)
        folded.set_submodule(norm, nn.Identity())
    log.debug("folded %d batch norms", len(pairs))
    return folded, len(pairs)

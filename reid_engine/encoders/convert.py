"""Import weights from a batch-norm-folded ONNX export back into a torchreid model.

An exporter that folds batch norm leaves each conv + BN pair as one ``Conv``
node whose weight and bias are renamed (``onnx::Conv_1047``); layers without a
batch norm keep their names (``conv2.0.gate.fc1.weight``, ``fc.0.weight``).
The importer runs the torchreid model once to list its convolutions in
execution order, pairs them with the graph's ``Conv`` nodes in graph order,
and checks each pair (kernel, stride, padding, groups, shape and, when the
node name carries it, the module path). A folded pair becomes the conv weight
plus an identity batch norm that adds the folded bias: weight 1, bias b,
running mean 0, running variance 1 - eps, so BN(x) = x + b.
"""
from __future__ import annotations

import logging
import re
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from ..assets import expand_user
from ..errors import InvalidInputError, WeightsError
from .fold import trace_layers
from .torch_runtime import torch_threads

log = logging.getLogger(__name__)

_OPTIONAL_SUFFIXES = ("num_batches_tracked",)


def _scope_path(node_name: str) -> Optional[str]:
    """Module path from an exporter node name.

    '/conv2/conv2.0/conv2b/conv2b.0/conv1/Conv' -> 'conv2.0.conv2b.0.conv1'
    """
    parts = [p for p in node_name.split("/") if p][:-1]  # drop the op name
    if not parts:
        return None
    path: list[str] = []
    prev = ""
    for part in parts:
        part = re.sub(r"_\d+$", "", part)  # repeated calls of a shared module: fc1_3
        local = part[len(prev) + 1 :] if prev and part.startswith(prev + ".") else part
        path.append(local)
        prev = part
    return ".".join(path)


def _attr(node, name: str, default):  # type: ignore[no-untyped-def]
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _check_conv(node, conv: nn.Conv2d, weight: np.ndarray, module: str) -> list[str]:  # type: ignore[no-untyped-def]
    problems = []
    if tuple(weight.shape) != tuple(conv.weight.shape):
        problems.append(f"weight shape {tuple(weight.shape)} vs {tuple(conv.weight.shape)}")
    if tuple(_attr(node, "strides", [1, 1])) != tuple(conv.stride):
        problems.append(f"stride {_attr(node, 'strides', [1, 1])} vs {list(conv.stride)}")
    if int(_attr(node, "group", 1)) != conv.groups:
        problems.append(f"groups {_attr(node, 'group', 1)} vs {conv.groups}")
    pads = list(_attr(node, "pads", [0, 0, 0, 0]))
    if pads[: len(pads) // 2] != list(conv.padding) or pads[len(pads) // 2 :] != list(conv.padding):
        problems.append(f"pads {pads} vs {list(conv.padding)}")
    scope = _scope_path(node.name)
    if scope is not None and scope != module:
        problems.append(f"node path {scope!r}")
    return [f"Conv node {node.name or node.output[0]!r} -> {module}: " + "; ".join(problems)] if problems else []


def onnx_to_torchreid(onnx_path: Union[str, Path], arch: str = "osnet_x0_25") -> "OrderedDict[str, torch.Tensor]":
    """Convert a batch-norm-folded ONNX export of ``arch`` into a torchreid state dict.

    Raises WeightsError when the graph does not fit the architecture, listing
    the layers that differ, the model keys left unfilled and the initializers
    left unused.
    """
    import onnx
    from onnx import numpy_helper

    from .torchreid_models import build_torchreid_model

    path = Path(onnx_path)
    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0]})") from None
    if not graph.input or not graph.initializer:
        raise WeightsError(f"{path}: an ONNX model with no inputs or no weights; expected an exported ReID model")
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    dims = graph.input[0].type.tensor_type.shape.dim
    h = dims[2].dim_value if len(dims) == 4 and dims[2].dim_value else 256
    w = dims[3].dim_value if len(dims) == 4 and dims[3].dim_value else 128

    model = build_torchreid_model(arch)
    modules = dict(model.named_modules())
    expected = model.state_dict()
    with torch_threads(1):
        traced = trace_layers(model, torch.zeros(1, 3, h, w))
    calls = [c for c in traced if isinstance(modules[c.layer], nn.Conv2d)]
    conv_nodes = [n for n in graph.node if n.op_type == "Conv"]
    if len(conv_nodes) != len(calls):
        raise WeightsError(
            f"{path}: the graph has {len(conv_nodes)} Conv nodes but {arch} runs {len(calls)} convolutions; "
            f"not an export of {arch}"
        )

    state: dict[str, np.ndarray] = {}
    used: set[str] = set()
    problems: list[str] = []

    def put(key: str, value: np.ndarray) -> None:
        if key in state and not np.array_equal(state[key], value):
            problems.append(f"{key}: a shared layer gets different weights on different calls")
        state[key] = value

    for node, call in zip(conv_nodes, calls):
        conv = modules[call.layer]
        wname = node.input[1]
        bname = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if wname not in inits or (bname is not None and bname not in inits):
            problems.append(f"Conv node {node.name!r}: weights are not initializers")
            continue
        weight = inits[wname]
        problems += _check_conv(node, conv, weight, call.layer)
        used.update(n for n in (wname, bname) if n)
        put(f"{call.layer}.weight", weight)
        bias = inits[bname] if bname else None
        if call.norm is not None:  # folded pair: conv weight + identity BN carrying the bias
            bn = modules[call.norm]
            channels = weight.shape[0]
            put(f"{call.norm}.weight", np.ones(channels, np.float32))
            put(f"{call.norm}.bias", bias if bias is not None else np.zeros(channels, np.float32))
            if getattr(bn, "track_running_stats", False):
                put(f"{call.norm}.running_mean", np.zeros(channels, np.float32))
                put(f"{call.norm}.running_var", np.full(channels, 1.0 - bn.eps, np.float32))
        elif bias is not None:
            if conv.bias is None:
                problems.append(f"Conv node {node.name!r} has a bias but {call.layer} has none and no batch norm")
            else:
                put(f"{call.layer}.bias", bias)
        elif conv.bias is not None:
            problems.append(f"Conv node {node.name!r} has no bias but {call.layer} has one")

    # everything else (fully connected layers, the final batch norm) kept its name
    for key, ref in expected.items():
        if key in state or key.endswith(_OPTIONAL_SUFFIXES) or key not in inits:
            continue
        value = inits[key]
        if value.shape != tuple(ref.shape) and value.ndim == 2 and value.T.shape == tuple(ref.shape):
            value = value.T  # a Gemm without transB stores the weight transposed
        put(key, value)
        used.add(key)

    if len(problems) > 3:
        problems = [f"{len(problems)} of {len(calls)} Conv nodes do not fit, e.g. {problems[0]}"]
    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL_SUFFIXES)]
    mis_shaped = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    weight_ops = {"Conv", "Gemm", "MatMul", "BatchNormalization", "InstanceNormalization"}
    param_inputs = {name for n in graph.node if n.op_type in weight_ops for name in n.input[1:]}
    unused = sorted(name for name in inits if name in param_inputs and name not in used)
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:12])}")
    if mis_shaped:
        problems.append(f"shape mismatches: {', '.join(mis_shaped[:12])}")
    if unused:
        problems.append(f"unexpected (unused) initializers ({len(unused)}): {', '.join(unused[:12])}")
    if problems:
        raise WeightsError(f"{path}: does not convert to {arch}: " + " | ".join(problems))

    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, ref in expected.items():
        if key in state:
            out[key] = torch.from_numpy(np.array(state[key], copy=True)).to(ref.dtype)
        else:  # num_batches_tracked
            out[key] = torch.zeros_like(ref)
    log.info("%s: converted %d Conv nodes and %d named tensors into %s", path.name, len(calls), len(out), arch)
    return out


def verify_conversion(
    onnx_path: Union[str, Path], state: "dict[str, torch.Tensor]", arch: str = "osnet_x0_25", n: int = 8
) -> tuple[float, float]:
    """Run torch (with ``state``) and ONNX Runtime on the same probe crops; return (max abs diff, min cosine)."""
    import onnxruntime as ort

    from ..images import PreprocessSpec
    from .preprocessing import normalize_batch
    from .torch_runtime import agreement, probe_images
    from .torchreid_models import build_torchreid_model

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    h = inp.shape[2] if isinstance(inp.shape[2], int) else 256
    w = inp.shape[3] if isinstance(inp.shape[3], int) else 128
    x = normalize_batch(probe_images(h, w, n=n), PreprocessSpec(height=h, width=w))
    expected = session.run(None, {inp.name: x})[0].reshape(n, -1)
    model = build_torchreid_model(arch)
    model.load_state_dict(state, strict=True)
    with torch.inference_mode(), torch_threads(1):
        got = model(torch.from_numpy(x)).numpy()
    return agreement(expected, got)


def convert_onnx_weights(
    onnx_path: Union[str, Path],
    out: Union[str, Path],
    arch: str = "osnet_x0_25",
    overwrite: bool = False,
    verify: bool = True,
) -> Path:
    """Convert an ONNX export into a torchreid checkpoint at ``out``; returns the path written.

    With ``verify`` the converted model must reproduce ONNX Runtime on probe
    crops (max abs difference < 1e-3, cosine > 0.9999) or nothing is written.
    """
    from .torch_runtime import MAX_ABS_DIFF, MIN_COSINE

    out = expand_user(out)
    if out.exists() and Path(onnx_path).exists() and out.samefile(onnx_path):
        raise InvalidInputError(f"{out}: is the ONNX file being converted; write the checkpoint to another file")
    if out.exists() and not overwrite:
        raise InvalidInputError(f"{out}: already exists (pass overwrite=True / --force to replace it)")
    if not out.parent.is_dir():
        raise InvalidInputError(f"{out.parent}: no such folder")
    state = onnx_to_torchreid(onnx_path, arch)
    if verify:
        diff, cos = verify_conversion(onnx_path, state, arch)
        if not (diff < MAX_ABS_DIFF and cos > MIN_COSINE):
            raise WeightsError(
                f"{onnx_path}: the converted {arch} differs from ONNX Runtime "
                f"(max abs diff {diff:.3g}, cosine {cos:.6f})"
            )
        log.info("%s: torch reproduces ONNX Runtime (max abs diff %.2g, cosine %.7f)", arch, diff, cos)
    tmp = out.with_name(out.name + ".part")
    torch.save(state, str(tmp))
    tmp.replace(out)
    return out

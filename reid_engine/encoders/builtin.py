"""The encoders reid-engine knows by name.

Builders for torch-defined families import torch lazily, so importing the
package stays cheap. ``runtimes`` orders are measured on a 2-core CPU
(docs/encoders.md); "auto" takes the first one.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

from ..images import PreprocessSpec
from .base import Encoder, EncoderSpec
from .onnx_runtime import build_onnx
from .openvino_runtime import build_openvino
from .registry import register_encoder

#: torchreid / ImageNet convention: RGB, /255, ImageNet mean and std
IMAGENET_RGB = PreprocessSpec(height=256, width=128, color="RGB", scale=1 / 255.0)
#: Intel Open Model Zoo convention: BGR, 0-255, no normalisation
OMZ_BGR = PreprocessSpec(height=256, width=128, color="BGR", scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
#: ViT ReID convention (TransReID test transform): RGB, /255, mean 0.5, std 0.5
VIT_RGB = PreprocessSpec(height=256, width=128, color="RGB", scale=1 / 255.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

#: fastest first for an exported OSNet on the CPU (measured; see docs/encoders.md)
EXPORTED_ORDER = ("onnxruntime", "openvino")
#: a torchreid model: exported in memory and run there when it reproduces torch, else torch
TORCHREID_ORDER = ("onnxruntime", "openvino", "torch")
#: the ViT family on the CPU
VIT_ORDER = ("openvino", "onnxruntime", "torch")

TORCH_SUFFIXES = (".pth", ".pth.tar", ".pt", ".tar")

#: torchreid architectures registered as encoders (the registry name is the architecture), with their dimension
OSNET_ARCHS: dict[str, int] = {
    "osnet_x0_25": 512,
    "osnet_x0_5": 512,
    "osnet_x0_75": 512,
    "osnet_x1_0": 512,
    "osnet_ain_x1_0": 512,
    "osnet_ibn_x1_0": 512,
}


#: options of the torch-defined families (see ``torchreid_models.build_torchreid_encoder``)
TORCH_OPTIONS = ("runtime", "threads", "precision", "channels_last", "trust_pickle", "streams")


def _lazy_builder(module: str, attr: str) -> Callable[..., Encoder]:
    """A builder that imports its torch-defined implementation only when called."""

    def build(spec: EncoderSpec, weights: Path, sha: str, device: str, **options: Any) -> Encoder:
        return getattr(importlib.import_module(module, __package__), attr)(spec, weights, sha, device, **options)

    build.__doc__ = f"Builds with {module.lstrip('.')}.{attr} (imported on first use)."
    return build


#: a torchreid checkpoint, loaded strictly, on the fastest runtime that reproduces it
build_torchreid = _lazy_builder(".torchreid_models", "build_torchreid_encoder")
#: a ViT ReID checkpoint, loaded strictly
build_transformer = _lazy_builder(".transformer", "build_vit_encoder")


register_encoder(
    EncoderSpec(
        name="onnx",
        runtime="onnxruntime",
        preprocess=IMAGENET_RGB,
        builder=build_onnx,
        weights_suffixes=(".onnx",),
        description="any exported ReID .onnx model (RGB, ImageNet mean/std; size read from the model)",
        runtimes=EXPORTED_ORDER,
    )
)
register_encoder(
    EncoderSpec(
        name="openvino",
        runtime="openvino",
        preprocess=OMZ_BGR,
        builder=build_openvino,
        weights_suffixes=(".xml",),
        description="any OpenVINO IR ReID model (BGR, 0-255; size read from the model)",
        runtimes=("openvino",),
    )
)
register_encoder(
    EncoderSpec(
        name="osnet_x0_25_msmt17.onnx",
        runtime="onnxruntime",
        preprocess=IMAGENET_RGB,
        builder=build_onnx,
        dim=512,
        default_weights="weights/osnet/osnet_x0_25_msmt17.onnx",
        weights_suffixes=(".onnx",),
        description="OSNet x0.25 trained on MSMT17, ONNX export (OpenVINO or ONNX Runtime)",
        runtimes=EXPORTED_ORDER,
    )
)
for _model, _precision in (("0277", "FP16"), ("0286", "FP16"), ("0287", "FP32"), ("0288", "FP32")):
    _name = f"person-reidentification-retail-{_model}"
    register_encoder(
        EncoderSpec(
            name=f"intel.{_name}",
            runtime="openvino",
            preprocess=OMZ_BGR,
            builder=build_openvino,
            dim=256,
            default_weights=f"weights/intel/{_name}/{_precision}/{_name}.xml",
            weights_suffixes=(".xml",),
            description=f"Intel Open Model Zoo {_name} ({_precision} IR) through OpenVINO",
            runtimes=("openvino",),
        )
    )
for _arch, _dim in OSNET_ARCHS.items():
    register_encoder(
        EncoderSpec(
            name=_arch,
            runtime="torch",
            preprocess=IMAGENET_RGB,
            builder=build_torchreid,
            options=TORCH_OPTIONS,
            dim=_dim,
            weights_suffixes=TORCH_SUFFIXES,
            description=f"torchreid {_arch} from a torchreid checkpoint (no weights bundled)",
            runtimes=TORCHREID_ORDER,
        )
    )
for _name, _dim, _what in (
    ("transreid_vit_b16", 768, "ViT-B/16"),
    ("transreid_vit_s16", 384, "ViT-S/16"),
):
    register_encoder(
        EncoderSpec(
            name=_name,
            runtime="torch",
            preprocess=VIT_RGB,
            builder=build_transformer,
            options=TORCH_OPTIONS,
            dim=_dim,
            weights_suffixes=TORCH_SUFFIXES,
            description=f"TransReID-style {_what}, stride-12 patches, BN-neck feature (bring your own checkpoint)",
            runtimes=VIT_ORDER,
        )
    )

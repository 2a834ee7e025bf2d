"""The encoders reid-engine knows by name."""
from __future__ import annotations

from ..images import PreprocessSpec
from .base import EncoderSpec
from .onnx_runtime import build_onnx
from .openvino_runtime import build_openvino
from .registry import register_encoder

#: torchreid / ImageNet convention: RGB, /255, ImageNet mean and std
IMAGENET_RGB = PreprocessSpec(height=256, width=128, color="RGB", scale=1 / 255.0)
#: Intel Open Model Zoo convention: BGR, 0-255, no normalisation
OMZ_BGR = PreprocessSpec(height=256, width=128, color="BGR", scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

register_encoder(
    EncoderSpec(
        name="onnx",
        runtime="onnxruntime",
        preprocess=IMAGENET_RGB,
        builder=build_onnx,
        weights_suffixes=(".onnx",),
        description="any exported ReID .onnx model (RGB, ImageNet mean/std; size read from the model)",
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
        description="OSNet x0.25 trained on MSMT17, ONNX export, through ONNX Runtime",
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
            default_weights=f"weights/intel/{_name}/{_precision}/{_name}.xml",
            weights_suffixes=(".xml",),
            description=f"Intel Open Model Zoo {_name} ({_precision} IR) through OpenVINO",
        )
    )

"""Encoders: a registry of named models, each a spec plus a runtime."""
from __future__ import annotations

from ..images import PreprocessSpec
from .base import EncodeResult, Encoder, EncoderSpec, resolve_device
from .registry import (
    DEFAULT_ENCODER,
    create_encoder,
    encoder_name_for_weights,
    get_spec,
    list_encoders,
    register_encoder,
)
from . import builtin as _builtin  # noqa: F401  registers the built-in encoders

__all__ = [
    "DEFAULT_ENCODER",
    "EncodeResult",
    "Encoder",
    "EncoderSpec",
    "PreprocessSpec",
    "create_encoder",
    "encoder_name_for_weights",
    "get_spec",
    "list_encoders",
    "register_encoder",
    "resolve_device",
]

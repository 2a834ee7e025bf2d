"""Registry of encoders: names resolve to specs, specs build encoders."""
from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Optional, Union

from ..assets import expand_user, shared_path
from ..errors import InvalidInputError, UnknownEncoderError, WeightsError
from ..images import file_sha256, why_not_a_file
from .base import Encoder, EncoderSpec, resolve_device

log = logging.getLogger(__name__)

_REGISTRY: dict[str, EncoderSpec] = {}

#: runtime chosen from a weights file's type when no encoder is named
GENERIC_BY_SUFFIX = {".onnx": "onnx", ".xml": "openvino"}


def register_encoder(spec: EncoderSpec, overwrite: bool = False) -> EncoderSpec:
    """Add an encoder spec to the registry under ``spec.name``."""
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"encoder {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_encoders() -> list[EncoderSpec]:
    """All registered encoder specs, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_spec(name: str) -> EncoderSpec:
    """The spec registered under ``name``; unknown names list the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownEncoderError(
            f"unknown encoder {name!r}: expected one of {', '.join(sorted(_REGISTRY))}"
        ) from None


def default_weights_path(spec: EncoderSpec) -> Optional[Path]:
    """Where the spec's default weights live in the shared assets, if it has any."""
    return shared_path(spec.default_weights) if spec.default_weights else None


def encoder_name_for_weights(weights: Union[str, Path]) -> str:
    """Pick an encoder from a weights file: a registered file name first, else its type."""
    p = Path(weights)
    for spec in list_encoders():
        if spec.default_weights and Path(spec.default_weights).name == p.name:
            return spec.name
    suffix = p.suffix.lower()
    if suffix in GENERIC_BY_SUFFIX:
        return GENERIC_BY_SUFFIX[suffix]
    if suffix in (".pth", ".tar", ".pt"):
        from .guess import guess_torch_encoder

        guessed = guess_torch_encoder(p)
        if guessed is not None:
            return guessed
        raise WeightsError(
            f"{p}: the checkpoint fits none of the registered torch models; name one with --encoder "
            f"(loading it then lists the keys that differ)"
        )
    raise WeightsError(
        f"{p}: cannot tell the runtime from the file type; expected .onnx, .xml (OpenVINO) "
        f"or a torchreid .pth/.pth.tar, or name an encoder with --encoder"
    )


def create_encoder(
    name: Optional[str] = None,
    weights: Optional[Union[str, Path]] = None,
    device: Optional[str] = None,
    **options,
) -> Encoder:
    """Build a ready-to-use encoder by registry name and/or weights file."""
    if name is None:
        if weights is None:
            name = DEFAULT_ENCODER
        else:
            name = encoder_name_for_weights(weights)
    spec = get_spec(name)
    if weights is None:
        weights = default_weights_path(spec)
        if weights is None:
            raise WeightsError(f"encoder {name!r} has no default weights: pass a weights file")
    wpath = expand_user(weights)
    if not wpath.is_file():
        raise WeightsError(f"{wpath}: {why_not_a_file(wpath)}, expected a weights file for encoder {name!r}")
    if spec.weights_suffixes and not any(str(wpath).lower().endswith(s) for s in spec.weights_suffixes):
        raise WeightsError(
            f"{wpath}: encoder {name!r} expects a {' or '.join(spec.weights_suffixes)} file"
        )
    _check_options(spec, options)
    sha = file_sha256(wpath)
    enc = spec.builder(spec, wpath.resolve(), sha, resolve_device(device), **options)
    log.info("encoder %s (%s) on %s, dim %d", name, enc.runtime, enc.device, enc.dim)
    return enc


def encoder_options(spec: EncoderSpec) -> Optional[list[str]]:
    """The keyword options ``create_encoder`` accepts for this spec (e.g. runtime, threads); None = any."""
    if spec.options is not None:
        return list(spec.options)
    params = list(inspect.signature(spec.builder).parameters.values())[4:]  # after spec, weights, sha, device
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _check_options(spec: EncoderSpec, options: dict) -> None:
    valid = encoder_options(spec)
    if valid is None:
        return
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise InvalidInputError(
            f"encoder {spec.name!r}: unknown option(s) {', '.join(unknown)}; "
            f"expected {', '.join(valid) or 'none'}"
        )


DEFAULT_ENCODER = "osnet_x0_25_msmt17.onnx"

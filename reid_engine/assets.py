"""Where the shared real assets (weights, videos, labelled data) live.

One helper for tests, benchmarks and the CLI's defaults: the environment
variable ``REID_ENGINE_SHARED`` wins; otherwise ``../shared`` beside the
current directory or beside the source checkout.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from .errors import InvalidInputError

ENV_VAR = "REID_ENGINE_SHARED"


def expand_user(path: Union[str, "os.PathLike[str]"]) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded; an unknown user is an InvalidInputError."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # pathlib: "Could not determine home directory."
        user = str(path).split("/", 1)[0]
        raise InvalidInputError(f"{path}: no user {user[1:]!r} to expand {user!r} for; expected a path") from None


def shared_dir() -> Path:
    """Return the shared assets folder (it may not exist)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return expand_user(env).resolve()
    candidates = [
        Path.cwd() / ".." / "shared",
        Path(__file__).resolve().parents[1] / ".." / "shared",
    ]
    for cand in candidates:
        if cand.is_dir():
            return cand.resolve()
    return candidates[0].resolve()


def shared_path(*parts: str) -> Path:
    """Path to an item inside the shared assets folder."""
    return shared_dir().joinpath(*parts)

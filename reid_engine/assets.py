"""Where the shared real assets (weights, videos, labelled data) live.

One helper for tests, benchmarks and the CLI's defaults: the environment
variable ``REID_ENGINE_SHARED`` wins; otherwise ``../shared`` beside the
current directory or beside the source checkout.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Union

from .errors import InvalidInputError

ENV_VAR = "REID_ENGINE_SHARED"


def expand_user(path: Union[str, "os.PathLike[str]"]) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded; an unknown user (or a value that is no path) is an
    InvalidInputError."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(f"{path!r} of type {type(path).__name__}: expected a path")
    try:
        return Path(path).expanduser()
    except RuntimeError:  # pathlib: "Could not determine home directory."
        user = str(path).split("/", 1)[0]
        raise InvalidInputError(f"{path}: no user {user[1:]!r} to expand {user!r} for; expected a path") from None


def resolved(path: Union[str, "os.PathLike[str]"]) -> Path:
    """``Path(path).resolve()``; a symbolic link loop on the way is an InvalidInputError naming the path."""
    try:
        return Path(path).resolve()
    except RuntimeError:  # Python < 3.13: "Symlink loop from ..."
        pass
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
    raise InvalidInputError(f"{path}: a loop of symbolic links; expected a path that leads to a file or folder")


def shared_dir() -> Path:
    """Return the shared assets folder (it may not exist)."""
    env = os.environ.get(ENV_VAR, "")
    if env.strip():  # a blank value counts as unset
        return resolved(expand_user(env))
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

"""Commands that live beside their capability, registered on the main group."""
from __future__ import annotations

import importlib
import logging

from . import main

log = logging.getLogger(__name__)

#: (module, attribute) of click commands defined outside cli/
PLUGIN_COMMANDS: list[tuple[str, str]] = [
    ("reid_engine.ingest.cli", "ingest_cmd"),
    ("reid_engine.eval.cli", "eval_command"),
    ("reid_engine.encoders.cli", "convert_weights"),
]

for _module, _attr in PLUGIN_COMMANDS:
    main.add_command(getattr(importlib.import_module(_module), _attr))

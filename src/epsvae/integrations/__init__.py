"""Adapters to other libraries, each importable only when its extra is installed.

`epsvae.integrations.diffusers` needs `pip install epsvae[diffusers]`; nothing in the core
imports this package. The helper below reads JSON only, so the CLI can route a directory
without importing diffusers.
"""

from __future__ import annotations

import json
from pathlib import Path


def is_diffusers_dir(directory: str | Path) -> bool:
    """Whether `directory` holds an `AutoencoderEps` saved in diffusers' format."""
    path = Path(directory) / "config.json"
    try:
        return json.loads(path.read_text()).get("_class_name") == "AutoencoderEps"
    except (OSError, ValueError):
        return False

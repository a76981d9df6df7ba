"""Writing a CLI's results: the JSON file that ``--json`` names, atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.atomic import atomic_write_with


def write_json(path: Path | None, results: Any) -> None:
    """Write ``results`` to ``path`` as indented JSON (nothing when ``path`` is None)."""
    if path is not None:
        atomic_write_with(path, lambda handle: handle.write(
            json.dumps(results, indent=2).encode()))

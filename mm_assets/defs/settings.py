"""Settings from the environment, read through `dg.EnvVar` when set, else the embedded default.

Every variable is listed in the README's settings table. With none set, the project runs on the
sample export in `data/` and the local sandbox.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_EXPORT_DIR = PROJECT_ROOT / "data" / "export"
STATE_DIR = PROJECT_ROOT / ".mm_assets"


def setting(name: str, default: str) -> str | dg.EnvVar:
    """`dg.EnvVar(name)` when the variable is set (so the UI shows its source), else `default`."""
    return dg.EnvVar(name) if os.environ.get(name) else default


def int_setting(name: str, default: int) -> int | dg.EnvVar:
    return dg.EnvVar.int(name) if os.environ.get(name) else default


def is_true(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes")


def env_settings(resource: type[dg.ConfigurableResource], **variables: str) -> dict[str, Any]:
    """The fields of `resource` whose environment variable is set, as `dg.EnvVar` (so the UI
    shows their source); the others are left out and keep their default, which is defined
    once, on the field. `variables` maps field names to variable names."""
    fields = resource.model_fields
    found: dict[str, Any] = {}
    for name, variable in variables.items():
        if not os.environ.get(variable):
            continue
        is_int = fields[name].annotation is int
        found[name] = dg.EnvVar.int(variable) if is_int else dg.EnvVar(variable)
    return found

"""The user's own folders for this tool, by the platform's rules, without importing
platformdirs on Linux (where the XDG rule is a few lines, and start-up counts)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

__all__ = ["user_dir"]

_XDG = {"cache": ("XDG_CACHE_HOME", "~/.cache"), "state": ("XDG_STATE_HOME", "~/.local/state")}


def user_dir(kind: Literal["cache", "state"]) -> Path | None:
    """This tool's folder in the user ``kind`` directory (``$XDG_CACHE_HOME/kontext-pipeline``
    or ``~/.cache/kontext-pipeline`` on Linux, a relative variable being ignored as the XDG
    rule says; the platform's own elsewhere); None when there is no home to find it in."""
    if sys.platform.startswith("linux"):
        variable, default = _XDG[kind]
        base = os.environ.get(variable, "")
        if not os.path.isabs(base):
            base = os.path.expanduser(default)
        if os.path.isabs(base):
            return Path(base) / "kontext-pipeline"
    try:
        import platformdirs  # noqa: PLC0415

        found = (platformdirs.user_cache_dir if kind == "cache" else
                 platformdirs.user_state_dir)("kontext-pipeline", appauthor=False)
    except (OSError, RuntimeError, KeyError):  # no home directory to be found
        return None
    return Path(found)

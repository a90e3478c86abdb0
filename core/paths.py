"""Where the daemon keeps its token, discovery file and logs (platformdirs, overridable)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "gimp-semantic"


def state_dir() -> Path:
    override = os.environ.get("SEMANTIC_STATE_DIR")
    return Path(override) if override else Path(platformdirs.user_state_dir(APP_NAME))


def log_dir() -> Path:
    override = os.environ.get("SEMANTIC_LOG_DIR")
    return Path(override) if override else Path(platformdirs.user_log_dir(APP_NAME))


def data_dir() -> Path:
    override = os.environ.get("SEMANTIC_DATA_DIR")
    return Path(override) if override else Path(platformdirs.user_data_dir(APP_NAME))


def discovery_file() -> Path:
    return state_dir() / "daemon.json"


def token_file() -> Path:
    return state_dir() / "token"

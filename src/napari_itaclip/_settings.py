"""Dock-widget settings kept between napari sessions, as JSON in the user config folder.

The file is `platformdirs.user_config_path("napari-itaclip") / "widget.json"`, or the path in
the environment variable NAPARI_ITACLIP_SETTINGS (tests point it at a temporary file). A
missing or unreadable file gives empty settings: the widget then shows its defaults.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SETTINGS_ENV = "NAPARI_ITACLIP_SETTINGS"


def settings_path() -> Path:
    override = os.environ.get(SETTINGS_ENV)
    if override:
        return Path(override)
    from platformdirs import user_config_path

    return user_config_path("napari-itaclip") / "widget.json"


def load_settings() -> dict:
    try:
        settings = json.loads(settings_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return settings if isinstance(settings, dict) else {}


def save_settings(settings: dict) -> None:
    path = settings_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=1), encoding="utf-8")
    except OSError:
        pass  # a read-only config folder must not break the widget; settings just do not persist

"""Where GIMP 3 keeps user plug-ins, per platform (standard library only: the installer uses it too)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

GIMP_VERSIONS = ("3.0", "3.2")
PLUGIN_NAME = "gimp-semantic"


@dataclass(frozen=True)
class GimpConfigDir:
    path: Path
    version: str
    flatpak: bool = False

    @property
    def plugins(self) -> Path:
        return self.path / "plug-ins"

    @property
    def plugin_folder(self) -> Path:
        return self.plugins / PLUGIN_NAME


def candidate_config_dirs(home: Path | None = None, platform: str | None = None) -> list[GimpConfigDir]:
    """Every GIMP 3 config dir this platform may use, existing or not; GIMP3_DIRECTORY first."""
    home = Path(home or Path.home())
    platform = platform or sys.platform
    found: list[GimpConfigDir] = []
    if os.environ.get("GIMP3_DIRECTORY"):
        found.append(GimpConfigDir(Path(os.environ["GIMP3_DIRECTORY"]), "3.x"))
    for version in GIMP_VERSIONS:
        if platform.startswith("win"):
            appdata = Path(os.environ.get("APPDATA", home / "AppData" / "Roaming"))
            found.append(GimpConfigDir(appdata / "GIMP" / version, version))
        elif platform == "darwin":
            found.append(GimpConfigDir(home / "Library" / "Application Support" / "GIMP" / version, version))
        else:
            xdg = Path(os.environ.get("XDG_CONFIG_HOME", home / ".config"))
            found.append(GimpConfigDir(xdg / "GIMP" / version, version))
            flatpak = home / ".var" / "app" / "org.gimp.GIMP" / "config" / "GIMP" / version
            found.append(GimpConfigDir(flatpak, version, flatpak=True))
    return found


def detect_config_dirs(home: Path | None = None, platform: str | None = None) -> list[GimpConfigDir]:
    """The config dirs that exist (GIMP has run at least once), or the default 3.0 one if none does."""
    candidates = candidate_config_dirs(home, platform)
    existing = [c for c in candidates if c.path.is_dir()]
    if existing:
        return existing
    native = [c for c in candidates if not c.flatpak and c.version == "3.0"]
    return native[:1]

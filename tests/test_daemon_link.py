"""The plug-in's daemon finder, run with plain Python exactly as installed (no GIMP needed for it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "installer"))


from core import __version__  # noqa: E402
from core.protocol import ErrorCode, SemanticError  # noqa: E402


def test_starts_the_daemon_when_none_runs_and_reuses_it(link):
    module, _, state = link
    statuses = []
    client = module.connect(statuses.append)
    assert statuses == ["Starting the gimp-semantic daemon"]
    health = client.health()
    assert health["version"] == __version__
    again = module.connect(statuses.append)
    assert again.port == client.port and len(statuses) == 1


def test_flatpak_gimp_gets_instructions_instead_of_a_spawn(link, monkeypatch):
    module, _, _ = link
    monkeypatch.setenv("FLATPAK_ID", "org.gimp.GIMP")
    with pytest.raises(Exception) as info:
        module.connect()
    assert "Flatpak" in str(info.value) and "gimp-semantic daemon" in str(info.value)


def test_version_mismatch_is_refused(link):
    module, folder, _ = link
    config = json.loads((folder / "config.json").read_text())
    with pytest.raises(Exception) as info:
        module.check_versions(config, {"version": "0.0.1", "protocol": 1})
    assert "different releases" in str(info.value) and "installer" in str(info.value)


def test_missing_config_says_how_to_install(link, monkeypatch):
    module, folder, _ = link
    (folder / "config.json").unlink()
    with pytest.raises(Exception) as info:
        module.load_config()
    assert "installer" in str(info.value)


def test_unstartable_daemon_command_is_a_clear_error(link):
    module, folder, _ = link
    config = json.loads((folder / "config.json").read_text())
    config["daemon_command"] = [str(folder / "no-such-program")]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception) as info:
        module.connect()
    assert "no-such-program" in str(info.value)


def test_protocol_errors_are_the_same_type_on_both_ends():
    error = SemanticError(ErrorCode.bad_input, "x")
    assert error.to_dict() == {"code": "bad_input", "message": "x"}

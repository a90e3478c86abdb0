"""The installer, into temporary folders only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "installer"))

import install  # noqa: E402

from core.gimp_dirs import GimpConfigDir, candidate_config_dirs, detect_config_dirs  # noqa: E402


def test_install_plugin_copies_folder_protocol_and_config(tmp_path):
    config_dir = GimpConfigDir(tmp_path / "GIMP" / "3.0", "3.0")
    settings = install.plugin_settings(["/opt/launcher"], tmp_path / "state")
    for _ in range(2):  # re-running is safe
        target = install.install_plugin(config_dir, settings)
    main = target / "gimp-semantic.py"
    assert os.access(main, os.X_OK)
    assert (target / "semantic_protocol.py").read_text() == (REPO / "core" / "protocol.py").read_text()
    for source in (REPO / "plug-ins" / "gimp-semantic").glob("*.py"):
        assert (target / source.name).read_text() == source.read_text()
    config = json.loads((target / "config.json").read_text())
    assert config["daemon_command"] == ["/opt/launcher"] and config["state_dir"] == str(tmp_path / "state")
    assert config["version"] and config["flatpak"] is False


def test_config_dirs_per_platform(tmp_path, monkeypatch):
    monkeypatch.delenv("GIMP3_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("APPDATA", str(tmp_path / "Roaming"))
    linux = candidate_config_dirs(tmp_path, "linux")
    assert tmp_path / ".config/GIMP/3.0" in [d.path for d in linux]
    assert any(d.flatpak and d.path == tmp_path / ".var/app/org.gimp.GIMP/config/GIMP/3.2" for d in linux)
    assert candidate_config_dirs(tmp_path, "win32")[0].path == tmp_path / "Roaming" / "GIMP" / "3.0"
    assert candidate_config_dirs(tmp_path, "darwin")[1].path == \
        tmp_path / "Library/Application Support/GIMP/3.2"
    # Nothing exists yet: the default 3.0 dir; once GIMP 3.2 (Flatpak) has run, that one.
    assert [d.path for d in detect_config_dirs(tmp_path, "linux")] == [tmp_path / ".config/GIMP/3.0"]
    (tmp_path / ".var/app/org.gimp.GIMP/config/GIMP/3.2").mkdir(parents=True)
    found = detect_config_dirs(tmp_path, "linux")
    assert len(found) == 1 and found[0].flatpak and found[0].version == "3.2"


def test_gimp3_directory_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("GIMP3_DIRECTORY", str(tmp_path / "custom"))
    (tmp_path / "custom").mkdir()
    assert detect_config_dirs(tmp_path, "linux")[0].path == tmp_path / "custom"


def test_uninstall_removes_only_what_it_installed(tmp_path):
    config_dir = GimpConfigDir(tmp_path / "gimp", "3.0")
    other_plugin = config_dir.plugins / "someone-else"
    other_plugin.mkdir(parents=True)
    install.install_plugin(config_dir, install.plugin_settings(["x"], tmp_path))
    data = tmp_path / "data"
    (data / "weights").mkdir(parents=True)
    install.uninstall([config_dir], data)
    assert not config_dir.plugin_folder.exists() and not data.exists() and other_plugin.exists()


def test_launcher_exports_weights_and_state(tmp_path):
    launcher = install.write_daemon_launcher(tmp_path, Path("/venv/bin/python"), tmp_path / "w", tmp_path / "s")
    text = launcher.read_text()
    assert os.access(launcher, os.X_OK) and "SEMANTIC_WEIGHTS_DIR" in text and "-m core daemon" in text


@pytest.mark.slow
def test_full_install_demo_and_uninstall(tmp_path):
    """The README's first command, into temporary folders: venv, package, weights, plug-in, doctor, demo."""
    env = dict(os.environ, HOME=str(tmp_path / "home"), XDG_STATE_HOME=str(tmp_path / "state"),
               XDG_CONFIG_HOME=str(tmp_path / "config"), PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("GIMP3_DIRECTORY", None)
    env.pop("SEMANTIC_WEIGHTS_DIR", None)
    command = [sys.executable, str(REPO / "installer" / "install.py"), "--data-dir", str(tmp_path / "data"),
               "--demo", "--demo-output", str(tmp_path / "demo")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    plugin = tmp_path / "config" / "GIMP" / "3.0" / "plug-ins" / "gimp-semantic"
    assert (plugin / "gimp-semantic.py").exists() and (plugin / "config.json").exists()
    assert "plug-in installed" in done.stdout
    page = tmp_path / "demo" / "index.html"
    assert str(page.resolve()) in done.stdout  # the demo says which file to open
    assert 'src="harmonize-input.png"' in page.read_text() and (page.parent / "harmonize-input.png").is_file()
    launcher = Path(json.loads((plugin / "config.json").read_text())["daemon_command"][0])
    assert launcher.exists()
    again = subprocess.run(command[:-3], env=env, capture_output=True, text=True, timeout=1500)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    removed = subprocess.run([*command[:4], "--uninstall"], env=env, capture_output=True, text=True)
    assert removed.returncode == 0 and not plugin.exists() and not (tmp_path / "data").exists()

"""The gimp-semantic command, in-process and through a running daemon."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.cli import main
from core.samples import composite
from tests.e2e.harness import start_daemon


@pytest.fixture
def files(tmp_path):
    image, mask = composite(120, 160)
    alpha = np.full(image.shape[:2] + (1,), 200, np.uint8)
    Image.fromarray(np.concatenate([image, alpha], -1)).save(tmp_path / "in.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return tmp_path


def test_harmonize_keeps_size_alpha_and_background(files):
    assert main(["harmonize", str(files / "in.png"), "--mask", str(files / "mask.png"),
                 "-o", str(files / "out.png"), "--method", "statistics", "--quiet"]) == 0
    source = np.asarray(Image.open(files / "in.png"))
    out = np.asarray(Image.open(files / "out.png"))
    mask = np.asarray(Image.open(files / "mask.png"))
    assert out.shape == source.shape and (out[..., 3] == 200).all()
    assert np.array_equal(out[mask == 0], source[mask == 0])
    assert np.abs(out[mask == 255].astype(int) - source[mask == 255]).mean() > 5


def test_invert_mask_and_strength(files):
    main(["harmonize", str(files / "in.png"), "--mask", str(files / "mask.png"), "-o", str(files / "a.png"),
          "--invert-mask", "--strength", "0.5", "--method", "statistics", "--quiet"])
    source = np.asarray(Image.open(files / "in.png"))
    out = np.asarray(Image.open(files / "a.png"))
    mask = np.asarray(Image.open(files / "mask.png"))
    assert np.array_equal(out[mask == 255], source[mask == 255])
    assert not np.array_equal(out[mask == 0], source[mask == 0])


@pytest.mark.parametrize("problem,needle", [("size", "same size"), ("missing", "not found"),
                                            ("strength", "strength")])
def test_bad_input_exits_2_with_a_message(files, capsys, problem, needle):
    mask = files / "mask.png"
    args = ["harmonize", str(files / "in.png"), "--mask", str(mask), "-o", str(files / "o.png"), "--quiet"]
    if problem == "size":
        Image.new("L", (10, 10)).save(mask)
    elif problem == "missing":
        args[1] = str(files / "nope.png")
    else:
        args += ["--strength", "2"]
    assert main(args) == 2
    assert needle in capsys.readouterr().err.lower()
    assert not (files / "o.png").exists()


def test_via_daemon_gives_the_same_pixels(files, tmp_path, monkeypatch):
    daemon = start_daemon(tmp_path / "state", "--idle-exit", "0")
    try:
        monkeypatch.setenv("SEMANTIC_STATE_DIR", str(tmp_path / "state"))
        base = ["harmonize", str(files / "in.png"), "--mask", str(files / "mask.png"), "--quiet"]  # deep
        assert main(base + ["-o", str(files / "local.png")]) == 0
        assert main(base + ["-o", str(files / "remote.png"), "--via-daemon"]) == 0
    finally:
        daemon.stop()
    assert np.array_equal(np.asarray(Image.open(files / "local.png")), np.asarray(Image.open(files / "remote.png")))


def test_via_daemon_without_daemon_is_a_clear_error(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEMANTIC_STATE_DIR", str(tmp_path / "nothing"))
    code = main(["harmonize", str(files / "in.png"), "--mask", str(files / "mask.png"), "-o",
                 str(files / "o.png"), "--via-daemon", "--quiet"])
    assert code == 2 and "gimp-semantic daemon" in capsys.readouterr().err


def test_model_cache_unloads_idle_entries():
    from core.actions.base import ModelCache

    cache = ModelCache(idle_s=0.0)
    assert cache.get("m", lambda: object()) is not None
    assert cache.unload_idle() == ["m"] and cache.keys() == []


def test_default_method_is_the_learned_colour_transform(files):
    from core.actions.harmonize import DEFAULT_METHOD

    assert DEFAULT_METHOD == "transform"
    assert main(["harmonize", str(files / "in.png"), "--mask", str(files / "mask.png"),
                 "-o", str(files / "deep.png"), "--quiet"]) == 0
    source = np.asarray(Image.open(files / "in.png"))
    out = np.asarray(Image.open(files / "deep.png"))
    mask = np.asarray(Image.open(files / "mask.png"))
    assert np.array_equal(out[mask == 0], source[mask == 0]) and (out[..., 3] == 200).all()
    assert not np.array_equal(out[mask == 255], source[mask == 255])

"""The colorization part of bench/propagation.py: which photos it draws, the gray and the strokes it
makes, Levin et al.'s solve in both colour spaces, its statistics and how it writes its JSON entry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.propagation import (
    colour_photos,
    colour_strokes,
    delta_e,
    gray_of,
    levin_colorize,
    merge_entry,
    split_of,
    with_overrides,
)
from core.imaging.color import rgb_to_lab
from core.propagation.pipeline import configured

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
RED, GREEN, BLUE = (200, 40, 30), (40, 160, 60), (50, 70, 190)


def three_colour_photo(h=120, w=180) -> np.ndarray:
    photo = np.zeros((h, w, 3), np.uint8)
    photo[:, : w // 3], photo[:, w // 3 : 2 * w // 3], photo[:, 2 * w // 3 :] = RED, GREEN, BLUE
    return photo


def test_drawn_photos_mix_sources_and_never_include_the_dev_quarter():
    if not (DATASETS / "davis").is_dir():
        pytest.skip("../shared/datasets not present")
    bench = colour_photos(DATASETS, 8, "bench")
    assert len(bench) >= 16 and bench == colour_photos(DATASETS, 8, "bench")  # a fixed rule
    assert len({key.rsplit("/", 1)[0] for key, _ in bench}) >= 4
    # The BSDS photos DeepProp's colorization settings were chosen on are the "bsds/<id>" dev quarter.
    assert all(split_of(f"bsds/{path.stem}") == "bench" for key, path in bench if key.startswith("bsds500/"))
    dev = colour_photos(DATASETS, 1000, "dev")
    assert not {key for key, _ in bench} & {key for key, _ in dev}
    davis = [key.rsplit("_", 1)[0] for key, _ in bench if key.startswith("davis/")]
    assert len(davis) == len(set(davis)), "one frame per DAVIS sequence"


def test_gimp_gray_keeps_lightness_and_luma_gray_keeps_luma():
    photo = three_colour_photo().astype(np.float32) / 255
    gray = gray_of(photo)
    lab, original = rgb_to_lab(gray), rgb_to_lab(photo)
    # GIMP keeps the luminance under its D50-adapted primaries: L* within ~1 of the D65 one.
    assert np.abs(lab[..., 1:]).max() < 0.5 and np.abs(lab[..., 0] - original[..., 0]).max() < 1.5
    luma = gray_of(photo, "luma")[..., 0]
    assert np.abs(luma - photo @ np.array([0.299, 0.587, 0.114])).max() <= 0.5 / 255 + 1e-6
    assert np.abs(luma - gray[..., 0]).max() > 0.05  # the two grays differ on saturated colours


def test_each_colour_region_gets_a_stroke_of_its_own_colour():
    photo = three_colour_photo()
    raster = colour_strokes(photo)
    painted = raster[..., 3] > 0
    for colour, columns in zip((RED, GREEN, BLUE), (slice(0, 60), slice(60, 120), slice(120, 180))):
        here = painted[:, columns]
        assert here.sum() > 50
        assert (raster[:, columns][here][:, :3] == colour).all()


@pytest.mark.parametrize("space", ["yiq", "lab"])
def test_levin_fills_each_region_with_its_strokes_colour(space):
    photo = three_colour_photo()
    truth = photo.astype(np.float32) / 255
    gray = gray_of(truth)
    raster = colour_strokes(photo)
    result = levin_colorize(gray, raster[..., :3].astype(np.float32) / 255, raster[..., 3] > 0, space)
    assert delta_e(result, truth) < 0.25 * delta_e(gray, truth)
    if space == "lab":  # L* kept from the gray
        assert np.abs(rgb_to_lab(result)[..., 0] - rgb_to_lab(gray)[..., 0]).max() < 0.5


def test_merge_entry_keeps_the_other_entries(tmp_path):
    path = tmp_path / "propagation.json"
    path.write_text(json.dumps({"quality": {"f1": 0.9}, "colorization": {"old": True}}))
    merge_entry(path, "colorization", {"photos": []})
    assert json.loads(path.read_text()) == {"quality": {"f1": 0.9}, "colorization": {"photos": []}}
    merge_entry(tmp_path / "new.json", "colorization", {"photos": []})
    assert json.loads((tmp_path / "new.json").read_text()) == {"colorization": {"photos": []}}


def test_set_overrides_read_false_as_false_at_both_levels():
    options = configured("select", "semantic")
    assert options.local_corrections and options.smoothing.snap_band > 0
    changed = with_overrides(options, ["local_corrections=false", "smoothing.snap_band=0", "color_space=luma"])
    assert changed.local_corrections is False and changed.smoothing.snap_band == 0
    assert changed.color_space == "luma" and with_overrides(changed, ["local_corrections=yes"]).local_corrections

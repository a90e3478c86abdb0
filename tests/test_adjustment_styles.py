"""The generated training effects (Foreground Pop-Out, Local Xpro, Watercolor) and the data readers."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import adjustment_styles as styles
from core.imaging.color import rgb_to_lab
from core.protocol import SemanticError

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def photo(h: int = 60, w: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([0.5 + 0.3 * np.sin(6 * x), 0.4 + 0.3 * y, 0.5 - 0.2 * x], -1)
    return np.clip(base + 0.05 * rng.standard_normal((h, w, 3)), 0, 1).astype(np.float32)


def chroma(rgb: np.ndarray) -> np.ndarray:
    lab = rgb_to_lab(rgb)
    return np.hypot(lab[..., 1], lab[..., 2])


def test_pop_out_raises_foreground_and_lowers_background():
    rgb = photo()
    mask = np.zeros(rgb.shape[:2], np.float32)
    mask[15:45, 20:60] = 1
    out = styles.pop_out(rgb, mask)
    inner, outer = np.zeros_like(mask, bool), np.ones_like(mask, bool)
    inner[22:38, 28:52] = True
    outer[8:52, 12:68] = False
    assert chroma(out)[inner].mean() > 1.2 * chroma(rgb)[inner].mean()
    assert chroma(out)[outer].mean() < 0.6 * chroma(rgb)[outer].mean()
    l_in, l_out = rgb_to_lab(rgb)[..., 0], rgb_to_lab(out)[..., 0]
    assert l_out[inner].std() > l_in[inner].std() and l_out[outer].std() < l_in[outer].std()
    assert np.array_equal(out, styles.pop_out(rgb, mask)), "the generator must be deterministic"


def test_local_xpro_depends_on_the_class():
    rgb = np.full((40, 60, 3), 0.5, np.float32)
    labels = np.zeros((40, 60), np.uint8)
    labels[:, :20] = 28  # sky
    labels[:, 20:40] = 32  # tree
    out = rgb_to_lab(styles.local_xpro(rgb, labels))
    crossed = rgb_to_lab(styles.cross_process(rgb))
    sky, tree, unlabeled = out[:, 5], out[:, 25], out[:, 55]
    assert np.allclose(unlabeled, crossed[:, 55], atol=1e-3), "unlabeled pixels keep the cross-processed look"
    assert sky[:, 2].mean() < crossed[0, 5, 2] - 5, "sky turns bluer"
    assert tree[:, 1].mean() < crossed[0, 25, 1] - 4, "vegetation turns greener"
    dark, bright = np.full((1, 1, 3), 0.2, np.float32), np.full((1, 1, 3), 0.8, np.float32)
    assert styles.cross_process(dark)[0, 0, 2] > 0.2 > styles.cross_process(dark)[0, 0, 0], "blue shadows"
    assert styles.cross_process(bright)[0, 0, 2] < 0.8 < styles.cross_process(bright)[0, 0, 0], "warm highlights"


def test_slic_makes_compact_superpixels_and_watercolor_is_deterministic():
    rgb = photo(64, 96)
    labels = styles.slic(rgb_to_lab(rgb), region=16)
    count = len(np.unique(labels))
    assert 12 <= count <= 30
    assert labels.shape == (64, 96)
    mask = np.zeros((64, 96), np.float32)
    mask[16:48, 24:72] = 1
    a, b = styles.watercolor(rgb, mask), styles.watercolor(rgb, mask)
    assert np.array_equal(a, b)
    assert not np.allclose(a, styles.pop_out(rgb, mask), atol=0.02), "the brush effect must show"
    # the brush is the fixed part the network does not learn: the target is the colour part of the brushed photo
    brushed = styles.network_input("watercolor", rgb)
    assert np.array_equal(a, styles.watercolor_colour(brushed, mask))
    assert np.array_equal(styles.network_input("pop-out", rgb), rgb)
    # its colour part is its own, not Pop-Out's: a pale, lighter ground instead of a darker one
    ground = np.zeros((64, 96), bool)
    ground[:8] = True
    l_in = rgb_to_lab(brushed)[..., 0][ground].mean()
    assert rgb_to_lab(a)[..., 0][ground].mean() > l_in + 5
    assert rgb_to_lab(styles.pop_out(brushed, mask))[..., 0][ground].mean() < l_in - 3


def test_brush_on_a_large_photo_finds_superpixels_on_a_smaller_copy():
    rgb = photo(300, 1100)
    out = styles.superpixel_brush(rgb, max_side=256)
    assert out.shape == rgb.shape
    assert np.array_equal(out, styles.superpixel_brush(rgb, max_side=256))


def test_split_is_stable_and_takes_about_the_stated_share():
    keys = [f"siftflow/img{i}" for i in range(2000)]
    held = [k for k in keys if styles.is_held_out(k)]
    assert abs(len(held) / len(keys) - styles.HELD_OUT_PERCENT / 100) < 0.03
    assert held == [k for k in keys if styles.is_held_out(k)]
    select = [k for k in keys if styles.split_of(k) == "select"]
    assert abs(len(select) / len(keys) - styles.SELECT_PERCENT / 100) < 0.03
    assert not set(select) & set(held), "checkpoints are never picked on the bench's photos"


def test_paired_folder_layout(tmp_path):
    (tmp_path / "input").mkdir()
    (tmp_path / "output").mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (8, 8)).save(tmp_path / "input" / f"{name}.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "output" / "a.jpg")
    found = styles.read_paired_folder(tmp_path)
    assert [(n, p.name, q.name) for n, p, q in found] == [("a", "a.png", "a.jpg")]
    with pytest.raises(SemanticError):
        styles.read_paired_folder(tmp_path / "input")


def test_unknown_style_is_a_clear_error(tmp_path):
    with pytest.raises(SemanticError, match="Unknown style"):
        styles.list_samples(tmp_path, "sepia")
    with pytest.raises(SemanticError, match="No source photos"):
        styles.list_samples(tmp_path, "xpro")


@pytest.mark.skipif(not (DATASETS / "davis").is_dir(), reason="../shared/datasets/davis not present")
def test_generated_pairs_from_the_datasets():
    samples = styles.list_samples(DATASETS, "pop-out")
    sources = {s.key.split("/")[0] for s in samples}
    assert sources == {"davis", "coco128-seg", "ccp", "photos-with-masks"}, "real object masks only"
    assert all(s.kind == "mask" and s.annotation != s.image for s in samples)
    for split in styles.SPLITS:
        assert any(styles.split_of(s.key) == split for s in samples)
    # DAVIS frames of one sequence are near-duplicates: a sequence is wholly in one split
    by_sequence = {}
    for s in samples:
        if s.key.startswith("davis/"):
            by_sequence.setdefault(s.key, set()).add(styles.split_of(s.key))
    assert len(by_sequence) == 15 and all(len(v) == 1 for v in by_sequence.values())
    rgb, mask = styles.load_sample(next(s for s in samples if s.key.startswith("photos-with-masks/")))
    assert mask.shape == rgb.shape[:2] and 0 < mask.mean() < 1
    # scene-parsing labels come from SIFT Flow photos that Local Xpro does not use
    parse = {s.key for s in styles.parse_samples(DATASETS)}
    xpro = {s.key for s in styles.list_samples(DATASETS, "xpro")}
    assert len(parse) > 300 and not parse & xpro

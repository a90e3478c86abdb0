"""Synthetic harmonization composites: appearance transfer, regions, splits, iHarmony4 layout, cache."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from core.data.harmonization import (
    IGNORE_LABEL,
    TRANSFER_METHODS,
    SemanticIndex,
    Source,
    list_iharmony4,
    list_sources,
    load_cache,
    make_sample,
    render_cache,
    split_sources,
    transfer_appearance,
)
from core.imaging.color import rgb_to_lab

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _photo(seed: int, size=(96, 128), tint=(0.5, 0.5, 0.5)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.array(tint, np.float32) + 0.15 * rng.standard_normal((*size, 3)).astype(np.float32)
    return (np.clip(cv2.GaussianBlur(base, (0, 0), 2), 0, 1) * 255).astype(np.uint8)


@pytest.fixture
def tiny_datasets(tmp_path):
    """A datasets root with SIFT Flow-like labels, DAVIS-like masks and BSDS-like segments."""
    root = tmp_path / "datasets"
    (root / "siftflow/train/labels").mkdir(parents=True)
    for i in range(6):
        tint = (0.2 + 0.1 * i, 0.5, 0.6)
        _write_rgb(root / "siftflow/train/images" / f"scene_{i}.jpg", _photo(i, (64, 64), tint))
        labels = np.full((64, 64), 28, np.uint8)  # sky on top
        labels[32:] = 32  # tree below
        cv2.imwrite(str(root / "siftflow/train/labels" / f"scene_{i}.png"), labels)
    for k, seq in enumerate(("cat", "dog")):
        for frame in (0, 6):
            photo = _photo(frame + k, (72, 128), (0.3 + 0.4 * k, 0.5, 0.6 - 0.3 * k))
            _write_rgb(root / "davis/train/images" / f"{seq}_{frame:05d}.jpg", photo)
            mask = np.zeros((72, 128), np.uint8)
            mask[20:60, 40:90] = 255
            (root / "davis/train/masks").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "davis/train/masks" / f"{seq}_{frame:05d}.png"), mask)
    _write_rgb(root / "bsds500/train/images/1.jpg", _photo(9, (80, 120), (0.7, 0.4, 0.3)))
    segments = np.ones((80, 120), np.uint16)
    segments[:, 60:] = 2
    (root / "bsds500/train/segments").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "bsds500/train/segments/1.png"), segments)
    return root


@pytest.mark.parametrize("method", TRANSFER_METHODS)
def test_transfer_moves_the_region_towards_the_reference(method):
    rgb = np.full((32, 32, 3), (0.3, 0.5, 0.7), np.float32) + np.linspace(0, 0.1, 32)[None, :, None]
    ref = np.full((32, 32, 3), (0.8, 0.5, 0.2), np.float32) + np.linspace(0, 0.2, 32)[:, None, None]
    mask = np.zeros((32, 32), np.float32)
    mask[8:24, 8:24] = 1
    ones = np.ones((32, 32), np.float32)
    edited = transfer_appearance(rgb, mask, ref, ones, method, 1.0)
    channel = 0 if method in ("luminance",) else slice(None)
    before = np.abs(rgb_to_lab(rgb)[mask > 0][:, channel].mean(0) - rgb_to_lab(ref)[:, :, channel].mean((0, 1)))
    after = np.abs(rgb_to_lab(edited)[mask > 0][:, channel].mean(0) - rgb_to_lab(ref)[:, :, channel].mean((0, 1)))
    assert np.sum(after) < np.sum(before)
    half = transfer_appearance(rgb, mask, ref, ones, method, 0.5)
    np.testing.assert_allclose(half, rgb + 0.5 * (edited - rgb), atol=1e-5)


def test_split_is_by_group_and_deterministic():
    sources = [Source("davis", Path(f"{g}_{i}.jpg"), None, f"davis:{g}") for g in "abcdefghij" * 5
               for i in range(3)]
    train, val = split_sources(sources, val_percent=30)
    assert {s.group for s in train}.isdisjoint({s.group for s in val})
    assert split_sources(sources, val_percent=30) == (train, val)
    assert len(val) > 0 and len(train) > 0


def test_samples_from_every_kind_of_source(tiny_datasets):
    sources = list_sources(tiny_datasets)
    assert {s.kind for s in sources} == {"siftflow", "davis", "bsds"}
    assert {s.group for s in sources if s.kind == "davis"} == {"davis:cat", "davis:dog"}
    semantic = SemanticIndex(sources)
    assert sorted(semantic.by_class) == [28, 32]
    rng = np.random.default_rng(0)
    for index, source in enumerate(sources):
        sample = make_sample(sources, index, rng, 48, semantic)
        assert sample is not None, source
        assert sample["composite"].shape == (48, 48, 3) and sample["mask"].shape == (48, 48)
        fg = sample["mask"] > 127
        bg = sample["mask"] == 0
        assert fg.any() and np.array_equal(sample["composite"][bg], sample["target"][bg])
        assert np.abs(sample["composite"][fg].astype(int) - sample["target"][fg]).mean() > 1
        labels = sample["labels"]
        if source.kind == "siftflow":
            assert set(np.unique(labels)) <= {27, 31, IGNORE_LABEL}  # ids 28/32 → classes 27/31
        else:
            assert (labels == IGNORE_LABEL).all()


def test_iharmony4_layout(tmp_path):
    subset = tmp_path / "HFlickr"
    real, composite = _photo(1, (60, 80)), _photo(2, (60, 80), (0.7, 0.3, 0.3))
    _write_rgb(subset / "real_images/f1.jpg", real)
    _write_rgb(subset / "composite_images/f1_1_2.jpg", composite)
    mask = np.zeros((60, 80), np.uint8)
    mask[10:50, 20:60] = 255
    (subset / "masks").mkdir(parents=True)
    cv2.imwrite(str(subset / "masks/f1_1.png"), mask)
    sources = list_iharmony4(tmp_path)
    assert len(sources) == 1 and sources[0].composite.name == "f1_1_2.jpg"
    sample = make_sample(sources, 0, np.random.default_rng(0), 32)
    assert sample["composite"].shape == (32, 32, 3) and sample["mask"].max() == 255


def test_render_cache_round_trip(tiny_datasets, tmp_path):
    info = render_cache(tiny_datasets, tmp_path / "cache", size=32, train_count=6, val_count=2, seed=1,
                        val_percent=30, log=lambda text: None)
    assert info["train_count"] == 6
    train = load_cache(tmp_path / "cache", "train")
    assert train["composite"].shape == (6, 32, 32, 3) and train["labels"].shape == (6, 32, 32)
    again = render_cache(tiny_datasets, tmp_path / "again", size=32, train_count=6, val_count=2, seed=1,
                         val_percent=30, log=lambda text: None)
    assert again == info
    assert np.array_equal(load_cache(tmp_path / "again", "train")["composite"], train["composite"])


def test_real_datasets_give_samples():
    if not (DATASETS / "siftflow" / "train").is_dir():
        pytest.skip(f"datasets not found at {DATASETS}")
    sources = list_sources(DATASETS)
    kinds = {s.kind for s in sources}
    assert {"siftflow", "davis", "bsds", "photo"} <= kinds
    train, val = split_sources(sources)
    assert {s.group for s in train}.isdisjoint({s.group for s in val})
    rng = np.random.default_rng(0)
    picked = [next(i for i, s in enumerate(train) if s.kind == kind) for kind in sorted(kinds)]
    made = [make_sample(train, i, rng, 64) for i in picked]
    assert sum(m is not None for m in made) >= len(picked) - 1


def test_validation_halves_keep_every_source_group_on_one_side(tmp_path):
    import json

    from core.data.harmonization import validation_half

    groups = ["davis:cows"] * 5 + ["davis:kite-surf"] * 4 + [f"photo:{i}" for i in range(40)]
    (tmp_path / "val_source_groups.json").write_text(json.dumps(groups))
    half = validation_half(tmp_path)
    for group in set(groups):
        assert len({h for g, h in zip(groups, half) if g == group}) == 1
    assert 10 < (half == "select").sum() < 39  # both halves are used

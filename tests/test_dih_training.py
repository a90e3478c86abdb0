"""DIH training: validation scores the network's own output, views squashed like inference, parsing
metrics, and the two-stage schedule keeping the parsing decoder fixed in stage two."""

from __future__ import annotations

import json
import zlib
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from core.data.harmonization import IGNORE_LABEL
from core.models.dih import DeepHarmonization, DIHConfig
from core.training.dih import (
    batch_from_cache,
    evaluate,
    labelled_samples,
    parse_args,
    parsing_scores,
    train,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = DIHConfig(resolution=32, channels=(8, 8, 16), fc_dim=64, parsing_classes=5, residual=True,
                 fg_normalized=True)


def _cache(n=6, size=32, seed=0, labelled=(0, 2, 4)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = (rng.random((n, size, size, 3)) * 200 + 20).astype(np.uint8)
    mask = np.zeros((n, size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    mask[:, (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2] = 153  # soft: 0.6
    composite = target.copy()
    shifted = np.clip(target.astype(int) + 40, 0, 255).astype(np.uint8)
    composite[mask > 0] = shifted[mask > 0]
    labels = np.full((n, size, size), IGNORE_LABEL, np.uint8)
    for i in labelled:
        labels[i] = (yy >= size // 2).astype(np.uint8) * 3 + 1  # class 1 on top, 4 below
    return {"composite": composite, "target": target, "mask": mask, "labels": labels}


def test_evaluate_scores_the_network_output_without_masking_it_again():
    """A residual network applies its correction through the soft mask itself; evaluation must score
    exactly that image (compositing again would scale the change by mask²)."""
    cache = _cache()
    model = DeepHarmonization(replace(TINY, semantic=False))
    with torch.no_grad():
        model.harmonization[-1].bias.fill_(-0.1)
    model.train()
    metrics = evaluate(model, cache, count=6)
    assert model.training  # evaluate restores the mode it found
    model.eval()
    composite = torch.from_numpy(cache["composite"]).permute(0, 3, 1, 2).float() / 255
    mask = torch.from_numpy(cache["mask"]).float()[:, None] / 255
    target = torch.from_numpy(cache["target"]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        out = model(composite, mask)["image"].clamp(0, 1)
    err = ((out - target) * 255) ** 2
    fg = (mask > 0.5).float()
    fmse = (err * fg).sum(dim=(1, 2, 3)) / (fg.sum(dim=(1, 2, 3)) * 3)
    assert metrics["fmse"] == pytest.approx(fmse.mean().item(), rel=1e-5)
    assert metrics["fmse_median"] == pytest.approx(fmse.median().item(), rel=1e-3)
    assert metrics["fmse"] < metrics["fmse_input"]  # −0.1 moves the +40 shift back a little


def test_parsing_scores():
    confusion = np.array([[8, 2, 0], [1, 4, 0], [0, 0, 0]])
    scores = parsing_scores(confusion)
    assert scores["pixel_acc"] == pytest.approx(12 / 15)
    assert scores["miou"] == pytest.approx((8 / 11 + 4 / 7) / 2)  # class 2 is absent: not averaged


def test_evaluate_reports_parsing_against_the_most_frequent_class():
    cache = _cache()
    model = DeepHarmonization(TINY)
    metrics = evaluate(model, cache, count=6, baseline_class=1)
    assert metrics["parsing_pixels"] == 3 * 32 * 32  # only the labelled samples count
    assert metrics["parsing_baseline_pixel_acc"] == pytest.approx(0.5)
    assert metrics["parsing_baseline_miou"] == pytest.approx(0.25)  # IoU 0.5 for class 1, 0 for class 4
    assert 0 <= metrics["parsing_miou"] <= 1


def test_labelled_samples():
    assert labelled_samples(_cache(labelled=(1, 5)), chunk=4).tolist() == [1, 5]


def _fg_box_aspect(mask: torch.Tensor) -> float:
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    return float((xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1))


def test_training_views_are_squashed_like_inference():
    """Inference squashes a whole photo to R×R; training views have photo aspect ratios squashed the
    same way, so a round object comes out as ellipses of both orientations."""
    size = 64
    cache = _cache(n=1, size=size, labelled=(0,))
    cache["mask"][0] = 0
    cv2.circle(cache["mask"][0], (size // 2, size // 2), size // 5, 255, -1)
    plain = batch_from_cache(cache, np.array([0]), 32, None)
    expected = cv2.resize(cache["mask"][0], (32, 32), interpolation=cv2.INTER_AREA)
    assert np.array_equal((plain["mask"][0, 0] * 255).round().numpy().astype(np.uint8), expected)
    rng = np.random.default_rng(0)
    aspects = [_fg_box_aspect(batch_from_cache(cache, np.array([0]), 32, rng)["mask"][0, 0])
               for _ in range(40)]
    assert min(aspects) < 0.8 and max(aspects) > 1.25


def _write_cache(folder, cache: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        for key, array in cache.items():
            np.save(folder / f"{split}_{key}.npy", array)
    # As render_cache writes them; all in the "select" half here, so every composite is validated.
    groups = [g for g in (f"photo:{i}" for i in range(1000)) if zlib.crc32(g.encode()) % 2 == 0]
    (folder / "val_source_groups.json").write_text(json.dumps(groups[:len(cache["composite"])]))
    (folder / "info.json").write_text(json.dumps({"size": 32}))


def test_two_stages_keep_the_parsing_decoder_fixed_in_stage_two(tmp_path):
    _write_cache(tmp_path / "cache", _cache(n=8, size=64, labelled=(0, 1, 2, 3)))
    args = parse_args(["--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache"),
                       "--variant", "small", "--resolution", "32", "--steps", "3", "--stage2-steps", "3",
                       "--batch", "2", "--eval-every", "1000", "--val-count", "4", "--log-every", "1000",
                       "--threads", "1"])
    train(args)
    # last.pt is written at the stage-one evaluation; reading it now means stage two overwrote it.
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [(m["step"], m["stage"]) for m in log] == [(3, 1), (6, 2)]
    assert "parsing_miou" in log[0] and "parsing_baseline_miou" in log[0]
    final = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    assert final["step"] == 6 and best["step"] == 6  # best.pt comes from the final stage


def test_stage_two_changes_no_parsing_weight_or_statistic(tmp_path):
    """Stage two, run straight on or resumed from stage one's checkpoint, leaves the parsing decoder's
    weights and batch-norm statistics exactly as stage one left them."""
    import shutil

    _write_cache(tmp_path / "cache", _cache(n=8, size=64, labelled=(0, 1, 2, 3)))
    common = ["--cache", str(tmp_path / "cache"), "--variant", "small", "--resolution", "32", "--batch", "2",
              "--eval-every", "1000", "--val-count", "4", "--log-every", "1000", "--threads", "1",
              "--steps", "3"]
    train(parse_args(["--out", str(tmp_path / "stage1"), "--stage2-steps", "0", *common]))
    stage_one = torch.load(tmp_path / "stage1" / "last.pt", weights_only=False)["model"]
    train(parse_args(["--out", str(tmp_path / "straight"), "--stage2-steps", "4", *common]))
    shutil.copytree(tmp_path / "stage1", tmp_path / "resumed")
    train(parse_args(["--out", str(tmp_path / "resumed"), "--stage2-steps", "4", "--resume", *common]))
    parsing = [k for k in stage_one if k.startswith("parsing.")]
    assert any("running_mean" in k for k in parsing)
    for run in ("straight", "resumed"):
        stage_two = torch.load(tmp_path / run / "last.pt", weights_only=False)
        assert stage_two["step"] == 7 and stage_two["stage"] == 2
        for key in parsing:
            assert torch.equal(stage_one[key], stage_two["model"][key]), (run, key)
        tuned = "harmonization.1.0.weight"
        assert not torch.equal(stage_one[tuned], stage_two["model"][tuned])

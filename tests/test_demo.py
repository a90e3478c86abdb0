"""gimp-semantic demo: all four methods on the bundled photos, on the real weights, into one page."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from core.actions.adjust import STYLES
from core.actions.harmonize import METHODS
from core.cli import main
from core.demo import scenes
from core.demo.page import CONTACT_SHEET_NAME, INDEX_NAME, NOTICE_NAME
from core.propagation.strokes import paths_from_params, rasterize_paths

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 128  # longest side: small enough for a few seconds, large enough for the strokes to stay apart
FILTERS = ("Harmonize Selection...", "Colorize...", "Semantic Auto-Adjust...", "Propagate Path Strokes...")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "-o", str(out), "--size", str(SIZE), "--device", "cpu"])
    return code, out


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_the_page_shows_all_four_methods_and_every_image_it_links_exists(demo):
    code, out = demo
    assert code == 0
    page = (out / INDEX_NAME).read_text(encoding="utf-8")
    sources = re.findall(r'<img src="([^"]+)"', page)
    links = set(re.findall(r'href="([^"]+)"', page))
    assert all(not s.startswith(("/", "http")) for s in sources)  # relative: the folder can be moved
    for source in sources:
        assert (out / source).is_file(), source
    written = {p.name for p in out.glob("*.png")}
    assert written == set(sources) | {CONTACT_SHEET_NAME}  # nothing written that the page leaves out
    assert CONTACT_SHEET_NAME in links and NOTICE_NAME in links and (out / NOTICE_NAME).is_file()
    sections = page.split("<h2>")[1:]
    assert [s.split("</h2>")[0] for s in sections] == list(FILTERS)
    counts = [len(re.findall("<img ", s)) for s in sections]
    assert counts == [2 + len(METHODS), 4, 1 + len(STYLES), 6]
    assert 'class="problem"' not in page
    sheet = _png(out / CONTACT_SHEET_NAME)
    assert sheet.ndim == 3 and sheet.shape[1] > 4 * SIZE


def test_harmonization_changes_the_pasted_cup_and_nothing_else(demo):
    _, out = demo
    source, mask = _png(out / "harmonize-input.png"), _png(out / "harmonize-mask.png")
    assert max(source.shape[:2]) == SIZE and mask.shape == source.shape[:2]
    for method in METHODS:
        result = _png(out / f"harmonize-{method}.png")
        assert np.array_equal(result[mask == 0], source[mask == 0]), method
        assert np.abs(result[mask == 255].astype(int) - source[mask == 255]).mean() > 3, method


def test_results_keep_the_input_size_and_differ_from_it(demo):
    _, out = demo
    pairs = [("colorize-input", "colorize-result"),
             ("propagate-colorize-strokes", "propagate-colorize-result")]
    pairs += [("adjust-input", f"adjust-{style}") for style in STYLES]
    for before, after in pairs:
        a, b = _png(out / f"{before}.png"), _png(out / f"{after}.png")
        assert a.shape == b.shape, after
        assert np.abs(a.astype(int) - b).mean() > 1, after
    colorized = _png(out / "colorize-result.png").astype(int)
    assert np.abs(colorized - colorized[..., :1]).max() > 10  # the gray photo got colors


def test_the_propagated_selection_follows_the_strokes(demo):
    _, out = demo
    mask = _png(out / "propagate-select-mask.png").astype(float) / 255
    height, width = mask.shape
    paths = paths_from_params(scenes.selection_paths(height, width))
    raster = rasterize_paths(paths, height, width, scenes.brush_width(height, width))
    cat, room = (raster[..., 3] > 0) & (raster[..., 0] == 255), (raster[..., 3] > 0) & (raster[..., 2] == 255)
    assert mask[cat].mean() > 0.8 and mask[room].mean() < 0.2


def test_the_cup_mask_covers_the_cup_and_not_the_table():
    cup = scenes.photo("coffee")
    mask = scenes.cup_mask(*cup.shape[:2])
    height, width = mask.shape
    assert mask[int(0.28 * height), int(0.49 * width)] == 1  # the coffee in the cup
    assert mask[int(0.75 * height), int(0.25 * width)] == 1  # the saucer
    assert mask[int(0.10 * height), int(0.90 * width)] == 0  # the table top right
    assert mask[int(0.90 * height), int(0.05 * width)] == 0  # the table bottom left
    assert 0.35 < mask.mean() < 0.6


def test_photos_are_never_enlarged():
    assert max(scenes.photo("chelsea", 2000).shape[:2]) == max(scenes.photo("chelsea").shape[:2])
    assert scenes.photo("astronaut", 100).shape == (100, 100, 3)


@pytest.mark.parametrize("args,needle", [(["--size", "10"], "--size"), (["--image", "x.png"], "--mask")])
def test_bad_arguments_exit_2_with_a_message(tmp_path, capsys, args, needle):
    assert main(["demo", "-o", str(tmp_path), *args]) == 2
    assert needle in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_own_composite_is_harmonized_with_every_method(tmp_path):
    composite = scenes.pasted_cup(96)
    Image.fromarray(composite.image).save(tmp_path / "mine.png")
    Image.fromarray(composite.mask).save(tmp_path / "mine-mask.png")
    assert main(["demo", "--image", str(tmp_path / "mine.png"), "--mask", str(tmp_path / "mine-mask.png"),
                 "-o", str(tmp_path / "out"), "--device", "cpu"]) == 0
    side = _png(tmp_path / "out" / "mine-side-by-side.png")
    assert side.shape == (composite.image.shape[0], composite.image.shape[1] * (1 + len(METHODS)), 3)
    for method in METHODS:
        assert (tmp_path / "out" / f"mine-harmonized-{method}.png").is_file()


def test_missing_weights_leave_the_rest_of_the_page_and_say_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEMANTIC_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    assert main(["demo", "-o", str(tmp_path / "out"), "--size", "96", "--device", "cpu"]) == 1
    page = (tmp_path / "out" / INDEX_NAME).read_text(encoding="utf-8")
    problems = re.findall(r'<p class="problem">([^<]+)</p>', page)
    assert problems and all("installer" in p for p in problems)
    assert (tmp_path / "out" / "harmonize-statistics.png").is_file()  # needs no weights
    # propagation's default reads the shared backbone's features, so its panel names that file
    assert any("efficientnet-lite0-imagenet" in p for p in problems)
    assert "not shown" in capsys.readouterr().err


def test_captions_name_the_weights_each_result_loaded():
    from core.actions.base import ModelCache
    from core.commands.demo import weights_text
    from core.weights import Manifest

    some_id = sorted(Manifest.load().entries)[0]
    cache = ModelCache()
    assert weights_text(cache) == "no trained weights"
    cache.put(f"kind:{some_id}:cpu", object())
    cache.put(f"{some_id}@cpu", object())
    assert weights_text(cache) == f"weights {some_id}"
    unknown = ModelCache()
    unknown.put("kind:not-a-weight-id:cpu", object())
    assert weights_text(unknown) == "trained weights, see weights/"

"""gimp-semantic demo [-o DIR] [--size N]: all four methods on the bundled photos, one page to open.
gimp-semantic demo --image IMG --mask MASK [-o DIR]: harmonize your own composite with every method."""

from __future__ import annotations

import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.actions.adjust import STYLES, weight_id
from core.actions.base import Arrays, JobContext, ModelCache
from core.actions.harmonize import DEFAULT_METHOD, METHODS
from core.actions.registry import find_action
from core.colorization.pipeline import COLORIZER_WEIGHTS, PRETRAINED_SEGMENTER_WEIGHTS
from core.demo import scenes
from core.demo.page import (
    CONTACT_SHEET_NAME,
    NOTICE_NAME,
    Legend,
    Panel,
    Section,
    contact_sheet,
    write_index,
    write_panels,
)
from core.device import select_device
from core.imaging.io import load_image, load_mask, save_image
from core.protocol import SemanticError, bad_input
from core.weights import Manifest

MIN_SIZE = 64  # below this the strokes and the pasted cup are a few pixels wide


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="the four methods on bundled photos, as a page to open")
    parser.add_argument("-o", "--output", type=Path, default=Path("demo-output"))
    parser.add_argument("--size", type=int, default=None,
                        help=f"longest side of the demo photos in pixels (at least {MIN_SIZE}; default: as "
                             "bundled, 480; they are never enlarged)")
    parser.add_argument("--image", help="your own composite: harmonize it instead of running the full demo")
    parser.add_argument("--mask", help="its foreground mask (required with --image)")
    parser.add_argument("--device", default=None)
    parser.set_defaults(func=run)


def run(args) -> int:
    if bool(args.image) != bool(args.mask):
        raise bad_input("Give both --image and --mask, or neither for the full demo on the bundled photos.")
    if args.size is not None and args.size < MIN_SIZE:
        raise bad_input(f"--size must be at least {MIN_SIZE} pixels; got {args.size}.")
    runner = ActionRunner(select_device(args.device))
    if args.image:
        return harmonize_own(args, runner)
    started = time.perf_counter()
    sections = []
    for build in (harmonize_section, colorize_section, adjust_section, propagate_section):
        section = build(runner, args.size)
        write_panels(args.output, section)
        sections.append(section)
    save_image(args.output / CONTACT_SHEET_NAME, contact_sheet(sections))
    shutil.copyfile(scenes.PHOTOS / "NOTICE", args.output / NOTICE_NAME)
    index = write_index(args.output, sections, "gimp-semantic: the four methods on four photos")
    problems = [f"{s.title}: {p}" for s in sections for p in s.problems]
    print(f"\nall done in {time.perf_counter() - started:.0f} s on {runner.device.type}.")
    for problem in problems:
        print(f"  not shown: {problem}", file=sys.stderr)
    print(f"Open this file in a web browser: {index.resolve()}")
    print(f"(or the single image {(args.output / CONTACT_SHEET_NAME).resolve()})")
    return 1 if problems else 0


@dataclass
class ActionRunner:
    """Runs the daemon's actions in this process, each with a fresh model cache, so the page can say
    which weights each result loaded."""

    device: torch.device

    def __call__(self, name: str, arrays: Arrays, params: dict, what: str) -> tuple[Arrays, str]:
        """(the action's outputs, which weights it loaded, in words)."""
        cache = ModelCache()
        started = time.perf_counter()
        outputs = find_action(name).run(arrays, params, JobContext(self.device, cache))
        print(f"  {what}: {time.perf_counter() - started:.1f} s", flush=True)
        return outputs, weights_text(cache)


def weights_text(cache: ModelCache) -> str:
    """The manifest's weight ids among the cache keys' parts (actions key models as 'kind:id:device',
    'kind:id+id:device' or 'id@device'); a cache with keys that name no known id still says that trained
    weights were used."""
    known = set(Manifest.load().entries)
    parts = {part for key in cache.keys() for part in re.split(r"[:@+]", key)}
    if parts & known:
        return "weights " + ", ".join(sorted(parts & known))
    return "trained weights, see weights/" if cache.keys() else "no trained weights"


def _method_order() -> list[str]:
    return [DEFAULT_METHOD] + sorted(m for m in METHODS if m != DEFAULT_METHOD)


# --- the four sections ----------------------------------------------------------------------------


def harmonize_section(run_action: ActionRunner, size: int | None) -> Section:
    section = Section("Harmonize Selection...",
                      "learned colour transform from ImageNet features (the default); Tsai et al., Deep Image "
                      "Harmonization (CVPR 2017); colour-statistics transfer",
                      "A coffee cup lit by a warm lamp, pasted into the blue dusk of a rocket launch. The "
                      "harmonized cup should take on the scene's cold, dim light; the rest stays as it was.")
    composite = scenes.pasted_cup(size)
    section.panels += [Panel("harmonize-input.png", "input: cup pasted into the scene", composite.image),
                       Panel("harmonize-mask.png", "mask (the selection)", composite.mask)]
    for method in _method_order():
        try:
            arrays = {"image": composite.image, "mask": composite.mask[..., None]}
            outputs, weights = run_action("harmonize", arrays, {"method": method}, f"harmonize ({method})")
        except SemanticError as exc:
            section.problems.append(f"method '{method}': {exc.message}")
            continue
        default = ", the default" if method == DEFAULT_METHOD else ""
        caption = f"{method}{default} ({weights})"
        section.panels.append(Panel(f"harmonize-{method}.png", caption, outputs["image"]))
    return section


def map_legend(ids: np.ndarray, colors: np.ndarray, min_share: float = 0.01) -> Legend:
    """The map's classes covering at least ``min_share`` of it, largest first: ('sky 61%', its color)."""
    classes = Manifest.load().entry(COLORIZER_WEIGHTS).config.get("classes", [])
    values, first, counts = np.unique(ids.ravel(), return_index=True, return_counts=True)
    legend = []
    for i in np.argsort(-counts):
        if counts[i] < min_share * ids.size:
            break
        name = classes[values[i]] if values[i] < len(classes) else f"class {values[i]}"
        color = tuple(int(c) for c in colors.reshape(-1, 3)[first[i]])
        legend.append((f"{name} {100 * counts[i] / ids.size:.0f}%", color))
    return tuple(legend)


def colorize_section(run_action: ActionRunner, size: int | None) -> Section:
    section = Section("Colorize...", "Ho et al., Semantic-Driven Colorization",
                      "A decoder on the ImageNet EfficientNet-Lite0 backbone predicts a semantic map of "
                      "the gray photo, then a two-stream U-Net colorizes it from its lightness and that map. "
                      "(Colorize from Semantic Map... takes a map you paint instead.)")
    gray, original = scenes.gray_photo("rocket", size)
    section.panels.append(Panel("colorize-input.png", "input: a gray photo", gray))
    try:
        outputs, _ = run_action("colorize", {"image": gray}, {}, "colorize (predicted map)")
    except SemanticError as exc:
        section.problems.append(exc.message)
        return section
    section.panels += [
        Panel("colorize-map.png", f"predicted map (weights {PRETRAINED_SEGMENTER_WEIGHTS})",
              outputs["map_rgb"],
              map_legend(outputs["map"], outputs["map_rgb"])),
        Panel("colorize-result.png", f"colorized (weights {COLORIZER_WEIGHTS})", outputs["image"]),
        Panel("colorize-original.png", "the original colors, for comparison", original),
    ]
    return section


def adjust_section(run_action: ActionRunner, size: int | None) -> Section:
    section = Section("Semantic Auto-Adjust...",
                      "Nam & Kim, Deep Semantics-Aware Photo Adjustment (SA-AdjustNet)", "One model per "
                      "style; each predicts a semantic adjustment map and adjusts each region by it. "
                      "(Adjust with My Map... lets you paint the map.)")
    image = scenes.photo("astronaut", size)
    section.panels.append(Panel("adjust-input.png", "input", image))
    for style in STYLES:
        try:
            outputs, _ = run_action("adjust", {"image": image}, {"style": style}, f"adjust ({style})")
        except SemanticError as exc:
            section.problems.append(f"style '{style}': {exc.message}")
            continue
        # The adjust action keys its models by style, not by weight id; each style has its own weights.
        section.panels.append(Panel(f"adjust-{style}.png", f"{style} (weights {weight_id(style)})",
                                    outputs["image"]))
    return section


def propagate_section(run_action: ActionRunner, size: int | None) -> Section:
    section = Section("Propagate Path Strokes...", "Endo et al., DeepProp",
                      "A small network is trained on the strokes of this one "
                      "image (no stored weights), then spreads them over the whole photo. Select: red paths "
                      "'fg' on the cat, blue paths 'bg' on the room. Colorize: each path's color was picked "
                      "from the original photo under it.")
    photo = scenes.photo("chelsea", size)
    height, width = photo.shape[:2]
    brush = scenes.brush_width(height, width)
    paths = scenes.selection_paths(height, width)
    section.panels.append(Panel("propagate-select-strokes.png", "input: fg/bg paths",
                                scenes.draw_paths(photo, paths, brush)))
    try:
        params = {"mode": "select", "paths": paths, "brush_width": brush}
        outputs, _ = run_action("propagate", {"image": photo}, params, "propagate (select)")
        mask = outputs["mask"][..., 0]
        dimmed = (photo * (0.2 + 0.8 * mask[..., None] / 255.0) + 0.5).astype(np.uint8)
        section.panels += [Panel("propagate-select-mask.png", "propagated selection", mask),
                           Panel("propagate-select-cutout.png", "the selection applied", dimmed)]
    except SemanticError as exc:
        section.problems.append(f"select: {exc.message}")

    gray, original = scenes.gray_photo("chelsea", size)
    paths = scenes.colorize_paths(original)
    section.panels.append(Panel("propagate-colorize-strokes.png", "input: gray photo and color paths",
                                scenes.draw_paths(gray, paths, brush)))
    try:
        params = {"mode": "colorize", "paths": paths, "brush_width": brush}
        outputs, _ = run_action("propagate", {"image": gray}, params, "propagate (colorize)")
        section.panels += [Panel("propagate-colorize-result.png", "propagated colors", outputs["image"]),
                           Panel("propagate-colorize-original.png", "the original, for comparison",
                                 original)]
    except SemanticError as exc:
        section.problems.append(f"colorize: {exc.message}")
    return section


# --- your own composite ---------------------------------------------------------------------------


def harmonize_own(args, run_action: ActionRunner) -> int:
    image, mask, stem = load_image(args.image), load_mask(args.mask), Path(args.image).stem
    panels = [image[..., :3]]
    names = []
    for method in _method_order():
        try:
            arrays = {"image": image, "mask": mask[..., None]}
            outputs, _ = run_action("harmonize", arrays, {"method": method}, f"harmonize ({method})")
        except SemanticError as exc:
            print(f"  {method}: skipped ({exc.message})", file=sys.stderr)
            continue
        path = args.output / f"{stem}-harmonized-{method}.png"
        save_image(path, outputs["image"])
        panels.append(outputs["image"][..., :3])
        names.append(method)
        print(f"wrote {path}")
    side_by_side = args.output / f"{stem}-side-by-side.png"
    save_image(side_by_side, np.concatenate(panels, axis=1))
    print(f"wrote {side_by_side}  (input | " + " | ".join(names) + ")")
    return 0

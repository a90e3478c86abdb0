"""Harmonize a pasted foreground (the mask) with its background."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from core.actions.base import Action, Arrays, JobContext
from core.actions.inputs import get_bool, get_choice, get_float, require_image, require_mask
from core.harmonization.deep import DEFAULT_WEIGHTS, harmonize_deep, load_model
from core.harmonization.statistics import harmonize_statistics

HarmonizeMethod = Callable[[np.ndarray, np.ndarray, float, JobContext], np.ndarray]


def _statistics(image: np.ndarray, mask: np.ndarray, strength: float, ctx: JobContext) -> np.ndarray:
    ctx.report(0.1, "Matching colour statistics")
    return harmonize_statistics(image, mask, strength)


def _deep(image: np.ndarray, mask: np.ndarray, strength: float, ctx: JobContext) -> np.ndarray:
    ctx.report(0.02, "Loading the harmonization network")
    model = ctx.models.get(f"dih:{DEFAULT_WEIGHTS}:{ctx.device}",
                           lambda: load_model(DEFAULT_WEIGHTS, device=ctx.device))
    return harmonize_deep(image, mask, model, strength, progress=ctx.report)


METHODS: dict[str, HarmonizeMethod] = {"deep": _deep, "statistics": _statistics}
DEFAULT_METHOD = "deep"


def run(arrays: Arrays, params: dict, ctx: JobContext) -> Arrays:
    image = require_image(arrays)
    mask = require_mask(arrays, image)
    method = get_choice(params, "method", DEFAULT_METHOD, tuple(METHODS))
    strength = get_float(params, "strength", 1.0, 0.0, 1.0)
    if get_bool(params, "invert_mask", False):
        mask = 1.0 - mask
    result = METHODS[method](image, mask, strength, ctx)
    ctx.report(1.0, "Done")
    return {"image": result}


ACTIONS = [Action("harmonize", "Match a pasted foreground (mask) to its background", run)]

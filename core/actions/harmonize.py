"""Harmonize a pasted foreground (the mask) with its background."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from core.actions.base import Action, Arrays, JobContext
from core.actions.inputs import get_bool, get_choice, get_float, require_image, require_mask
from core.harmonization.deep import DEFAULT_WEIGHTS as DIH_WEIGHTS
from core.harmonization.deep import harmonize_deep, load_model
from core.harmonization.statistics import harmonize_statistics
from core.harmonization.transform import DEFAULT_WEIGHTS as TRANSFORM_WEIGHTS
from core.harmonization.transform import harmonize_transform, load_harmonizers

HarmonizeMethod = Callable[[np.ndarray, np.ndarray, float, JobContext], np.ndarray]


def _statistics(image: np.ndarray, mask: np.ndarray, strength: float, ctx: JobContext) -> np.ndarray:
    ctx.report(0.1, "Matching colour statistics")
    return harmonize_statistics(image, mask, strength)


def _transform(image: np.ndarray, mask: np.ndarray, strength: float, ctx: JobContext) -> np.ndarray:
    ctx.report(0.02, "Loading the colour-transform network")
    models = ctx.models.get(f"harmonizer:{'+'.join(TRANSFORM_WEIGHTS)}:{ctx.device}",
                            lambda: load_harmonizers(TRANSFORM_WEIGHTS, device=ctx.device))
    return harmonize_transform(image, mask, models, strength, progress=ctx.report)


def _dih(image: np.ndarray, mask: np.ndarray, strength: float, ctx: JobContext) -> np.ndarray:
    ctx.report(0.02, "Loading the harmonization network")
    model = ctx.models.get(f"dih:{DIH_WEIGHTS}:{ctx.device}", lambda: load_model(DIH_WEIGHTS, device=ctx.device))
    return harmonize_deep(image, mask, model, strength, progress=ctx.report)


# transform: a global colour transform predicted from ImageNet features (the default: it beats statistics
# on rendered-gt, see weights/harmonizer-*.md); dih: the paper's encoder–decoder; statistics: Reinhard.
METHODS: dict[str, HarmonizeMethod] = {"transform": _transform, "statistics": _statistics, "dih": _dih}
# Earlier releases called the paper's network "deep"; scripts that say so keep working.
ALIASES = {"deep": "dih"}
DEFAULT_METHOD = "transform"


def run(arrays: Arrays, params: dict, ctx: JobContext) -> Arrays:
    image = require_image(arrays)
    mask = require_mask(arrays, image)
    method = get_choice(params, "method", DEFAULT_METHOD, (*METHODS, *ALIASES))
    method = ALIASES.get(method, method)
    strength = get_float(params, "strength", 1.0, 0.0, 1.0)
    if get_bool(params, "invert_mask", False):
        mask = 1.0 - mask
    result = METHODS[method](image, mask, strength, ctx)
    ctx.report(1.0, "Done")
    return {"image": result}


ACTIONS = [Action("harmonize", "Match a pasted foreground (mask) to its background", run)]

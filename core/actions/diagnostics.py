"""Diagnostics: an action with no model cost, to measure the wire and check progress/cancel paths."""

from __future__ import annotations

import time

from core.actions.base import Action, Arrays, JobContext
from core.actions.inputs import get_float, require_image


def echo(arrays: Arrays, params: dict, ctx: JobContext) -> Arrays:
    image = require_image(arrays)
    duration = get_float(params, "delay_s", 0.0, 0.0, 3600.0)
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < duration:
        ctx.report(elapsed / duration, "Waiting")
        time.sleep(min(0.05, duration - elapsed))
    ctx.report(1.0, "Done")
    return {"image": image}


ACTIONS = [Action("echo", "Return the image unchanged (wire benchmark; 'delay_s' holds the job open)", echo)]

"""Every action by name: each module in core/actions that defines ``ACTIONS`` contributes."""

from __future__ import annotations

import importlib
import pkgutil

import core.actions
from core.actions.base import Action
from core.protocol import ErrorCode, SemanticError


def all_actions() -> dict[str, Action]:
    actions: dict[str, Action] = {}
    for info in pkgutil.iter_modules(core.actions.__path__):
        if info.name in ("base", "registry"):
            continue
        module = importlib.import_module(f"core.actions.{info.name}")
        for action in getattr(module, "ACTIONS", ()):
            actions[action.name] = action
    return actions


def find_action(name: str, actions: dict[str, Action] | None = None) -> Action:
    actions = all_actions() if actions is None else actions
    if name not in actions:
        known = ", ".join(sorted(actions)) or "none"
        raise SemanticError(ErrorCode.unknown_action, f"Unknown action '{name}'. This daemon offers: {known}.")
    return actions[name]

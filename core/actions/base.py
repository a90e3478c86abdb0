"""What every action gets and returns; the daemon and the CLI run actions through this."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from core.protocol import ErrorCode, SemanticError

Arrays = dict[str, np.ndarray]
ProgressFn = Callable[[float, str], None]


class ModelCache:
    """Loaded models (and per-image state) by key; entries unused for ``idle_s`` are dropped."""

    def __init__(self, idle_s: float = 600.0):
        self.idle_s = idle_s
        self._items: dict[str, tuple[Any, float]] = {}
        self._lock = threading.RLock()

    def get(self, key: str, loader: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                value = self._items[key][0]
            else:
                value = loader()
            self._items[key] = (value, time.monotonic())
            return value

    def peek(self, key: str) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items[key] = (item[0], time.monotonic())
            return item[0]

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._items[key] = (value, time.monotonic())

    def unload_idle(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            stale = [k for k, (_, used) in self._items.items() if now - used > self.idle_s]
            for key in stale:
                del self._items[key]
        if stale and torch.cuda.is_available():
            torch.cuda.empty_cache()
        return stale

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._items)


@dataclass
class JobContext:
    device: torch.device
    models: ModelCache
    progress: ProgressFn = lambda fraction, text: None
    cancel_event: threading.Event = field(default_factory=threading.Event)

    def report(self, fraction: float, text: str = "") -> None:
        self.check_cancelled()
        self.progress(min(max(float(fraction), 0.0), 1.0), text)

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise SemanticError(ErrorCode.cancelled, "The job was cancelled.")


@dataclass(frozen=True)
class Action:
    name: str
    summary: str
    run: Callable[[Arrays, dict, JobContext], Arrays]

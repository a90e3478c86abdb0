"""Compute device choice: cuda > mps > cpu, overridable by flag or SEMANTIC_DEVICE."""

from __future__ import annotations

import os

import torch

from core.protocol import bad_input


def select_device(preference: str | None = None) -> torch.device:
    preference = (preference or os.environ.get("SEMANTIC_DEVICE") or "auto").lower()
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise bad_input("Device 'cuda' was asked for, but PyTorch sees no CUDA GPU. Use --device cpu.")
    if preference == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise bad_input("Device 'mps' was asked for, but this machine has no Metal GPU. Use --device cpu.")
    if preference not in ("cpu", "mps") and not preference.startswith("cuda"):
        raise bad_input(f"Unknown device '{preference}'; use auto, cpu, cuda or mps.")
    return torch.device(preference)

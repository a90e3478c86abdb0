"""The project's own sample images, generated procedurally (no third-party photos).

A landscape in warm evening light with a pasted rock lit by cold, dim light: the classic
harmonization case. Deterministic for a given seed.
"""

from __future__ import annotations

import cv2
import numpy as np


def _fractal_noise(height: int, width: int, rng: np.random.Generator, octaves: int = 5) -> np.ndarray:
    noise = np.zeros((height, width), np.float32)
    for octave in range(octaves):
        cells = 4 * 2 ** octave
        grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
        noise += cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC) / 2 ** octave
    return (noise - noise.min()) / (np.ptp(noise) + 1e-6)


def landscape(height: int = 480, width: int = 720, seed: int = 7) -> np.ndarray:
    """H×W×3 float32 sRGB scene: sky, hills, meadow."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    sky = np.stack([0.95 - 0.35 * y, 0.70 - 0.25 * y, 0.45 + 0.25 * y], axis=-1) * np.ones((1, width, 1))
    texture = _fractal_noise(height, width, rng)
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    horizon = 0.45 + 0.08 * np.sin(6 * x + 1.0) + 0.04 * np.sin(17 * x)
    ground_color = np.stack([0.45 + 0.25 * texture, 0.50 + 0.2 * texture, 0.18 + 0.1 * texture], axis=-1)
    ground = (y > horizon)[..., None]
    scene = np.where(ground, ground_color * (0.8 + 0.3 * y[..., None]), sky)
    return np.clip(scene, 0, 1).astype(np.float32)


def composite(height: int = 480, width: int = 720, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """(H×W×3 uint8 composite, H×W uint8 soft mask) of a cold, dark rock pasted into the warm scene."""
    rng = np.random.default_rng(seed + 1)
    scene = landscape(height, width, seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx, ry, rx = height * 0.68, width * 0.42, height * 0.17, width * 0.14
    angle = np.arctan2(yy - cy, xx - cx)
    wobble = 1 + 0.12 * np.sin(3 * angle + 0.5) + 0.06 * np.sin(7 * angle)
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < wobble ** 2
    mask = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), 2.0)
    stone_texture = _fractal_noise(height, width, rng, octaves=6)
    shade = np.clip(0.6 + 0.5 * (cx - xx) / rx * 0.3 + 0.4 * stone_texture, 0, 1.2)
    rock = np.stack([0.55 * shade, 0.52 * shade, 0.50 * shade], axis=-1)
    cast = np.array([0.55, 0.70, 1.15], np.float32)  # cold, dim light of another photo
    rock = np.clip(rock * cast * 0.8, 0, 1)
    image = scene * (1 - mask[..., None]) + rock * mask[..., None]
    return (image * 255 + 0.5).astype(np.uint8), (mask * 255 + 0.5).astype(np.uint8)

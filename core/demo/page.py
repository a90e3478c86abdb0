"""The demo's one page: an HTML index (relative links to the PNGs beside it) and a contact sheet PNG."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from core.imaging.io import save_image

INDEX_NAME = "index.html"
CONTACT_SHEET_NAME = "contact-sheet.png"
NOTICE_NAME = "photos-NOTICE.txt"  # a copy of the photos' credits, so the folder can be shared as is


Legend = tuple[tuple[str, tuple[int, int, int]], ...]  # (label, its RGB color in the image)


@dataclass(frozen=True)
class Panel:
    file_name: str  # relative to the output folder
    caption: str
    image: np.ndarray  # H×W×3 (or H×W for masks) uint8, as written
    legend: Legend = ()


@dataclass
class Section:
    title: str  # the filter's name in GIMP
    paper: str  # the method, short
    description: str  # what the method does and what this demo gave it
    panels: list[Panel] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what could not be shown, and why


def write_panels(folder: Path, section: Section) -> None:
    for panel in section.panels:
        save_image(folder / panel.file_name, panel.image)


def write_index(folder: Path, sections: list[Section], title: str) -> Path:
    """index.html: one block per method, images side by side with a caption under each."""
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;background:#fafafa;color:#222}"
        "section{margin-bottom:2em}.row{display:flex;flex-wrap:wrap;gap:12px}"
        "figure{margin:0;max-width:340px}img{max-width:100%;border:1px solid #ccc}"
        "figcaption{font-size:0.85em;margin-top:4px}.problem{color:#a00}"
        ".swatch{display:inline-block;width:0.9em;height:0.9em;border:1px solid #888;vertical-align:middle}"
        "</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p>All of it on one image: <a href="{CONTACT_SHEET_NAME}">{CONTACT_SHEET_NAME}</a>. '
        "The photos are public domain or CC0: sources and licences in "
        f'<a href="{NOTICE_NAME}">{NOTICE_NAME}</a>.</p>',
    ]
    for section in sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        parts.append(f"<p><b>{html.escape(section.paper)}</b>. {html.escape(section.description)}</p>")
        parts.append('<div class="row">')
        for panel in section.panels:
            name = html.escape(panel.file_name, quote=True)
            caption = html.escape(panel.caption)
            legend = "".join(f'<br><span class="swatch" style="background:#{bytes(color).hex()}"></span> '
                             f"{html.escape(label)}" for label, color in panel.legend)
            parts.append(f'<figure><a href="{name}"><img src="{name}" alt="{caption}"></a>'
                         f"<figcaption>{caption}{legend}</figcaption></figure>")
        parts.append("</div>")
        for problem in section.problems:
            parts.append(f'<p class="problem">{html.escape(problem)}</p>')
        parts.append("</section>")
    parts.append("</body></html>")
    path = folder / INDEX_NAME
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]


def _label(width: int, text: str, line_height: int, scale: float, lines: int = 1,
           bold: bool = False) -> np.ndarray:
    """A white strip of ``lines`` lines with ``text`` in black, wrapped at spaces and cut to what fits
    (cv2's Hershey font, so no font files are needed; it has ASCII only)."""
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, 2 if bold else 1

    def fits(line: str) -> bool:
        return cv2.getTextSize(line, font, scale, thickness)[0][0] <= width - 8

    words = text.encode("ascii", "replace").decode().split()
    rows: list[str] = []
    while words and len(rows) < lines:
        row = words.pop(0)
        while words and fits(f"{row} {words[0]}"):
            row = f"{row} {words.pop(0)}"
        rows.append(row)
    if words or (rows and not fits(rows[-1])):
        while len(rows[-1]) > 3 and not fits(rows[-1] + "..."):
            rows[-1] = rows[-1][:-1]
        rows[-1] += "..."  # Hershey fonts have no ellipsis character
    strip = np.full((line_height * lines, width, 3), 255, np.uint8)
    glyph_height = cv2.getTextSize("Ag", font, scale, thickness)[0][1]
    for i, row in enumerate(rows):
        baseline = i * line_height + line_height - (line_height - glyph_height) // 2
        cv2.putText(strip, row, (4, baseline), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return strip


def contact_sheet(sections: list[Section], row_height: int = 200, gap: int = 8) -> np.ndarray:
    """Every panel, one row per method, each panel scaled to ``row_height`` with its caption below it."""
    rows = []
    for section in sections:
        if not section.panels:
            continue
        tiles = []
        for panel in section.panels:
            image = _as_rgb(panel.image)
            width = max(1, round(image.shape[1] * row_height / image.shape[0]))
            image = cv2.resize(image, (width, row_height), interpolation=cv2.INTER_AREA)
            tiles.append(np.concatenate([image, _label(width, panel.caption, 18, 0.4, lines=2)]))
            tiles.append(np.full((tiles[-1].shape[0], gap, 3), 255, np.uint8))
        body = np.concatenate(tiles[:-1], axis=1)
        title = _label(body.shape[1], f"{section.title} - {section.paper}", 30, 0.55, bold=True)
        rows.append(np.concatenate([title, body]))
    if not rows:
        return np.full((row_height, row_height, 3), 255, np.uint8)
    width = max(row.shape[1] for row in rows) + 2 * gap
    padded = []
    for row in rows:
        canvas = np.full((row.shape[0] + gap, width, 3), 255, np.uint8)
        canvas[gap:, gap:gap + row.shape[1]] = row
        padded.append(canvas)
    return np.concatenate(padded)

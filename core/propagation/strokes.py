"""Strokes: scribble rasters, GIMP paths (polylines) and GIMP-exported SVG paths → class labels.

Every source ends in the same place: an H×W×4 RGBA scribble raster (transparent = no stroke), then
``labels_from_scribbles`` turns each distinct opaque color into one stroke class, or, for a selection,
``labels_for_selection`` sorts the stroke pixels into foreground and background by how close they are
to the two stroke colors (GIMP's FG/BG swatches in the plug-in). Polylines are rasterized here and
only here (the daemon for GIMP paths, the CLI for SVG files).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import cv2
import numpy as np

from core.protocol import bad_input

RGB = tuple[int, int, int]

# CSS Color Module Level 4 named colors (the 148 names, grey/gray spellings both).
_CSS = """
aliceblue f0f8ff antiquewhite faebd7 aqua 00ffff aquamarine 7fffd4 azure f0ffff beige f5f5dc bisque ffe4c4
black 000000 blanchedalmond ffebcd blue 0000ff blueviolet 8a2be2 brown a52a2a burlywood deb887
cadetblue 5f9ea0 chartreuse 7fff00 chocolate d2691e coral ff7f50 cornflowerblue 6495ed cornsilk fff8dc
crimson dc143c cyan 00ffff darkblue 00008b darkcyan 008b8b darkgoldenrod b8860b darkgray a9a9a9
darkgreen 006400 darkgrey a9a9a9 darkkhaki bdb76b darkmagenta 8b008b darkolivegreen 556b2f
darkorange ff8c00 darkorchid 9932cc darkred 8b0000 darksalmon e9967a darkseagreen 8fbc8f
darkslateblue 483d8b darkslategray 2f4f4f darkslategrey 2f4f4f darkturquoise 00ced1 darkviolet 9400d3
deeppink ff1493 deepskyblue 00bfff dimgray 696969 dimgrey 696969 dodgerblue 1e90ff firebrick b22222
floralwhite fffaf0 forestgreen 228b22 fuchsia ff00ff gainsboro dcdcdc ghostwhite f8f8ff gold ffd700
goldenrod daa520 gray 808080 green 008000 greenyellow adff2f grey 808080 honeydew f0fff0 hotpink ff69b4
indianred cd5c5c indigo 4b0082 ivory fffff0 khaki f0e68c lavender e6e6fa lavenderblush fff0f5
lawngreen 7cfc00 lemonchiffon fffacd lightblue add8e6 lightcoral f08080 lightcyan e0ffff
lightgoldenrodyellow fafad2 lightgray d3d3d3 lightgreen 90ee90 lightgrey d3d3d3 lightpink ffb6c1
lightsalmon ffa07a lightseagreen 20b2aa lightskyblue 87cefa lightslategray 778899 lightslategrey 778899
lightsteelblue b0c4de lightyellow ffffe0 lime 00ff00 limegreen 32cd32 linen faf0e6 magenta ff00ff
maroon 800000 mediumaquamarine 66cdaa mediumblue 0000cd mediumorchid ba55d3 mediumpurple 9370db
mediumseagreen 3cb371 mediumslateblue 7b68ee mediumspringgreen 00fa9a mediumturquoise 48d1cc
mediumvioletred c71585 midnightblue 191970 mintcream f5fffa mistyrose ffe4e1 moccasin ffe4b5
navajowhite ffdead navy 000080 oldlace fdf5e6 olive 808000 olivedrab 6b8e23 orange ffa500
orangered ff4500 orchid da70d6 palegoldenrod eee8aa palegreen 98fb98 paleturquoise afeeee
palevioletred db7093 papayawhip ffefd5 peachpuff ffdab9 peru cd853f pink ffc0cb plum dda0dd
powderblue b0e0e6 purple 800080 rebeccapurple 663399 red ff0000 rosybrown bc8f8f royalblue 4169e1
saddlebrown 8b4513 salmon fa8072 sandybrown f4a460 seagreen 2e8b57 seashell fff5ee sienna a0522d
silver c0c0c0 skyblue 87ceeb slateblue 6a5acd slategray 708090 slategrey 708090 snow fffafa
springgreen 00ff7f steelblue 4682b4 tan d2b48c teal 008080 thistle d8bfd8 tomato ff6347
turquoise 40e0d0 violet ee82ee wheat f5deb3 white ffffff whitesmoke f5f5f5 yellow ffff00
yellowgreen 9acd32
"""
_words = _CSS.split()
CSS_COLORS: dict[str, RGB] = {
    name: (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))
    for name, h in zip(_words[::2], _words[1::2], strict=True)
}
FG_WORDS = ("fg", "foreground")
BG_WORDS = ("bg", "background")
DEFAULT_FG: RGB = (255, 0, 0)
DEFAULT_BG: RGB = (0, 0, 255)
# Path strokes default to 2 % of the layer's short side: thin enough for the paths to stay inside the
# parts they are drawn on, thick enough that each stroke gives the network a few hundred samples (and
# what the propagation bench calls a user's stroke).
DEFAULT_BRUSH_FRACTION = 0.02
MIN_DEFAULT_BRUSH = 3.0
# Selection strokes: a pixel counts as the FG (BG) color when it is within this RGB distance of it, so
# antialiased, blended or slightly recoloured stroke pixels still count. At most a quarter of a
# channel's range, and never more than a third of the way to the other color.
MAX_STROKE_TOLERANCE = 64.0
# FG and BG colors closer than this (RGB distance) cannot be told apart once a brush softens them.
MIN_FG_BG_DISTANCE = 32.0

_HEX = re.compile(r"#([0-9a-fA-F]{6}|[0-9a-fA-F]{3})(?![0-9a-fA-F])")
_TOKEN = re.compile(r"[a-z]+")


def parse_color(text: str) -> RGB | None:
    """'#rrggbb', '#rgb' or a CSS color name (exactly) → RGB, else None."""
    text = text.strip().lower()
    match = _HEX.fullmatch(text)
    if match:
        return _hex_rgb(match.group(1))
    return CSS_COLORS.get(text.replace(" ", "").replace("-", "").replace("_", ""))


def color_from_name(name: str, fg: RGB = DEFAULT_FG, bg: RGB = DEFAULT_BG) -> RGB | None:
    """A path's color from its name: '#rrggbb' anywhere, else 'fg'/'bg', else a CSS color name anywhere.

    Names are matched as words ('sky blue #4080ff', 'hair: saddle brown', 'bg 2'), so 'reduced'
    is not red; two adjacent words may form one CSS name ('light blue' → lightblue).
    """
    match = _HEX.search(name)
    if match:
        return _hex_rgb(match.group(1))
    tokens = _TOKEN.findall(name.lower())
    if any(t in FG_WORDS for t in tokens):
        return fg
    if any(t in BG_WORDS for t in tokens):
        return bg
    for i, token in enumerate(tokens):
        for joined in ("".join(tokens[i : i + 3]), "".join(tokens[i : i + 2]), token):
            if joined in CSS_COLORS:
                return CSS_COLORS[joined]
    return None


def _hex_rgb(digits: str) -> RGB:
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)


def rgb_hex(color: RGB) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


def default_brush_width(height: int, width: int) -> float:
    """The path brush width (pixels) when none is given: a fraction of the layer's short side."""
    return max(MIN_DEFAULT_BRUSH, round(DEFAULT_BRUSH_FRACTION * min(height, width)))


# --- paths → raster -------------------------------------------------------------------------------


@dataclass
class StrokePath:
    """One GIMP path: a stroke class. ``polylines`` are N×2 (x, y) arrays in layer pixel coordinates."""

    name: str
    polylines: list[np.ndarray] = field(default_factory=list)
    closed: list[bool] = field(default_factory=list)
    fallback_color: RGB | None = None  # the color tag (GIMP) or the SVG stroke attribute

    def color(self, fg: RGB = DEFAULT_FG, bg: RGB = DEFAULT_BG) -> RGB:
        color = color_from_name(self.name, fg, bg)
        if color is None:
            color = self.fallback_color
        if color is None:
            raise bad_input(
                f"Path '{self.name}' has no color. Put a color in its name (e.g. '{self.name} #ff8000', "
                f"'{self.name} red', or 'fg'/'bg' for a selection) or give it a color tag."
            )
        return color


def paths_from_params(items: list, offset: tuple[float, float] = (0.0, 0.0)) -> list[StrokePath]:
    """The plug-in's JSON paths: [{"name", "color": "#rrggbb"|null, "strokes": [[x0, y0, x1, y1, ...]]}].

    ``offset`` (the layer's offsets) is subtracted so image coordinates become layer coordinates.
    """
    if not isinstance(items, list):
        raise bad_input("'paths' must be a list of paths.")
    paths = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise bad_input(f"Path {i + 1} is not an object with a name and strokes.")
        name = str(item.get("name", f"path {i + 1}"))
        fallback = item.get("color")
        fallback_rgb = parse_color(str(fallback)) if fallback else None
        path = StrokePath(name, fallback_color=fallback_rgb)
        for flat in item.get("strokes", []) or []:
            try:
                pts = np.asarray(flat, dtype=np.float64).reshape(-1, 2)
            except ValueError:
                raise bad_input(f"Path '{name}' has a stroke with an odd number of coordinates.") from None
            if len(pts) and np.isfinite(pts).all():
                path.polylines.append(pts - np.asarray(offset, dtype=np.float64))
                path.closed.append(False)
        paths.append(path)
    return paths


def rasterize_paths(
    paths: list[StrokePath],
    height: int,
    width: int,
    brush_width: float,
    fg: RGB = DEFAULT_FG,
    bg: RGB = DEFAULT_BG,
) -> np.ndarray:
    """Draw each path's polylines with a round brush of ``brush_width`` pixels → H×W×4 u8 scribbles.

    Drawn without antialiasing so each path keeps exactly one color. Raises a message naming any
    path without a color or without a single pixel on the layer.
    """
    if not paths:
        raise bad_input("There are no paths to use as strokes. Draw at least two paths with the Paths tool.")
    raster = np.zeros((height, width, 4), np.uint8)
    scratch = np.zeros((height, width), np.uint8)
    # The centerline is drawn 1 px wide, then dilated by a disk of the brush's diameter: cv2's own
    # thick lines come out about two pixels wider than asked.
    diameter = max(1, int(round(brush_width)))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (diameter, diameter)) if diameter > 1 else None
    shift = 4  # sub-pixel precision of cv2's fixed-point coordinates
    for path in paths:
        color = path.color(fg, bg)
        if not path.polylines:
            raise bad_input(f"Path '{path.name}' has no strokes.")
        scratch[:] = 0
        for pts, closed in zip(path.polylines, path.closed, strict=True):
            # Clamp far-away points (cv2 wants int32) instead of letting them wrap around.
            fixed = np.clip(np.round(pts * (1 << shift)), -(1 << 26), 1 << 26).astype(np.int32)
            cv2.polylines(scratch, [fixed.reshape(-1, 1, 2)], closed, 1, 1, cv2.LINE_8, shift)
        if disk is not None:
            scratch = cv2.dilate(scratch, disk)
        painted = scratch.astype(bool)
        if not painted.any():
            raise bad_input(
                f"Path '{path.name}' lies entirely outside the layer ({width}×{height}); move it onto the "
                "layer or pick the layer it was drawn for."
            )
        raster[painted] = (*color, 255)
    return raster


# --- SVG (File > Export Path in GIMP) --------------------------------------------------------------

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_COMMAND = re.compile(r"[MmLlHhVvCcSsQqTtAaZz]|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def read_svg_paths(path: str) -> tuple[list[StrokePath], tuple[float, float] | None]:
    """Paths of an SVG file (GIMP's Export Path) → StrokePaths and the viewBox size (w, h) if given.

    Names come from the element's id (GIMP writes the path name there), inkscape:label or <title>.
    The stroke attribute is only a fallback color when it is not GIMP's default black.
    """
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise bad_input(f"File not found: {path}") from None
    except (ET.ParseError, OSError) as exc:
        raise bad_input(f"Cannot read {path} as SVG: {exc}") from None
    size = None
    box = root.get("viewBox")
    if box:
        values = [float(v) for v in _NUMBER.findall(box)]
        if len(values) == 4:
            size = (values[2], values[3])
    result = []
    for i, element in enumerate(el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "path"):
        name = element.get("id") or element.get("{http://www.inkscape.org/namespaces/inkscape}label")
        title = next((c.text for c in element if c.tag.rsplit("}", 1)[-1] == "title" and c.text), None)
        name = title or name or f"path {i + 1}"
        stroke = (element.get("stroke") or "").strip()
        explicit = stroke and stroke.lower() not in ("black", "#000000", "none")
        fallback = parse_color(stroke) if explicit else None
        sp = StrokePath(name, fallback_color=fallback)
        for pts, closed in parse_path_data(element.get("d", "")):
            sp.polylines.append(pts)
            sp.closed.append(closed)
        result.append(sp)
    return result, size


def parse_path_data(d: str, curve_steps: int = 16) -> list[tuple[np.ndarray, bool]]:
    """SVG path data → polylines (Béziers flattened into ``curve_steps`` segments, arcs as chords)."""
    tokens = _COMMAND.findall(d)
    subpaths: list[tuple[list, bool]] = []
    points: list[tuple[float, float]] = []
    cur = np.zeros(2)
    start = np.zeros(2)
    last_ctrl = None
    cmd = None
    i = 0
    t = np.linspace(0, 1, curve_steps + 1)[1:, None]

    def take(n: int) -> np.ndarray:
        nonlocal i
        vals = tokens[i : i + n]
        if len(vals) < n or any(v.isalpha() for v in vals):
            raise bad_input("SVG path data ends in the middle of a command.")
        i += n
        return np.array([float(v) for v in vals])

    def flush(closed: bool = False):
        nonlocal points
        if points:
            subpaths.append((points, closed))
        points = []

    while i < len(tokens):
        if tokens[i].isalpha():
            cmd = tokens[i]
            i += 1
        elif cmd is None:
            raise bad_input("SVG path data must start with a command (M).")
        rel = cmd.islower()
        base = cur if rel else np.zeros(2)
        c = cmd.upper()
        if c == "Z":
            flush(closed=True)
            cur = start.copy()
            last_ctrl = None
            continue
        if c == "M":
            flush()
            cur = base + take(2)
            start = cur.copy()
            points = [tuple(cur)]
            cmd = "l" if rel else "L"  # further pairs are implicit line-tos
            last_ctrl = None
            continue
        if not points:
            points = [tuple(cur)]
        if c == "L":
            cur = base + take(2)
            points.append(tuple(cur))
            last_ctrl = None
        elif c == "H":
            v = take(1)[0]
            cur = np.array([cur[0] + v if rel else v, cur[1]])
            points.append(tuple(cur))
            last_ctrl = None
        elif c == "V":
            v = take(1)[0]
            cur = np.array([cur[0], cur[1] + v if rel else v])
            points.append(tuple(cur))
            last_ctrl = None
        elif c in "CS":
            if c == "C":
                p1 = base + take(2)
            else:
                p1 = 2 * cur - last_ctrl if last_ctrl is not None else cur.copy()
            p2, p3 = base + take(2), base + take(2)
            curve = (1 - t) ** 3 * cur + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3
            points.extend(map(tuple, curve))
            cur, last_ctrl = p3, p2
        elif c in "QT":
            if c == "Q":
                p1 = base + take(2)
            else:
                p1 = 2 * cur - last_ctrl if last_ctrl is not None else cur.copy()
            p2 = base + take(2)
            curve = (1 - t) ** 2 * cur + 2 * (1 - t) * t * p1 + t**2 * p2
            points.extend(map(tuple, curve))
            cur, last_ctrl = p2, p1
        elif c == "A":
            args = take(7)
            cur = base + args[5:7]
            points.append(tuple(cur))
            last_ctrl = None
    flush()
    return [(np.asarray(p, dtype=np.float64), closed) for p, closed in subpaths if p]


# --- raster → labels -------------------------------------------------------------------------------


@dataclass
class Strokes:
    """Stroke classes of one image: ``labels`` H×W int32 (-1 = no stroke), ``colors`` K×3 u8."""

    labels: np.ndarray
    colors: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.colors)

    def keys(self) -> list[str]:
        return [rgb_hex(tuple(int(v) for v in c)) for c in self.colors]


def labels_from_scribbles(
    scribbles: np.ndarray, alpha_threshold: int = 128, merge_distance: float = 48.0, min_pixels: int = 8
) -> Strokes:
    """Scribble raster (H×W×4 RGBA) → Strokes.

    Pixels with alpha ≥ ``alpha_threshold`` are strokes; each distinct color is a class. Colors
    covering fewer than ``min_pixels`` pixels (antialiased brush edges) join the nearest larger class
    when it is within ``merge_distance`` in RGB, so a soft brush does not create phantom classes.
    """
    if scribbles.ndim != 3 or scribbles.shape[2] not in (3, 4):
        raise bad_input("The scribble layer must be RGB or RGBA (transparent pixels mean 'no stroke').")
    if scribbles.dtype != np.uint8:
        from core.imaging.io import to_uint8

        scribbles = to_uint8(scribbles)
    if scribbles.shape[2] == 4:
        mask = scribbles[..., 3] >= alpha_threshold
    else:
        raise bad_input(
            "The scribble layer has no alpha channel, so every pixel would be a stroke. "
            "Add an alpha channel and paint strokes on a transparent layer."
        )
    labels = np.full(scribbles.shape[:2], -1, np.int32)
    if not mask.any():
        raise bad_input("The scribble layer has no strokes (all of it is transparent).")
    rgb = scribbles[..., :3][mask].astype(np.int32)
    packed = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    values, inverse, counts = np.unique(packed, return_inverse=True, return_counts=True)
    palette = np.stack([(values >> 16) & 255, (values >> 8) & 255, values & 255], 1)
    major = counts >= min_pixels
    if not major.any():
        major = counts == counts.max()
    target = np.arange(len(values))
    major_idx = np.flatnonzero(major)
    for j in np.flatnonzero(~major):
        dist = np.linalg.norm(palette[major_idx] - palette[j], axis=1)
        if dist.min() <= merge_distance:
            target[j] = major_idx[dist.argmin()]
    kept = np.unique(target)
    remap = np.full(len(values), -1, np.int64)
    remap[kept] = np.arange(len(kept))
    labels[mask] = remap[target[inverse.ravel()]]
    return Strokes(labels, palette[kept].astype(np.uint8))


# --- raster → foreground / background ---------------------------------------------------------------


def stroke_tolerance(fg: RGB, bg: RGB) -> float:
    """How far (RGB distance) a stroke pixel may be from the FG or BG color and still count as it.

    Raises a message when the two colors are the same or too close to tell apart.
    """
    distance = float(np.linalg.norm(np.subtract(fg, bg, dtype=np.float64)))
    if distance < MIN_FG_BG_DISTANCE:
        same = "the same color" if distance == 0 else "nearly the same color"
        raise bad_input(
            f"The foreground and background stroke colors are {same} ({rgb_hex(fg)} and {rgb_hex(bg)}), "
            "so foreground and background strokes cannot be told apart. Choose two clearly different "
            "colors (in GIMP: the FG/BG swatches; press D for black and white) and paint with them."
        )
    return min(MAX_STROKE_TOLERANCE, distance / 3)


def selection_side(color: RGB, fg: RGB, bg: RGB) -> int | None:
    """0 when ``color`` counts as the foreground color, 1 as the background color, None for neither."""
    tolerance = stroke_tolerance(fg, bg)
    to_fg = float(np.linalg.norm(np.subtract(color, fg, dtype=np.float64)))
    to_bg = float(np.linalg.norm(np.subtract(color, bg, dtype=np.float64)))
    if to_fg <= tolerance:
        return 0
    if to_bg <= tolerance:
        return 1
    return None


def labels_for_selection(
    scribbles: np.ndarray, fg: RGB, bg: RGB, alpha_threshold: int = 128, min_pixels: int = 8
) -> Strokes:
    """Scribble raster (H×W×4 RGBA) → two classes, foreground (0, color ``fg``) and background (1, ``bg``).

    Opaque pixels (alpha ≥ ``alpha_threshold``) within the stroke tolerance of FG or BG are that class.
    Pixels between the two colors (a soft FG stroke crossing a BG stroke) say neither and are left out.
    Pixels in some other color are an error when there are more than a few of them (at least
    ``min_pixels`` and 1 % of the stroke pixels): the user painted with a color that means nothing here.
    """
    if scribbles.ndim != 3 or scribbles.shape[2] != 4:
        raise bad_input(
            "The scribble layer has no alpha channel, so every pixel would be a stroke. "
            "Add an alpha channel and paint strokes on a transparent layer."
        )
    if scribbles.dtype != np.uint8:
        from core.imaging.io import to_uint8

        scribbles = to_uint8(scribbles)
    tolerance = stroke_tolerance(fg, bg)
    painted = scribbles[..., 3] >= alpha_threshold
    if not painted.any():
        raise bad_input("The scribble layer has no strokes (all of it is transparent).")
    rgb = scribbles[..., :3][painted].astype(np.float64)
    fg_vec, bg_vec = np.asarray(fg, np.float64), np.asarray(bg, np.float64)
    to_fg = np.linalg.norm(rgb - fg_vec, axis=1)
    to_bg = np.linalg.norm(rgb - bg_vec, axis=1)
    is_fg = to_fg <= tolerance
    is_bg = (to_bg <= tolerance) & ~is_fg
    # A mix of the two colors lies near the segment from FG to BG: ambiguous, not a wrong color.
    axis = bg_vec - fg_vec
    along = np.clip((rgb - fg_vec) @ axis / (axis @ axis), 0.0, 1.0)
    off_segment = np.linalg.norm(rgb - (fg_vec + along[:, None] * axis), axis=1)
    other = ~is_fg & ~is_bg & (off_segment > tolerance)
    if other.sum() >= max(min_pixels, 0.01 * len(rgb)):
        packed = rgb[other].astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])
        values, counts = np.unique(packed, return_counts=True)
        common = values[np.argsort(-counts, kind="stable")[:3]]
        names = ", ".join(rgb_hex((int(v) >> 16, (int(v) >> 8) & 255, int(v) & 255)) for v in common)
        raise bad_input(
            f"Select mode takes foreground strokes in {rgb_hex(fg)} and background strokes in {rgb_hex(bg)}, "
            f"but {int(other.sum())} stroke pixels have other colors ({names}). Paint with the foreground "
            "and background colors (in GIMP: the FG/BG swatches), or set the stroke colors to the ones "
            "you painted with."
        )
    for present, side, color, where in (
        (is_fg, "foreground", fg, "the object"),
        (is_bg, "background", bg, "what is not part of it"),
    ):
        if not present.any():
            raise bad_input(
                f"Select mode needs both foreground and background strokes; there is no {side} stroke "
                f"(color {rgb_hex(color)}). Paint over {where} with {rgb_hex(color)}."
            )
    labels = np.full(scribbles.shape[:2], -1, np.int32)
    labels[painted] = np.where(is_fg, 0, np.where(is_bg, 1, -1))
    return Strokes(labels, np.array([fg, bg], np.uint8))

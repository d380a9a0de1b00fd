"""Draw a scene as a picture (Pillow), so people can look at what the questions are about.

The picture is a palette image: it has only a few dozen colours, and a palette PNG encodes several times
faster (and smaller) than an RGB one.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ban.data.synthetic.scenes import COLOR, COLORS, MATERIAL, SHAPE, Scene

RGB: tuple[tuple[int, int, int], ...] = (
    (128, 128, 128),
    (200, 40, 40),
    (40, 80, 210),
    (40, 160, 60),
    (130, 85, 40),
    (130, 50, 170),
    (40, 190, 200),
    (230, 200, 40),
)  # fmt: skip  (same order as scenes.COLORS)
BACKGROUND, FLOOR, HIGHLIGHT = (218, 214, 206), (196, 192, 184), (250, 250, 250)
METAL, GLASS = 0, 2
# Tones of every colour: body, edge, lit top, shaded side; glass objects use a pale body and a dark rim.
TONES = ("body", "edge", "top", "side")
TONE_FACTORS = (1.0, 0.6, 1.25, 0.8)
GLASS_FACTORS = (1.0, 0.5, 1.1, 0.9)
assert len(RGB) == len(COLORS)


def _shade(rgb: tuple[int, ...], factor: float) -> tuple[int, int, int]:
    r, g, b = (int(min(255, max(0, c * factor))) for c in rgb)
    return r, g, b


def _palette() -> list[int]:
    """Flat RGB palette: background, floor, highlight, then per colour 4 tones solid and 4 tones glass."""
    entries = [BACKGROUND, FLOOR, HIGHLIGHT]
    for rgb in RGB:
        entries += [_shade(rgb, f) for f in TONE_FACTORS]
        pale = tuple((c + 2 * 235) // 3 for c in rgb)
        entries += [_shade(pale if f != 0.5 else rgb, f) for f in GLASS_FACTORS]
    return [value for entry in entries for value in entry]


PALETTE = _palette()


def _tone(color: int, glass: bool, tone: str) -> int:
    """Palette index of one tone of one colour."""
    return 3 + color * 2 * len(TONES) + (len(TONES) if glass else 0) + TONES.index(tone)


def render_scene(scene: Scene) -> Image.Image:
    """A palette image of `scene.width` × `scene.height`, objects drawn back (top) to front (bottom)."""
    image = Image.new("P", (scene.width, scene.height), 0)
    image.putpalette(PALETTE)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, scene.height // 3, scene.width, scene.height), fill=1)
    for index in np.argsort(scene.boxes[:, 3], kind="stable"):
        x1, y1, x2, y2 = (float(v) for v in scene.boxes[index])
        shape = int(scene.attributes[index, SHAPE])
        color, material = int(scene.attributes[index, COLOR]), int(scene.attributes[index, MATERIAL])
        body, edge, top, side = (_tone(color, material == GLASS, tone) for tone in TONES)
        if shape == 0:  # cube: front face, lit top, shaded side
            depth = (y2 - y1) * 0.25
            draw.rectangle((x1, y1 + depth, x2 - depth, y2), fill=body, outline=edge)
            draw.polygon([(x1, y1 + depth), (x1 + depth, y1), (x2, y1), (x2 - depth, y1 + depth)], fill=top)
            draw.polygon([(x2 - depth, y1 + depth), (x2, y1), (x2, y2 - depth), (x2 - depth, y2)], fill=side)
        elif shape == 1:  # sphere
            draw.ellipse((x1, y1, x2, y2), fill=body, outline=edge)
        elif shape == 2:  # cylinder: body and elliptic top
            cap = (y2 - y1) * 0.2
            draw.rectangle((x1, y1 + cap / 2, x2, y2 - cap / 2), fill=body)
            draw.ellipse((x1, y2 - cap, x2, y2), fill=body, outline=edge)
            draw.ellipse((x1, y1, x2, y1 + cap), fill=top, outline=edge)
        elif shape == 3:  # cone
            draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=body, outline=edge)
        else:  # ring
            draw.ellipse((x1, y1, x2, y2), outline=body, width=max(2, int((x2 - x1) * 0.18)))
        if material == METAL:  # a specular highlight
            hx, hy, r = x1 + (x2 - x1) * 0.3, y1 + (y2 - y1) * 0.3, (x2 - x1) * 0.08
            draw.ellipse((hx - r, hy - r, hx + r, hy + r), fill=2)
    return image

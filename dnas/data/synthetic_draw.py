"""Procedural drawing for the embedded synthetic data sets (no paper counterpart).

Persons: the identity is carried by clothing colours, a shirt pattern, trousers type,
bags, hat and body proportions (:func:`sample_identity`); a camera
(:func:`sample_camera`) adds its own colour cast, brightness, blur, noise, background
and viewing distance; each image adds pose jitter (position, scale, stride, arm swing,
front/back view) and sometimes an occluder. Everything is drawn with PIL at twice the
output size and downsampled. Shapes: a few classes of procedural shapes and textures
for the synthetic ImageFolder set.

All randomness comes from ``numpy.random.default_rng`` seeded by the caller, so an
image depends only on (seed, identity, camera, image index).
"""
from __future__ import annotations

import colorsys
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Color = tuple[int, int, int]
PATTERNS = ("solid", "hstripes", "vstripes", "checker", "twotone", "dots")
SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring",
                 "hstripes", "vstripes", "checker", "dots", "diagonal")


def _color(rng: np.random.Generator, achromatic_p: float = 0.3) -> Color:
    if rng.random() < achromatic_p:
        v = rng.choice([0.08, 0.2, 0.45, 0.7, 0.92]) + rng.uniform(-0.04, 0.04)
        return tuple(int(255 * v) for _ in range(3))  # type: ignore[return-value]
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.35, 1.0), rng.uniform(0.3, 0.95))
    return int(255 * r), int(255 * g), int(255 * b)


def sample_identity(rng: np.random.Generator) -> dict[str, Any]:
    """Draw the appearance of one person (what stays fixed across cameras)."""
    skin = [(236, 200, 170), (210, 165, 130), (175, 125, 90), (125, 85, 60), (90, 60, 45)]
    hair = [(25, 20, 20), (70, 45, 25), (150, 110, 60), (200, 180, 120), (160, 160, 160)]
    return {
        "skin": skin[rng.integers(len(skin))],
        "hair": hair[rng.integers(len(hair))],
        "long_hair": bool(rng.random() < 0.35),
        "shirt": _color(rng),
        "shirt2": _color(rng),
        "pattern": PATTERNS[rng.integers(len(PATTERNS))],
        "stripe": int(rng.integers(5, 11)),
        "long_sleeves": bool(rng.random() < 0.5),
        "trousers": _color(rng, 0.5),
        "legwear": ("long", "shorts", "skirt")[rng.choice(3, p=[0.6, 0.25, 0.15])],
        "shoes": _color(rng, 0.7),
        "bag": ("none", "backpack", "handbag")[rng.choice(3, p=[0.45, 0.35, 0.2])],
        "bag_color": _color(rng, 0.4),
        "hat": _color(rng) if rng.random() < 0.2 else None,
        "height": rng.uniform(0.78, 0.92),
        "width": rng.uniform(0.8, 1.25),
        "leg_frac": rng.uniform(0.42, 0.52),
    }


def sample_camera(rng: np.random.Generator) -> dict[str, Any]:
    """Draw the conditions of one camera (colour cast, light, blur, background)."""
    clutter = [(rng.uniform(0, 1), rng.uniform(0, 0.6), rng.uniform(0.1, 0.5),
                rng.uniform(0.1, 0.5), _color(rng, 0.4)) for _ in range(int(rng.integers(2, 5)))]
    return {
        "gains": 1.0 + rng.uniform(-0.3, 0.3, size=3),
        "brightness": rng.uniform(0.7, 1.25),
        "gamma": rng.uniform(0.8, 1.25),
        "blur": rng.uniform(0.0, 2.0),
        "noise": rng.uniform(2.0, 9.0),
        "wall": _color(rng, 0.5),
        "floor": _color(rng, 0.6),
        "horizon": rng.uniform(0.55, 0.8),
        "clutter": clutter,
        "scale": rng.uniform(0.88, 1.04),
    }


def _background(size: tuple[int, int], cam: dict, rng: np.random.Generator) -> Image.Image:
    w, h = size
    img = Image.new("RGB", size, cam["wall"])
    d = ImageDraw.Draw(img)
    shift = rng.uniform(-0.08, 0.08, size=2)  # camera shake
    for x, y, rw, rh, col in cam["clutter"]:
        x0, y0 = (x + shift[0]) * w, (y + shift[1]) * h
        d.rectangle([x0 - rw * w / 2, y0, x0 + rw * w / 2, y0 + rh * h], fill=col)
    d.rectangle([0, int((cam["horizon"] + shift[1] / 2) * h), w, h], fill=cam["floor"])
    return img


def _pattern_layer(size: tuple[int, int], ident: dict, rng: np.random.Generator) -> Image.Image:
    w, h = size
    layer = Image.new("RGB", size, ident["shirt"])
    d = ImageDraw.Draw(layer)
    s, c2, kind = ident["stripe"], ident["shirt2"], ident["pattern"]
    off = int(rng.integers(0, s))
    if kind == "hstripes":
        for y in range(-off, h, 2 * s):
            d.rectangle([0, y, w, y + s - 1], fill=c2)
    elif kind == "vstripes":
        for x in range(-off, w, 2 * s):
            d.rectangle([x, 0, x + s - 1, h], fill=c2)
    elif kind == "checker":
        for y in range(-off, h, s):
            for x in range(-off, w, s):
                if ((x + off) // s + (y + off) // s) % 2:
                    d.rectangle([x, y, x + s - 1, y + s - 1], fill=c2)
    elif kind == "twotone":
        d.rectangle([0, h // 2, w, h], fill=c2)
    elif kind == "dots":
        for y in range(-off, h, 2 * s):
            for x in range(-off + (y // (2 * s)) % 2 * s, w, 2 * s):
                d.ellipse([x, y, x + s * 0.8, y + s * 0.8], fill=c2)
    return layer


def draw_person(ident: dict, cam: dict | None, rng: np.random.Generator,
                size: tuple[int, int] = (64, 128)) -> Image.Image:
    """Draw one image of a person seen by a camera.

    Args:
        ident: from :func:`sample_identity`; ``None`` fields are allowed (no hat).
        cam: from :func:`sample_camera`; ``None`` draws a bare person on grey.
        rng: per-image randomness (pose jitter, view, occlusion, noise).
        size: output ``(width, height)``.

    Returns:
        An RGB image of ``size``.
    """
    w, h = size[0] * 2, size[1] * 2
    cam = cam or {"gains": np.ones(3), "brightness": 1.0, "gamma": 1.0, "blur": 0.0,
                  "noise": 0.0, "wall": (128, 128, 128), "floor": (110, 110, 110),
                  "horizon": 0.7, "clutter": [], "scale": 1.0}
    img = _background((w, h), cam, rng)
    d = ImageDraw.Draw(img)
    back = rng.random() < 0.5
    sign = -1 if back else 1  # a side-carried bag swaps sides with the view
    hp = h * ident["height"] * cam["scale"] * rng.uniform(0.92, 1.06)
    cx = w / 2 + rng.uniform(-0.1, 0.1) * w
    y0 = (h - hp) / 2 + rng.uniform(-0.04, 0.04) * h
    rh = hp * 0.065
    tw = hp * 0.2 * ident["width"]
    y_sh, y_hip = y0 + 2.3 * rh, y0 + hp * (1 - ident["leg_frac"])
    y_foot = y0 + hp - hp * 0.03
    lw = tw * 0.42
    stride = rng.uniform(-0.35, 0.35) * tw
    swing = rng.uniform(-0.3, 0.3) * tw
    # legs (trousers / shorts / skirt), shoes
    for sgn in (-1, 1):
        x_hip = cx + sgn * tw * 0.22
        x_ft = x_hip + sgn * stride
        leg = [(x_hip - lw / 2, y_hip), (x_hip + lw / 2, y_hip), (x_ft + lw / 2.4, y_foot),
               (x_ft - lw / 2.4, y_foot)]
        d.polygon(leg, fill=ident["skin"] if ident["legwear"] != "long" else ident["trousers"])
        if ident["legwear"] == "shorts":
            d.polygon([leg[0], leg[1], (x_hip + lw / 2 + sgn * stride * 0.4, (y_hip + y_foot) / 2),
                       (x_hip - lw / 2 + sgn * stride * 0.4, (y_hip + y_foot) / 2)],
                      fill=ident["trousers"])
        d.ellipse([x_ft - lw * 0.6, y_foot - lw * 0.35, x_ft + lw * 0.6, y_foot + lw * 0.2],
                  fill=ident["shoes"])
    if ident["legwear"] == "skirt":
        d.polygon([(cx - tw / 2, y_hip - 4), (cx + tw / 2, y_hip - 4),
                   (cx + tw * 0.75, y_hip + hp * 0.2), (cx - tw * 0.75, y_hip + hp * 0.2)],
                  fill=ident["trousers"])
    # arms behind the torso edges
    arm_w = max(3, int(tw * 0.22))
    for sgn in (-1, 1):
        xs = cx + sgn * tw * 0.55
        hand = (xs + sgn * 0.1 * tw + sgn * swing, y_hip + hp * 0.05)
        elbow = ((xs + hand[0]) / 2, (y_sh + hand[1]) / 2)
        sleeve_col = ident["shirt"]
        d.line([(xs, y_sh + 3), elbow], fill=sleeve_col, width=arm_w)
        d.line([elbow, hand], fill=sleeve_col if ident["long_sleeves"] else ident["skin"],
               width=arm_w)
        d.ellipse([hand[0] - arm_w * 0.6, hand[1] - arm_w * 0.6, hand[0] + arm_w * 0.6,
                   hand[1] + arm_w * 0.6], fill=ident["skin"])
        if ident["bag"] == "handbag" and sgn == sign:
            bw = tw * 0.45
            d.rectangle([hand[0] - bw / 2, hand[1], hand[0] + bw / 2, hand[1] + bw * 0.8],
                        fill=ident["bag_color"])
    # torso with its pattern
    box = (int(cx - tw / 2 - tw * 0.1), int(y_sh), int(cx + tw / 2 + tw * 0.1), int(y_hip + 2))
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon([(box[0], box[1]), (box[2], box[1]), (cx + tw / 2, box[3]),
                                  (cx - tw / 2, box[3])], fill=255)
    layer = _pattern_layer((box[2] - box[0] + 1, box[3] - box[1] + 1), ident, rng)
    img.paste(layer, (box[0], box[1]), mask.crop((box[0], box[1], box[2] + 1, box[3] + 1)))
    if ident["bag"] == "backpack":
        if back:
            d.rounded_rectangle([cx - tw * 0.38, y_sh + rh * 0.5, cx + tw * 0.38, y_hip - rh],
                                radius=4, fill=ident["bag_color"])
        else:
            for sgn in (-1, 1):
                d.line([(cx + sgn * tw * 0.3, y_sh), (cx + sgn * tw * 0.3, y_hip - rh * 1.5)],
                       fill=ident["bag_color"], width=max(2, int(tw * 0.08)))
    # neck, head, hair, hat
    d.rectangle([cx - rh * 0.35, y_sh - rh * 0.5, cx + rh * 0.35, y_sh + 2], fill=ident["skin"])
    hb = [cx - rh * 0.85, y0 + 0.2 * rh, cx + rh * 0.85, y0 + 2.0 * rh]
    d.ellipse(hb, fill=ident["hair"] if back else ident["skin"])
    d.chord([hb[0] - 1, hb[1] - 1, hb[2] + 1, hb[3] - rh * 0.6], 180, 360, fill=ident["hair"])
    if ident["long_hair"]:
        d.rectangle([hb[0], (hb[1] + hb[3]) / 2, hb[2], y_sh + rh * (1.5 if back else 0.6)],
                    fill=ident["hair"])
        if not back:
            d.ellipse([hb[0] + rh * 0.3, hb[1] + rh * 0.5, hb[2] - rh * 0.3, hb[3]],
                      fill=ident["skin"])
    if ident["hat"] is not None:
        d.rectangle([hb[0] - 2, hb[1] - rh * 0.1, hb[2] + 2, hb[1] + rh * 0.55], fill=ident["hat"])
    if rng.random() < 0.15:  # occluder (another pedestrian's shoulder, a pole, a bin)
        ox = rng.choice([0, w * 0.75]) + rng.uniform(-5, 5)
        d.rectangle([ox, rng.uniform(0.3, 0.7) * h, ox + w * 0.25, h], fill=_color(rng, 0.6))
    return apply_camera(img, cam, rng, size)


def apply_camera(img: Image.Image, cam: dict, rng: np.random.Generator,
                 size: tuple[int, int]) -> Image.Image:
    """Camera response: blur, colour cast, brightness, gamma, noise, then downsample."""
    blur = cam["blur"] * rng.uniform(0.8, 1.2)
    if blur > 0.2:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = x * (cam["gains"] * cam["brightness"] * rng.uniform(0.9, 1.1)).astype(np.float32)
    x = np.clip(x, 0.0, 1.0) ** cam["gamma"]
    x = x * 255.0 + rng.normal(0.0, cam["noise"], size=x.shape).astype(np.float32)
    out = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
    return out.resize(size, Image.BILINEAR)


def draw_shape(label: int, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """Draw one image of shape class ``label`` (an index into ``SHAPE_CLASSES``)."""
    s = size * 2
    bg = np.clip(np.array(_color(rng, 0.3), np.float32)
                 + rng.normal(0, 18, size=(s, s, 3)).astype(np.float32), 0, 255)
    img = Image.fromarray(bg.astype(np.uint8))
    d = ImageDraw.Draw(img)
    fg = _color(rng, 0.2)
    r = rng.uniform(0.22, 0.4) * s
    cx, cy = rng.uniform(r, s - r, size=2)
    kind = SHAPE_CLASSES[label]
    box = [cx - r, cy - r, cx + r, cy + r]
    if kind == "circle":
        d.ellipse(box, fill=fg)
    elif kind == "square":
        d.rectangle(box, fill=fg)
    elif kind == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fg)
    elif kind == "cross":
        d.rectangle([cx - r, cy - r / 3, cx + r, cy + r / 3], fill=fg)
        d.rectangle([cx - r / 3, cy - r, cx + r / 3, cy + r], fill=fg)
    elif kind == "ring":
        d.ellipse(box, outline=fg, width=max(3, int(r / 3)))
    else:  # full-image textures
        p = int(rng.integers(8, 20))
        for i in range(-s, 2 * s, p):
            if kind == "hstripes":
                d.rectangle([0, i, s, i + p // 2], fill=fg)
            elif kind == "vstripes":
                d.rectangle([i, 0, i + p // 2, s], fill=fg)
            elif kind == "diagonal":
                d.line([(i, 0), (i + s, s)], fill=fg, width=p // 2)
            else:
                for j in range(0, s, p):
                    if kind == "checker" and (i // p + j // p) % 2:
                        d.rectangle([i, j, i + p - 1, j + p - 1], fill=fg)
                    elif kind == "dots":
                        d.ellipse([i, j, i + p / 2, j + p / 2], fill=fg)
    return img.resize((size, size), Image.BILINEAR)

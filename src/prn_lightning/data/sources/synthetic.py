"""The embedded synthetic dataset: procedurally generated inspection images with exact defect masks.

It lets the whole pipeline (training, evaluation, CLI, CI) run anywhere without downloading anything. Two
categories in MVTec layout:

- `texture`: a woven surface with oriented grain, fractal shading and an illumination gradient; period,
  orientation, phase, colour, brightness and contrast vary per image. Defects: scratch, crack, stain.
- `object`: a turned metal washer with concentric tool marks and a key notch on a dark, uneven background;
  position, size, pose (notch angle), lighting and surface vary per image. Defects: scratch, crack, stain, missing.

Defects are drawn as in MVTec AD: most are plainly visible to a person at 256 px (curved scratches 35-90 px long and
1.5-3.5 px wide, 40-75 grey levels brighter or darker; branching cracks darkening by 40-70 %; tinted stains of 9-22 px
radius, 22-42 % darker or lighter; a chunk of the part cut away), and about one in five (HARD_SHARE) is a hard one,
small and faint. They are local, so trivial whole-image detectors still do not separate them (at most 0.6 image
AUROC, tests/test_synthetic.py). Masks are the pixels the defect changed. Output is byte-identical for the same seed
and generator version (numpy + OpenCV only; every image has its own seed derived from (seed, category, split,
index)); GENERATOR_VERSION is recorded in the marker file, so a copy from another version is regenerated.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from prn_lightning.errors import DatasetError

GENERATOR_VERSION = 2
MARKER = ".prn_synthetic.json"
CATEGORIES = ("object", "texture")
DEFECTS = {"texture": ("crack", "scratch", "stain"), "object": ("crack", "missing", "scratch", "stain")}


@dataclass(frozen=True)
class SyntheticSpec:
    """What `generate_synthetic` writes; recorded in the marker file so a changed spec regenerates."""

    seed: int = 0
    image_size: int = 256
    num_train: int = 80
    num_test_good: int = 30
    num_per_defect: int = 10

    def as_dict(self) -> dict:
        return {"version": GENERATOR_VERSION, "seed": self.seed, "image_size": self.image_size,
                "num_train": self.num_train, "num_test_good": self.num_test_good,
                "num_per_defect": self.num_per_defect}


# ------------------------------------------------------------------------------------------------ noise helpers
def _fractal_noise(rng: np.random.Generator, size: int, cells=(4, 8, 16, 32), persistence: float = 0.55):
    """Smooth multi-octave value noise, zero mean and unit std."""
    out = np.zeros((size, size), np.float32)
    amplitude = 1.0
    for n in cells:
        grid = rng.standard_normal((n + 1, n + 1), dtype=np.float32)
        out += amplitude * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        amplitude *= persistence
    return (out - out.mean()) / (out.std() + 1e-6)


def _oriented_grain(rng: np.random.Generator, size: int, angle: float, length: int):
    """White noise smeared along `angle` (radians): fibres, brushing marks."""
    kernel = np.zeros((length, length), np.float32)
    c, d = (length - 1) / 2, (length - 1) / 2
    dx, dy = np.cos(angle) * d, np.sin(angle) * d
    cv2.line(kernel, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0, 1, cv2.LINE_AA)
    kernel /= kernel.sum()
    grain = cv2.filter2D(rng.standard_normal((size, size), dtype=np.float32), -1, kernel,
                         borderType=cv2.BORDER_REFLECT)
    return (grain - grain.mean()) / (grain.std() + 1e-6)


def _gradient(rng: np.random.Generator, size: int, strength: float):
    """A linear illumination ramp in a random direction, values in [-strength, strength]."""
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) - 0.5
    return strength * 2 * (xx * np.cos(angle) + yy * np.sin(angle))


# ------------------------------------------------------------------------------------------------ normal images
def _texture(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A woven surface (float32 RGB in 0..255) and its foreground (all ones)."""
    theta = np.deg2rad(30 + rng.uniform(-8, 8))
    period = 11.0 * rng.uniform(0.92, 1.08)
    warp = _fractal_noise(rng, size, cells=(3, 6)) * rng.uniform(1.0, 2.5)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = xx * np.cos(theta) + yy * np.sin(theta) + warp
    v = -xx * np.sin(theta) + yy * np.cos(theta) + warp
    weave = np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi)) * \
        np.sin(2 * np.pi * v / period + rng.uniform(0, 2 * np.pi))
    value = (0.9 * weave + 0.55 * _oriented_grain(rng, size, theta, 9) + 0.5 * _fractal_noise(rng, size)
             + _gradient(rng, size, rng.uniform(0.2, 0.6)))
    gray = 125 + rng.uniform(-12, 12) + 26 * rng.uniform(0.85, 1.15) * value
    tint = np.array([1.0, 0.90, 0.74], np.float32) + rng.uniform(-0.04, 0.04, 3).astype(np.float32)
    image = gray[..., None] * tint + 2.5 * rng.standard_normal((size, size, 3), dtype=np.float32)
    return image, np.ones((size, size), np.float32)


@dataclass
class _Part:
    cx: float
    cy: float
    radius: float
    hole: float
    background: np.ndarray    # float32 RGB: what a missing piece reveals


def _object(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, _Part]:
    """A washer on a plain background: image, foreground coverage in [0, 1], and the part's geometry."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    background = (rng.uniform(45, 70) + 12 * _gradient(rng, size, 1.0) + 4 * _fractal_noise(rng, size)
                  + 2.0 * rng.standard_normal((size, size), dtype=np.float32))
    background = np.repeat(background[..., None], 3, axis=2) * np.array([0.95, 1.0, 1.05], np.float32)
    part = _Part(cx=size / 2 + rng.uniform(-0.06, 0.06) * size, cy=size / 2 + rng.uniform(-0.06, 0.06) * size,
                 radius=0.33 * size * rng.uniform(0.96, 1.04), hole=0.0, background=background)
    part.hole = part.radius * rng.uniform(0.33, 0.37)
    r = np.hypot(xx - part.cx, yy - part.cy)
    coverage = np.clip(part.radius - r + 0.5, 0, 1) * np.clip(r - part.hole + 0.5, 0, 1)
    notch_angle = rng.uniform(0, 2 * np.pi)  # pose: a key notch on the rim, anywhere
    nx, ny = part.cx + part.radius * np.cos(notch_angle), part.cy + part.radius * np.sin(notch_angle)
    notch = np.zeros((size, size), np.float32)
    cv2.circle(notch, (round(nx), round(ny)), max(3, round(0.045 * size)), 1.0, -1, cv2.LINE_AA)
    coverage *= 1 - notch
    light = rng.uniform(0, 2 * np.pi)
    shade = np.cos(np.arctan2(yy - part.cy, xx - part.cx) - light)  # directional light on a slightly domed part
    surface = (150 + rng.uniform(-15, 15) + 10 * shade * (r / part.radius)
               + 6 * np.sin(r * rng.uniform(0.9, 1.1) * 1.3 + rng.uniform(0, 2 * np.pi))
               + 7 * _fractal_noise(rng, size) + 4 * _oriented_grain(rng, size, light, 7)
               - 25 * np.clip(1 - (part.radius - r) / 4, 0, 1))  # darker bevel at the rim
    surface = surface[..., None] * np.array([1.0, 1.0, 0.97], np.float32)
    surface += 2.0 * rng.standard_normal((size, size, 3), dtype=np.float32)
    image = coverage[..., None] * surface + (1 - coverage[..., None]) * background
    return image, coverage, part


# ------------------------------------------------------------------------------------------------ defects
# Sizes in pixels at 256 px and contrasts, drawn per defect: a share HARD_SHARE of the defects are hard ones (small and
# faint, like the subtle cases of MVTec AD), the rest are plainly visible to a person.
HARD_SHARE = 0.2
VISIBLE_GREY_LEVELS = 15.0  # defect_visibility at or above it: a person sees the defect at 256 px


@dataclass(frozen=True)
class _Ranges:
    """Uniform ranges of one defect type: `visible` for most defects, `hard` for the faint minority."""

    visible: dict
    hard: dict

    def draw(self, rng: np.random.Generator) -> dict:
        ranges = self.hard if rng.random() < HARD_SHARE else self.visible
        return {name: rng.uniform(*bounds) for name, bounds in ranges.items()}


RANGES = {
    # length in px, width in px, brightness change in grey levels (sign drawn separately)
    "scratch": _Ranges(visible={"length": (35, 90), "width": (1.5, 3.5), "contrast": (40, 75)},
                       hard={"length": (18, 35), "width": (1, 1.5), "contrast": (18, 28)}),
    # steps of 1.5 px per branch, stroke width in px, darkening (fraction of the brightness removed)
    "crack": _Ranges(visible={"steps": (30, 65), "width": (1.5, 3.5), "depth": (0.4, 0.7)},
                     hard={"steps": (15, 30), "width": (1, 1.5), "depth": (0.18, 0.3)}),
    # radius in px, brightness change (a fraction; darker, or lighter for a bleached spot), colour tint strength
    "stain": _Ranges(visible={"radius": (9, 22), "change": (0.22, 0.42), "tint": (0.15, 0.35)},
                     hard={"radius": (5, 9), "change": (0.06, 0.12), "tint": (0.03, 0.06)}),
    # semi-axes of the cut-away ellipse in px
    "missing": _Ranges(visible={"major": (9, 18), "minor": (6, 12)}, hard={"major": (4, 7), "minor": (3, 5)}),
}


def _point_inside(rng: np.random.Generator, size: int, part: _Part | None, margin: float) -> tuple[float, float]:
    if part is None:
        return tuple(rng.uniform(margin, size - margin, 2))
    r = rng.uniform(part.hole + 0.2 * (part.radius - part.hole), part.radius - 0.2 * (part.radius - part.hole))
    a = rng.uniform(0, 2 * np.pi)
    return part.cx + r * np.cos(a), part.cy + r * np.sin(a)


def _stroke(size: int, points: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased polyline coverage in [0, 1]; widths under 2 px are drawn 1 px wide and dimmed."""
    alpha = np.zeros((size, size), np.float32)
    thickness = max(1, int(round(width)))
    cv2.polylines(alpha, [np.round(points * 16).astype(np.int32)], False, 1.0, thickness, cv2.LINE_AA, shift=4)
    return alpha * min(1.0, width / thickness) if width < thickness else alpha


def _scratch(rng, image, part, unit):
    """A curved line (quadratic Bezier), brighter or darker than the surface."""
    p = RANGES["scratch"].draw(rng)
    x0, y0 = _point_inside(rng, image.shape[0], part, 30 * unit)
    length, angle = p["length"] * unit, rng.uniform(0, np.pi)
    x2, y2 = x0 + length * np.cos(angle), y0 + length * np.sin(angle)
    bend = rng.uniform(-0.3, 0.3) * length
    x1, y1 = (x0 + x2) / 2 - bend * np.sin(angle), (y0 + y2) / 2 + bend * np.cos(angle)
    t = np.linspace(0, 1, 48)[:, None]
    curve = (1 - t) ** 2 * [x0, y0] + 2 * (1 - t) * t * [x1, y1] + t ** 2 * [x2, y2]
    alpha = _stroke(image.shape[0], curve, p["width"] * unit)
    delta = rng.choice([-1, 1]) * p["contrast"]
    return alpha, lambda a: image + a[..., None] * delta


def _crack(rng, image, part, unit):
    """A dark branching random walk, up to two side branches thinner than the main one."""
    p = RANGES["crack"].draw(rng)
    size = image.shape[0]
    alpha = np.zeros((size, size), np.float32)
    steps = max(8, round(p["steps"] * unit))
    branches = [(*_point_inside(rng, size, part, 30 * unit), rng.uniform(0, 2 * np.pi), steps, p["width"] * unit)]
    drawn = 0
    while branches and drawn < 3:
        x, y, heading, steps, width = branches.pop(0)
        points = [(x, y)]
        for _ in range(steps):
            heading += rng.normal(0, 0.3)
            x, y = x + 1.5 * unit * np.cos(heading), y + 1.5 * unit * np.sin(heading)
            points.append((x, y))
            if rng.random() < 0.04 and drawn + len(branches) < 2:
                side = heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
                branches.append((x, y, side, steps // 2, max(1.0, 0.6 * width)))
        alpha = np.maximum(alpha, _stroke(size, np.array(points), width))
        drawn += 1
    depth = p["depth"]
    return alpha, lambda a: image * (1 - depth * a[..., None])


def _stain(rng, image, part, unit):
    """A soft blob with a ragged edge, tinted and darker (two in three) or lighter."""
    p = RANGES["stain"].draw(rng)
    size = image.shape[0]
    cx, cy = _point_inside(rng, size, part, 25 * unit)
    radius = p["radius"] * unit
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    ragged = 1 + 0.3 * _fractal_noise(rng, size, cells=(16, 32))
    distance = np.hypot((xx - cx) / rng.uniform(0.7, 1.3), yy - cy) / radius
    alpha = cv2.GaussianBlur(np.clip((ragged - distance) * 2.5, 0, 1), (0, 0), 1.5)
    tint = rng.standard_normal(3).astype(np.float32)
    brightness = 1 + p["change"] * (-1 if rng.random() < 2 / 3 else 1)
    change = brightness * (1 + p["tint"] * tint / (np.abs(tint).max() + 1e-6))
    return alpha, lambda a: image * (1 + a[..., None] * (change - 1))


def _missing(rng, image, part, unit):
    """A chunk of the rim cut away: the background shows through."""
    p = RANGES["missing"].draw(rng)
    angle = rng.uniform(0, 2 * np.pi)
    cx, cy = part.cx + part.radius * np.cos(angle), part.cy + part.radius * np.sin(angle)
    alpha = np.zeros(image.shape[:2], np.float32)
    axes = (max(2, round(p["major"] * unit)), max(2, round(p["minor"] * unit)))
    cv2.ellipse(alpha, (round(cx), round(cy)), axes, np.rad2deg(angle), 0, 360, 1.0, -1, cv2.LINE_AA)
    return alpha, lambda a: image * (1 - a[..., None]) + part.background * a[..., None]


DEFECT_MAKERS = {"crack": _crack, "missing": _missing, "scratch": _scratch, "stain": _stain}


def _apply_defect(rng, defect: str, image: np.ndarray, coverage: np.ndarray, part: _Part | None):
    """Image with one defect and its binary mask; retries until the defect covers a few pixels at least."""
    size = image.shape[0]
    unit = size / 256
    for _ in range(20):
        alpha, paint = DEFECT_MAKERS[defect](rng, image, part, unit)
        alpha = alpha * coverage
        mask = (alpha > 0.3).astype(np.uint8)
        if mask.sum() >= max(4, 12 * unit):
            return paint(alpha), mask
    raise RuntimeError(f"could not place a visible {defect} defect in 20 tries")  # does not happen at >= 64 px


# ------------------------------------------------------------------------------------------------ writing
def _write(path: Path, image: np.ndarray) -> None:
    """Write a float RGB image or a {0, 1} mask (as 0/255) as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.ndim == 3:
        data = cv2.cvtColor(np.clip(image + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    else:
        data = image.astype(np.uint8) * 255
    if not cv2.imwrite(str(path), data):
        raise DatasetError(f"cannot write {path}; check that the folder is writable")


def render_sample(seed: int, category: str, folder: str, index: int, image_size: int,
                  defect: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """One image of the dataset (float32 RGB in 0..255 before rounding) and its defect mask (None when normal).

    A pure function of its arguments; the normal image is drawn first, so `defect=None` with the folder and index
    of a defective image gives that image without its defect (tests measure how visible the defects are).
    """
    rng = np.random.default_rng([seed, CATEGORIES.index(category), zlib.crc32(folder.encode()), index])
    if category == "texture":
        (image, coverage), part = _texture(rng, image_size), None
    else:
        image, coverage, part = _object(rng, image_size)
    if defect is None:
        return image, None
    return _apply_defect(rng, defect, image, coverage, part)


def defect_visibility(seed: int, category: str, defect: str, index: int, image_size: int) -> float:
    """How plainly a person sees test defect `index` of type `defect`: the peak of the Gaussian-blurred (sigma 2 px,
    about what a person resolves at 256 px) absolute grey change between the image as written (8 bits) and the same
    image without its defect. At least VISIBLE_GREY_LEVELS counts as visible; the `hard` draws mostly stay under."""
    image, _ = render_sample(seed, category, f"test/{defect}", index, image_size, defect)
    clean, _ = render_sample(seed, category, f"test/{defect}", index, image_size)
    written, unchanged = (np.clip(x + 0.5, 0, 255).astype(np.uint8).mean(2) for x in (image, clean))
    return float(cv2.GaussianBlur(np.abs(written - unchanged), (0, 0), 2).max())


def generate_synthetic(root: str | Path, seed: int = 0, image_size: int = 256, num_train: int = 80,
                       num_test_good: int = 30, num_per_defect: int = 10,
                       categories: tuple[str, ...] = CATEGORIES) -> dict[str, dict[str, int]]:
    """Write the synthetic dataset into `root` in MVTec layout; returns image counts per category and folder."""
    root = Path(root)
    if image_size < 64:
        raise DatasetError(f"synthetic image_size must be at least 64 pixels, got {image_size}")
    spec = SyntheticSpec(seed, image_size, num_train, num_test_good, num_per_defect)
    counts: dict[str, dict[str, int]] = {}
    for category in categories:
        if category not in DEFECTS:
            raise DatasetError(f"unknown synthetic category '{category}'; choose from {', '.join(CATEGORIES)}")
        base = root / category
        jobs = [("train/good", i, None) for i in range(num_train)]
        jobs += [("test/good", i, None) for i in range(num_test_good)]
        jobs += [(f"test/{d}", i, d) for d in DEFECTS[category] for i in range(num_per_defect)]
        for folder, index, defect in jobs:
            image, mask = render_sample(seed, category, folder, index, image_size, defect)
            if mask is not None:
                _write(base / "ground_truth" / defect / f"{index:03d}_mask.png", mask)
            _write(base / folder / f"{index:03d}.png", image)
            counts.setdefault(category, {}).setdefault(folder, 0)
            counts[category][folder] += 1
    (root / MARKER).write_text(json.dumps({**spec.as_dict(), "categories": list(categories)}, indent=1) + "\n")
    return counts


def _matches(marker: Path, wanted: dict) -> bool:
    if not marker.is_file():
        return False
    found = json.loads(marker.read_text())
    return found.get("version") == GENERATOR_VERSION and all(found.get(k) == v for k, v in wanted.items())


def ensure_synthetic(root: str | Path, seed: int | None = None, **sizes: int) -> Path:
    """Generate the synthetic dataset at `root` unless a matching one is already there.

    A dataset written by this generator version matches when its seed equals `seed` (any seed when None) and
    its sizes equal the given `sizes` (keywords of `generate_synthetic`; any when not given). Otherwise it is
    regenerated with `seed` (0 when None). Generation goes to a temporary sibling folder that is renamed into
    place, so concurrent processes (DDP ranks) and interrupted runs never leave a half-written dataset. A
    non-empty folder at `root` that this generator did not write is never touched.
    """
    root = Path(root)
    wanted = {**({} if seed is None else {"seed": seed}), **sizes}
    marker = root / MARKER
    if _matches(marker, wanted):
        return root
    if marker.is_file():
        shutil.rmtree(root)  # our own output, from another seed, size or generator version: regenerate
    elif root.exists() and any(root.iterdir()):
        raise DatasetError(f"{root} (data.root) exists but holds no synthetic dataset marker ({MARKER}); "
                           "point data.root at an empty or new folder, or delete it to regenerate")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        generate_synthetic(staging, seed=0 if seed is None else seed, **sizes)
        if root.exists():
            root.rmdir()  # empty (checked above)
        os.rename(staging, root)
    except OSError:
        if not _matches(marker, wanted):
            raise  # not a lost race with another process that generated the same data: a real failure
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root

"""Anomaly-source images for simulated anomalies: texture crops (DTD or any folder), else augmented normal images.

DRAEM shows DTD textures through Perlin masks. Any image folder works (e.g. the Brodatz plates); without one the
source is a normal training image, strongly recoloured and turned, which still produces out-of-distribution
patches of the right statistics for the category. Either source then goes through DRAEM's random photometric
augmenters (`SourceAugmentation`, `data.source_augmentation`), so simulated anomalies vary as the method assumes.

Both sources bring a foreign texture into the mask; stains, discolouration and uneven shading keep the part's own
texture and change its tone. `data.source_augmentation.in_place` makes that share of the sources the normal image
itself, recoloured by the same augmenters minus the ones that move pixels, so the blend changes tone, not texture.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from prn_lightning.errors import ConfigError
from prn_lightning.imaging.io import is_image_file, read_image
from prn_lightning.imaging.tensors import image_hw, resize_image
from prn_lightning.synthesis.augment import SourceAugmentation, augment_source, source_augmentation

MIN_CROP = 0.5  # crops cover 50-100 % of the largest crop of the output's aspect
MAX_DECODED_BYTES = 256 << 20  # decoded textures kept per process (DTD's 5,640 images do not all fit; Brodatz does)


def resolve_texture_dir(texture_dir: str | Path | None, data_root: str | Path) -> Path | None:
    """`data.texture_dir`, or for null `<parent of data.root>/dtd/images` when it exists, else None (no textures)."""
    if texture_dir is None:
        default = Path(data_root).parent / "dtd" / "images"
        return default if default.is_dir() else None
    path = Path(texture_dir)
    if not path.is_dir():
        raise ConfigError(f"data.texture_dir={texture_dir} is not a folder; point it to a folder of texture images "
                          "(e.g. dtd/images from the DTD archive) or set it to null to use augmented normal images")
    return path


class TextureSource:
    """Random anomaly-source images of `image_size` (an int or (H, W)), RGB uint8, from a folder or from normals."""

    def __init__(self, texture_dir: str | Path | None, image_size: int | Sequence[int],
                 augmentation: SourceAugmentation | None = None, in_place: float = 0.0) -> None:
        self.image_size = image_hw(image_size)
        self.augmentation = augmentation
        self.in_place = float(in_place)
        self._recolour = None if augmentation is None else augmentation.photometric()
        if self.in_place and (self._recolour is None or self._recolour.per_source == 0):
            raise ConfigError(f"data.source_augmentation.in_place={in_place} needs photometric ops to recolour with: "
                              "set data.source_augmentation.per_source > 0 with ops other than rotate, or in_place=0")
        self.paths: list[Path] = []
        if texture_dir is not None:
            self.paths = sorted(p for p in Path(texture_dir).rglob("*") if p.is_file() and is_image_file(p))
            if not self.paths:
                raise ConfigError(f"data.texture_dir={texture_dir} holds no images (png, jpg, bmp, tif); "
                                  "point it to a folder of textures or set it to null")
        self._augmentation = source_augmentation()
        self._decoded: dict[Path, np.ndarray] = {}  # every simulated sample reads a texture: decode each once
        self._decoded_bytes = 0

    @property
    def uses_textures(self) -> bool:
        return bool(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def sample(self, rng: np.random.Generator, normal_image: np.ndarray | None = None,
               base_image: np.ndarray | None = None) -> np.ndarray:
        """A random crop of a random texture; without textures, a recoloured crop of `normal_image` (required).
        Then the photometric `augmentation`, when there is one. With `in_place` > 0, that share of the draws is
        `base_image` (the image the anomaly is blended into; required then) recoloured where it stands."""
        if self.in_place:
            if base_image is None:
                raise ValueError("TextureSource with in_place > 0 needs the base image to recolour")
            if rng.random() < self.in_place:
                return self._recolour(base_image, rng)
        if self.paths:
            source = self._random_crop(self._texture(self.paths[rng.integers(len(self.paths))]), rng)
        elif normal_image is None:
            raise ValueError("TextureSource has no texture folder: pass a normal image to build the source from")
        else:
            crop = self._random_crop(normal_image, rng)
            source = augment_source(self._augmentation, crop, int(rng.integers(2**31)))
        return source if self.augmentation is None else self.augmentation(source, rng)

    def _texture(self, path: Path) -> np.ndarray:
        """The decoded texture at `path` (read-only: crops are copied by the resize), kept while the budget lasts."""
        image = self._decoded.get(path)
        if image is None:
            image = read_image(path)
            if self._decoded_bytes + image.nbytes <= MAX_DECODED_BYTES:
                self._decoded[path] = image
                self._decoded_bytes += image.nbytes
        return image

    def _random_crop(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random quarter turn of a crop with the output's aspect (after the turn), 50-100 % of the largest such
        crop, at a random place, resized to the output size (so a texture is never stretched)."""
        height, width = image.shape[:2]
        turns = int(rng.integers(4))
        out_h, out_w = self.image_size if turns % 2 == 0 else self.image_size[::-1]
        scale = min(height / out_h, width / out_w) * rng.uniform(MIN_CROP, 1.0)
        crop_h, crop_w = (min(size, max(1, int(round(out * scale)))) for size, out in ((height, out_h), (width, out_w)))
        top = int(rng.integers(height - crop_h + 1))
        left = int(rng.integers(width - crop_w + 1))
        crop = np.rot90(image[top:top + crop_h, left:left + crop_w], k=turns).copy()  # never the kept texture
        return resize_image(crop, self.image_size)

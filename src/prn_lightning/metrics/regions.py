"""Ground-truth regions for PRO: 8-connected components of each binary mask (MVTec AD's `label(gt, ones((3, 3)))`).

PRO only needs, for every mask pixel, the size of the region it belongs to (a region's overlap is the sum of
1 / size over its pixels above the threshold) and the number of regions per image. Both are intrinsic to one image,
so they can be stored per update and gathered across processes without renumbering region ids.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

# 3x3 neighbourhood inside an image, nothing across the batch axis: regions never span two images.
_EIGHT_CONNECTED = np.zeros((3, 3, 3), dtype=bool)
_EIGHT_CONNECTED[1] = True


def label_regions(masks: Tensor) -> tuple[Tensor, Tensor]:
    """8-connected regions of a batch of binary masks (B, H, W), labelled on CPU with scipy.

    Returns:
        region_sizes: int32 (M,), for each mask pixel in flattened (B, H, W) order, the pixel count of its region.
        region_counts: int32 (B,), the number of regions in each image.
        Both on the device of `masks`.
    """
    labelled, _ = ndimage.label(masks.detach().bool().cpu().numpy(), structure=_EIGHT_CONNECTED)
    pixel_region = labelled[labelled > 0]
    sizes = np.bincount(pixel_region)[pixel_region].astype(np.int32)
    # scipy numbers regions in raster order, so each image's regions are one consecutive block of labels.
    last_label = np.maximum.accumulate(labelled.reshape(len(labelled), -1).max(axis=1, initial=0))
    counts = np.diff(last_label, prepend=0).astype(np.int32)
    return torch.from_numpy(sizes).to(masks.device), torch.from_numpy(counts).to(masks.device)

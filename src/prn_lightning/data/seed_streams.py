"""Tags of the independent random streams of a run, in one place so no two draws ever share a stream.

Every random draw of the data path is `numpy.random.default_rng([seed, TAG, ...])` (or a SeedSequence of the same
shape), so each draw is a pure function of the run's seed, its tag and its position (epoch, index, batch, rank):
results do not depend on the number of workers or on what was drawn before, and a resumed run draws the same.
"""
from __future__ import annotations

SCHEDULE = 1      # which sample kind each position of a training epoch gets (seed, SCHEDULE, epoch)
SAMPLE = 2        # per training sample augmentation/placement (seed, SAMPLE, epoch, position)
VALIDATION = 3    # fixed simulated anomalies of the validation split (seed, VALIDATION, index)
HOLDOUT = 11      # which train/good images are held out for validation (seed, HOLDOUT)
BATCH = 12        # device-side Perlin masks and opacities (seed, BATCH, epoch, batch, rank)
LOADER = 13       # the DataLoader's base generator (seed, LOADER, rank)
# The seen-anomaly draw uses numpy.random.default_rng(seed) directly (data/seen.py), as it always has: changing it
# would change which files earlier runs held out.

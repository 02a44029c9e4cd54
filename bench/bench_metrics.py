"""Time and peak memory of the exact test metrics (image AUROC, pixel AUROC, pixel AP, AUPRO, per defect) on CPU.

Each case runs in a fresh subprocess: synthetic 256x256 anomaly maps (smooth fields, blob-shaped defects in 2 of 3
images, ~all-distinct float32 scores) are fed batch by batch like a test loop; peak memory is the growth of the
process's resident-set high-water mark (VmHWM, reset via /proc/self/clear_refs after imports) over its resident set
before the first update, so it counts the stored states plus every compute-time temporary. Compute time is the best
of 3 runs of the whole evaluation (compute + per_defect + curves).
Peers on the same data: torchmetrics' exact BinaryAUROC (pixel AUROC only) and sklearn (values cross-checked).
STACK_NOTES: anomalib 2.7's exact AUPRO takes about 2.5 s on 200 maps of 256x256 on this kind of machine.

Usage: python bench/bench_metrics.py [--quick]   (--quick: 200 images only)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "metrics.json"
SIZE = 256
BATCH = 32
REPEATS = 3
DEFECT_TYPES = ["blob_a", "blob_b", "blob_c"]


def proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    """Reset VmHWM to the current resident set (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def make_batch(start: int, count: int) -> tuple[torch.Tensor, ...]:
    """Deterministic test outputs for images start..start+count-1: smooth maps, defects in 2 of 3 images."""
    generator = torch.Generator().manual_seed(start)
    coarse = torch.randn(count, 1, 8, 8, generator=generator)
    field = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False)[:, 0]
    index = torch.arange(start, start + count)
    labels = (index % 3 != 0).long()
    blobs = torch.nn.functional.interpolate(
        torch.randn(count, 1, 16, 16, generator=generator), size=(SIZE, SIZE), mode="bilinear", align_corners=False
    )[:, 0]
    masks = (blobs > 1.6) & labels.bool()[:, None, None]
    labels = masks.flatten(1).any(1).long()
    maps = torch.sigmoid(field + 2.5 * masks + 0.5 * torch.randn(field.shape, generator=generator))
    scores = maps.flatten(1).topk(100, dim=1).values.mean(1)
    defect_ids = torch.where(labels.bool(), index % len(DEFECT_TYPES), -1)
    return maps, masks, scores, labels, defect_ids


def run_case(num_images: int, what: str) -> dict:
    """One measurement in this (fresh) process."""
    from prn_lightning.metrics import AUPRO, AnomalyMetrics

    if what == "anomaly_metrics":
        metric = AnomalyMetrics(DEFECT_TYPES)
        feed = lambda m, batch: m.update(*batch)  # noqa: E731
    elif what == "aupro":
        metric = AUPRO()
        feed = lambda m, batch: m.update(batch[0], batch[1])  # noqa: E731
    else:
        from torchmetrics.classification import BinaryAUROC

        metric = BinaryAUROC(thresholds=None)
        feed = lambda m, batch: m.update(batch[0].flatten(), batch[1].flatten().long())  # noqa: E731
    warm = AnomalyMetrics(DEFECT_TYPES)  # load every code path once, outside the measurement
    warm.update(*make_batch(0, 3))
    warm.compute()
    del warm
    reset_peak_rss()
    baseline = proc_status_kib("VmRSS")
    update_s = 0.0
    for start in range(0, num_images, BATCH):
        batch = make_batch(start, min(BATCH, num_images - start))
        tick = time.perf_counter()
        feed(metric, batch)
        update_s += time.perf_counter() - tick
    del batch
    compute_times = []
    for _ in range(REPEATS):  # best of a few: other jobs on a shared machine only ever add time
        metric._computed = None  # torchmetrics' cache of compute()
        if what == "anomaly_metrics":
            metric._evaluation = None
        tick = time.perf_counter()
        value = metric.compute()
        if what == "anomaly_metrics":
            per_defect, curves = metric.per_defect(), metric.curves()
            assert len(per_defect) == len(DEFECT_TYPES) and len(curves["roc"]["fpr"]) <= 2001
        else:
            value = float(value)
        compute_times.append(time.perf_counter() - tick)
    compute_s = min(compute_times)
    state_bytes = sum(t.numel() * t.element_size() for name in metric._defaults for t in getattr(metric, name))
    result = {
        "what": what,
        "images": num_images,
        "pixels": num_images * SIZE * SIZE,
        "update_s": round(update_s, 3),
        "compute_s": round(compute_s, 3),
        "compute_s_runs": [round(t, 3) for t in compute_times],
        "state_mb": round(state_bytes / 2**20, 1),
        "peak_rss_growth_mb": round((proc_status_kib("VmHWM") - baseline) / 1024, 1),
        "value": value,
    }
    if what == "anomaly_metrics" and num_images <= 200:
        result["max_abs_diff_vs_sklearn"] = sklearn_difference(metric, value)
    return result


def sklearn_difference(metric, value: dict) -> float:
    """Largest difference between our exact values and sklearn's on the same stored data."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, s = metric.masks[0].numpy(), metric.maps[0].numpy()
    image_y, image_s = torch.cat(metric.labels).numpy(), torch.cat(metric.scores).numpy()
    return max(
        abs(value["pixel_auroc"] - roc_auc_score(y, s)),
        abs(value["pixel_ap"] - average_precision_score(y, s)),
        abs(value["image_auroc"] - roc_auc_score(image_y, image_s)),
    )


def measure(num_images: int, what: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--case", str(num_images), what], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 images only")
    parser.add_argument("--case", nargs=2, metavar=("IMAGES", "WHAT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(int(args.case[0]), args.case[1])))
        return
    cases = [(200, "anomaly_metrics"), (200, "aupro"), (200, "torchmetrics_binary_auroc")]
    if not args.quick:
        cases.append((1700, "anomaly_metrics"))
    results = []
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, load average {load:.2f} at start (other jobs inflate the times)")
    print(f"{'what':<28}{'images':>7}{'pixels':>12}{'update s':>10}{'compute s':>11}{'state MB':>10}{'peak MB':>9}")
    for num_images, what in cases:
        r = measure(num_images, what)
        results.append(r)
        print(
            f"{what:<28}{num_images:>7}{r['pixels']:>12,}{r['update_s']:>10.2f}{r['compute_s']:>11.2f}"
            f"{r['state_mb']:>10.0f}{r['peak_rss_growth_mb']:>9.0f}"
        )
    for r in results:
        print(f"{r['what']} x {r['images']}: {r['value']}")
        if "max_abs_diff_vs_sklearn" in r:
            print(f"  max |ours - sklearn| (pixel AUROC, pixel AP, image AUROC): {r['max_abs_diff_vs_sklearn']:.2e}")
    print("peer: anomalib 2.7 exact AUPRO, 200 maps of 256x256 (STACK_NOTES): ~2.5 s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"cpu_count": os.cpu_count(), "load_average_at_start": round(load, 2), "torch_threads":
             torch.get_num_threads(), "image_size": SIZE, "cases": results},
            indent=2,
        )
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

"""Exact test metrics on CPU: ours (all four, per defect, curves) against anomalib 2.7's AUPRO and AUROC, and the
baseline commit's code, on the same maps.

Each case runs in a fresh process: deterministic 256x256 anomaly maps (smooth fields, blob-shaped defects in 2 of 3
images, ~all-distinct float32 scores) are fed batch by batch like a test loop, then compute() runs `--repeats`
times (cached evaluations cleared) and the median is reported. Peak memory is the growth of the resident-set high
water mark over the resident set before the first update (states plus every compute-time temporary).
Values are cross-checked: ours against sklearn (200 maps) and against anomalib (must agree to 1e-4).

Writes bench/results/metrics.json. Usage: python bench/bench_metrics.py [--quick] [--repeats N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import REPO, row, write_result

SIZE, BATCH = 256, 32
DEFECT_TYPES = ["blob_a", "blob_b", "blob_c"]
BASELINE = "d1546d8"
TARGET_200_S, TARGET_1700_S, AGREEMENT = 0.25, 2.0, 1e-4


def proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


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


def build(what: str):
    """(metric, feed(metric, batch), compute(metric) -> value, clear(metric)) for one case."""
    if what in ("anomaly_metrics", "baseline_anomaly_metrics"):
        from prn_lightning.metrics import AnomalyMetrics

        def compute(m):
            value = m.compute()
            per_defect, curves = m.per_defect(), m.curves()
            assert len(per_defect) == len(DEFECT_TYPES) and len(curves["roc"]["fpr"]) <= 2001
            return value

        def clear(m):
            m._computed, m._evaluation = None, None

        return AnomalyMetrics(DEFECT_TYPES), lambda m, b: m.update(*b), compute, clear
    if what == "ours_aupro":
        from prn_lightning.metrics import AUPRO
        metric = AUPRO()
    elif what == "ours_pixel_auroc":
        from prn_lightning.metrics import PixelAUROC
        metric = PixelAUROC()
    elif what == "anomalib_aupro":
        from anomalib.metrics.aupro import _AUPRO
        metric = _AUPRO(fpr_limit=0.3)
    elif what == "anomalib_pixel_auroc":
        from anomalib.metrics.auroc import _AUROC
        metric = _AUROC()
    else:
        raise ValueError(what)

    def feed(m, batch):
        m.update(batch[0], batch[1].long() if what.startswith("anomalib") else batch[1])

    def clear(m):
        m._computed = None

    return metric, feed, lambda m: float(m.compute()), clear


def run_case(num_images: int, what: str, repeats: int) -> dict:
    """One measurement in this (fresh) process."""
    metric, feed, compute, clear = build(what)
    warm, warm_feed, warm_compute, _ = build(what)  # load every code path once, outside the measurement
    warm_feed(warm, make_batch(0, 3))
    warm_compute(warm)
    del warm
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current resident set
    baseline_kib = proc_status_kib("VmRSS")
    update_s = 0.0
    for start in range(0, num_images, BATCH):
        batch = make_batch(start, min(BATCH, num_images - start))
        tick = time.perf_counter()
        feed(metric, batch)
        update_s += time.perf_counter() - tick
    del batch
    times = []
    for _ in range(repeats):
        clear(metric)
        tick = time.perf_counter()
        value = compute(metric)
        times.append(time.perf_counter() - tick)
    result = {"what": what, "images": num_images, "update_s": update_s, "compute_s": statistics.median(times),
              "compute_s_runs": times, "peak_rss_growth_mb": (proc_status_kib("VmHWM") - baseline_kib) / 1024,
              "value": value}
    if what == "anomaly_metrics" and num_images <= 200:
        result["max_abs_diff_vs_sklearn"] = sklearn_difference(metric, value)
    return result


def sklearn_difference(metric, value: dict) -> float:
    """Largest difference between our exact values and sklearn's on the same stored data."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, s = metric.masks[0].numpy(), metric.maps[0].numpy()
    image_y, image_s = torch.cat(metric.labels).numpy(), torch.cat(metric.scores).numpy()
    return max(abs(value["pixel_auroc"] - roc_auc_score(y, s)), abs(value["pixel_ap"] - average_precision_score(y, s)),
               abs(value["image_auroc"] - roc_auc_score(image_y, image_s)))


def measure(num_images: int, what: str, repeats: int, src: Path = REPO / "src") -> dict:
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{Path(__file__).parent}"}
    done = subprocess.run([sys.executable, __file__, "--case", str(num_images), what, "--repeats", str(repeats)],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"metrics case {what} x {num_images} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def anomalib_available() -> bool:
    try:
        import anomalib  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 images only, no baseline")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--case", nargs=2, metavar=("IMAGES", "WHAT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(int(args.case[0]), args.case[1], args.repeats), default=float))
        return
    results: dict[str, dict] = {}
    for key, images, what in [("all_200", 200, "anomaly_metrics"), ("aupro_200", 200, "ours_aupro"),
                              ("pixel_auroc_200", 200, "ours_pixel_auroc")]:
        results[key] = measure(images, what, args.repeats)
    if anomalib_available():
        results["anomalib_aupro_200"] = measure(200, "anomalib_aupro", max(1, args.repeats // 2))
        results["anomalib_pixel_auroc_200"] = measure(200, "anomalib_pixel_auroc", max(1, args.repeats // 2))
    if not args.quick:
        results["all_1700"] = measure(1700, "anomaly_metrics", max(1, args.repeats // 2))
        with tempfile.TemporaryDirectory(prefix="prn-bench-") as scratch:
            checkout = Path(scratch) / "baseline"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(checkout), BASELINE],
                           check=True, capture_output=True)
            try:
                results["baseline_all_200"] = measure(200, "anomaly_metrics", args.repeats, checkout / "src")
                results["baseline_all_1700"] = measure(1700, "anomaly_metrics", max(1, args.repeats // 2),
                                                       checkout / "src")
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(checkout)],
                               capture_output=True)
    for key, r in results.items():
        print(f"{key:<26} update {r['update_s']:6.2f} s  compute {r['compute_s']:6.3f} s (median of "
              f"{len(r['compute_s_runs'])})  peak +{r['peak_rss_growth_mb']:5.0f} MB  value {r['value']}")
    rows = summary_rows(results)
    write_result("metrics", {"image_size": SIZE, "repeats": args.repeats, "results": results, "rows": rows})


def summary_rows(results: dict) -> list[dict]:
    ours, rows = results["all_200"], []
    base = results.get("baseline_all_200")
    rows.append(row("all four metrics + per defect + curves, 200 maps 256x256 (compute)", round(ours["compute_s"], 3),
                    "s", peer=round(base["compute_s"], 3) if base else None, peer_name=f"baseline {BASELINE}",
                    target=f"<= {TARGET_200_S} s", met=ours["compute_s"] <= TARGET_200_S,
                    note=f"update (storing, region labelling) {ours['update_s']:.2f} s; "
                         f"max |ours - sklearn| {ours['max_abs_diff_vs_sklearn']:.1e}"))
    if "all_1700" in results:
        big, base_big = results["all_1700"], results.get("baseline_all_1700")
        rows.append(row("all four metrics, 1,700 maps 256x256 (compute)", round(big["compute_s"], 3), "s",
                        peer=round(base_big["compute_s"], 3) if base_big else None,
                        peer_name=f"baseline {BASELINE}", target=f"< {TARGET_1700_S} s",
                        met=big["compute_s"] < TARGET_1700_S,
                        note=f"update {big['update_s']:.2f} s, peak +{big['peak_rss_growth_mb']:.0f} MB"))
    for name, ours_key, peer_key, field in [("PRO (AUPRO to FPR 0.3)", "aupro_200", "anomalib_aupro_200", "pro"),
                                            ("pixel AUROC", "pixel_auroc_200", "anomalib_pixel_auroc_200",
                                             "pixel_auroc")]:
        if peer_key not in results:
            continue
        mine, peer = results[ours_key], results[peer_key]
        difference = abs(mine["value"] - peer["value"])
        rows.append(row(f"{name}, 200 maps (compute)", round(mine["compute_s"], 3), "s",
                        peer=round(peer["compute_s"], 3), peer_name="anomalib 2.7",
                        target=f"values agree to {AGREEMENT:g}", met=difference <= AGREEMENT,
                        note=f"ours {mine['value']:.6f}, anomalib {peer['value']:.6f}, |diff| {difference:.1e}; "
                             f"all four at once: {results['all_200']['value'][field]:.6f}"))
    return rows


if __name__ == "__main__":
    main()

"""Exported PRN against PyTorch eager: inference per 256x256 image at batch 1 and 8, on this machine's CPU.

The model is the default offline configuration (experiments/model/base.yaml: bundled EfficientNet-Lite0, 3 MSA blocks
per stage) with prototypes fitted on 60 textures (ratio 0.1), exported as `prn export` exports it. Backends: PyTorch
eager (what `prn predict ckpt=...` runs), ONNX Runtime's CPU provider and OpenVINO's CPU plugin with the float32
precision hint (both as `prn predict model=...` runs them); for reference also OpenVINO with its default precision on
this CPU (bfloat16 where the processor has it), which is faster but not equal to PyTorch (its map deviation is shown).
Every backend gets the same images. The backends take turns in blocks (so that load from other processes falls on
all of them alike), with a pause and an untimed call at the start of each block: the runtimes' worker threads keep
spinning for a while after a call, and one runtime's spinning threads would otherwise slow the next one down, which
a deployment running one runtime never sees. The median over all timed calls is reported.

Writes bench/results/deploy.json.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import openvino as ov
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import prn_lightning
from prn_lightning.deploy import ExportableModel, ModelMetadata, export_model, load_inferencer
from prn_lightning.deploy.inferencers import OpenVINOInferencer
from prn_lightning.models.prn import PRNNetwork

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SIZE = 256
NUM_NORMAL = 60
RATIO = 0.1
BLOCKS = 3
CALLS_PER_BLOCK = {1: 5, 8: 2}
SETTLE_S = 1.0


def random_textures(n: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth random textures plus grain, RGB in [0, 1]."""
    coarse = torch.rand(n, 3, SIZE // 16, SIZE // 16, generator=generator)
    smooth = F.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False)
    return (smooth + 0.1 * torch.randn(n, 3, SIZE, SIZE, generator=generator)).clamp(0, 1)


def build_model() -> tuple[ExportableModel, ModelMetadata]:
    cfg = OmegaConf.load(REPO / "experiments" / "model" / "base.yaml").model
    torch.manual_seed(0)
    network = PRNNetwork.from_config(cfg, SIZE)
    normals = random_textures(NUM_NORMAL, torch.Generator().manual_seed(0))
    network.prototypes.fit(network.extract_prototype_features(normals.split(8)), ratio=RATIO,
                           iterations=int(cfg.kmeans_iterations), seed=0)
    model = ExportableModel(network, int(cfg.topk), float(cfg.map_smoothing_sigma))
    metadata = ModelMetadata(image_size=(SIZE, SIZE), threshold=0.5, backbone=str(cfg.backbone.name),
                             num_seen_anomalies=0, topk=model.topk, map_smoothing_sigma=model.map_smoothing_sigma,
                             prototypes_per_stage=network.prototypes.counts(), version=prn_lightning.__version__)
    return model, metadata


def main() -> None:
    load_before = os.getloadavg()[0]
    model, metadata = build_model()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_model(model, metadata, "onnx", Path(tmp) / "onnx")
        xml_path = export_model(model, metadata, "openvino", Path(tmp) / "openvino")
        backends = {
            "PyTorch eager": lambda x: model_outputs(model, x),
            "ONNX Runtime (CPU)": load_inferencer(onnx_path).predict,
            "OpenVINO (CPU, f32)": load_inferencer(xml_path).predict,
            f"OpenVINO (CPU, default: {default_precision()})": OpenVINOInferencer(xml_path, precision=None).predict,
        }
        generator = torch.Generator().manual_seed(1)
        results = {name: {} for name in backends}
        for batch, calls in CALLS_PER_BLOCK.items():
            images = random_textures(batch, generator).numpy()
            reference = backends["PyTorch eager"](images)[0]
            times: dict[str, list[float]] = {name: [] for name in backends}
            for name, run in backends.items():  # warm-up, and each backend's deviation from PyTorch
                run(images)
                results[name][f"max_map_diff_batch{batch}"] = float(np.abs(run(images)[0] - reference).max())
            for _ in range(BLOCKS):
                for name, run in backends.items():
                    time.sleep(SETTLE_S)
                    run(images)
                    for _ in range(calls):
                        start = time.perf_counter()
                        run(images)
                        times[name].append((time.perf_counter() - start) / batch)
            for name in backends:
                results[name][f"batch{batch}_s_per_image"] = round(statistics.median(times[name]), 4)
    eager = results["PyTorch eager"]
    for values in results.values():
        for batch in CALLS_PER_BLOCK:
            values[f"batch{batch}_speedup"] = round(eager[f"batch{batch}_s_per_image"]
                                                   / values[f"batch{batch}_s_per_image"], 2)
    report(results, load_before)


def model_outputs(model: ExportableModel, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        maps, scores = model(torch.from_numpy(images))
    return maps.numpy(), scores.numpy()


def default_precision() -> str:
    return ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()


def report(results: dict[str, dict], load_before: float) -> None:
    print(f"PRN export at {SIZE}x{SIZE} (bundled Lite0, default config), torch threads {torch.get_num_threads()}, "
          f"load average before: {load_before:.1f} (other processes slow every figure down)")
    print(f"{'backend':36s} {'b1 s/img':>9s} {'x eager':>8s} {'b8 s/img':>9s} {'x eager':>8s} {'max |map diff|':>15s}")
    for name, r in results.items():
        diff = max(r["max_map_diff_batch1"], r["max_map_diff_batch8"])
        print(f"{name:36s} {r['batch1_s_per_image']:9.4f} {r['batch1_speedup']:8.2f} "
              f"{r['batch8_s_per_image']:9.4f} {r['batch8_speedup']:8.2f} {diff:15.1e}")
    out = HERE / "results" / "deploy.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "image_size": SIZE,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "openvino_default_precision": default_precision(),
        "load_average_1m_before": round(load_before, 2),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "results": results,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

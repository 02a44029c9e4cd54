"""The JSON written next to an exported model: what a deployment needs to feed the model and read its outputs.

An exported model is a bare graph; the image size it was traced at, the threshold chosen on the validation split
and the top-k/smoothing that shaped its score are not recoverable from it. `metadata.json` carries them, so the
model can run without this package (see the README's "Deploy" section) and `prn predict model=...` makes the same
decisions as with the checkpoint.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from prn_lightning.errors import PRNUserError

METADATA_FILE = "metadata.json"
INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "score")
PREPROCESSING = ("RGB uint8 brought to image_size (H, W) as `resize` says (squash: stretched to it; keep-aspect: "
                 "scaled to fit, centred, padded black), with cv2.INTER_AREA when shrinking and cv2.INTER_LINEAR when "
                 "enlarging, divided by 255 to float32 in [0, 1], layout (B, 3, H, W); the model normalises inside")


class ModelFileError(PRNUserError):
    """An exported model or its metadata.json that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class ModelMetadata:
    """Everything about an exported model that is not in its graph."""

    image_size: tuple[int, int]
    threshold: float
    backbone: str
    num_seen_anomalies: int | None
    topk: int
    map_smoothing_sigma: float
    prototypes_per_stage: list[int]
    version: str
    resize: str = "squash"
    format: str = "checkpoint"
    model_file: str = ""
    opset: int | None = None
    input_name: str = INPUT_NAME
    output_names: tuple[str, ...] = OUTPUT_NAMES
    preprocessing: str = PREPROCESSING

    def to_json(self) -> str:
        payload = asdict(self)
        payload["image_size"] = list(self.image_size)
        payload["output_names"] = list(self.output_names)
        return json.dumps(payload, indent=2) + "\n"

    def write(self, out_dir: Path) -> Path:
        path = Path(out_dir) / METADATA_FILE
        path.write_text(self.to_json())
        return path

    @classmethod
    def read(cls, model_path: Path) -> ModelMetadata:
        """The metadata.json next to `model_path` (an exported model file)."""
        path = Path(model_path).parent / METADATA_FILE
        if not path.is_file():
            raise ModelFileError(f"{path} is missing: an exported model needs the {METADATA_FILE} that `prn export` "
                                 "writes next to it (image size, threshold); export the checkpoint again")
        try:
            payload = json.loads(path.read_text())
            payload["image_size"] = tuple(int(s) for s in payload["image_size"])
            payload["output_names"] = tuple(payload["output_names"])
            return cls(**payload)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ModelFileError(f"{path} is not a metadata file written by `prn export` ({err}); export the "
                                 "checkpoint again") from err

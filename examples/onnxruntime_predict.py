"""A model from `prn export format=onnx` with onnxruntime alone: python onnxruntime_predict.py DIR IMAGE..."""
import json
import sys

import cv2
import numpy as np
import onnxruntime as ort

meta = json.load(open(f"{sys.argv[1]}/metadata.json"))  # image size, threshold, input name (resize: squash)
session = ort.InferenceSession(f"{sys.argv[1]}/{meta['model_file']}", providers=["CPUExecutionProvider"])
h, w = meta["image_size"]
for path in sys.argv[2:]:
    image = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    shrink = image.shape[0] > h or image.shape[1] > w
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    batch = (image / np.float32(255)).transpose(2, 0, 1)[None]  # (1, 3, H, W) in [0, 1]
    anomaly_map, score = session.run(None, {meta["input_name"]: batch})  # (1, H, W), (1,)
    print(path, f"{score[0]:.6f}", "anomalous" if score[0] >= meta["threshold"] else "normal")

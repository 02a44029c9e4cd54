"""Image-level AUROC of anomaly scores against image labels, exact (sklearn's roc_auc_score semantics)."""
from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from prn_lightning.metrics.inputs import check_binary, check_same_shape, check_scores, check_vector
from prn_lightning.metrics.ranking import binary_auroc
from prn_lightning.metrics.states import concatenated
from prn_lightning.torch_threads import on_one_intra_op_thread


class ImageAUROC(Metric):
    """update(scores (B,) float, labels (B,) {0, 1}); compute() -> float64 scalar (nan if a class is missing)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, labels: Tensor) -> None:
        scores = check_scores(check_vector(scores, "scores"), "scores")
        labels = check_binary(check_vector(labels, "labels"), "labels")
        check_same_shape(scores, labels, "scores", "labels")
        self.scores.append(scores.detach().clone())
        self.labels.append(labels.clone())

    @on_one_intra_op_thread
    def compute(self) -> Tensor:
        return binary_auroc(concatenated(self, "scores"), concatenated(self, "labels", torch.bool))

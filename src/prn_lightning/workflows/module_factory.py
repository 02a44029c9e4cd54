"""The one place a run config becomes a `PRNModule`: `model.*` (and `data.image_size`, `seed`) -> explicit arguments.

`prn train` builds its module here; `prn test`, `prn predict` and `prn export` load theirs with
`PRNModule.from_checkpoint`, which needs no config (the checkpoint holds the module's arguments and the run config).
"""
from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

from prn_lightning.models.prn.lightning_module import PRNModule
from prn_lightning.models.prn.loss import PRNLoss
from prn_lightning.models.prn.network import PRNNetwork
from prn_lightning.models.prn.optimisation import OptimiserSettings, PrototypeSettings, SchedulerSettings


def build_module(cfg: DictConfig, defect_types: Sequence[str] = (), pretrained_backbone: bool = True) -> PRNModule:
    """A fresh module for the run `cfg`; the resolved config travels in its checkpoints (`module.run_config`)."""
    model = cfg.model
    qkv_decay = model.optimizer.get("qkv_weight_decay")  # absent from run configs saved before the key existed
    module = PRNModule(
        network=PRNNetwork.from_config(model, cfg.data.image_size, pretrained_backbone),
        loss=PRNLoss.from_config(model.loss),
        optimiser=OptimiserSettings(name=str(model.optimizer.name), lr=float(model.optimizer.lr),
                                    weight_decay=float(model.optimizer.weight_decay),
                                    qkv_weight_decay=None if qkv_decay is None else float(qkv_decay)),
        scheduler=SchedulerSettings(name=str(model.scheduler.name), step_size=int(model.scheduler.step_size),
                                    gamma=float(model.scheduler.gamma),
                                    warmup_steps=int(model.scheduler.warmup_steps),
                                    min_lr=float(model.scheduler.min_lr)),
        prototypes=PrototypeSettings(ratio=float(model.prototype_ratio), iterations=int(model.kmeans_iterations),
                                     seed=int(cfg.seed), leave_one_out=bool(model.prototype_leave_one_out)),
        topk=int(model.topk),
        map_smoothing_sigma=float(model.map_smoothing_sigma),
        defect_types=list(defect_types),
    )
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    return module

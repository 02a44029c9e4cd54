"""`model.optimizer.ema_decay`: the moving average of the trained parameters, its swap in and out for validation, and
its place in checkpoints (state_dict = the average, the raw weights beside it for resuming)."""
from __future__ import annotations

import torch
from torch import nn

from prn_lightning.models.prn.weight_average import RAW_WEIGHTS_KEY, ParameterAverage


def small_module() -> nn.Module:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    module[0].requires_grad_(False)  # frozen, like the backbone: never averaged
    return module


def test_update_follows_the_warmed_up_decay_and_skips_frozen_parameters():
    module = small_module()
    average = ParameterAverage(module, decay=0.9)
    assert average.names == ["1.weight", "1.bias", "2.weight", "2.bias"]
    start = {n: p.detach().clone() for n, p in module.named_parameters()}
    expected = {n: start[n].clone() for n in average.names}
    for step in range(1, 41):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn_like(p))
        decay = min(0.9, (1 + step) / (10 + step))  # 0.18, 0.25, ..., the full 0.9 from step 80
        current = dict(module.named_parameters())
        expected = {n: decay * expected[n] + (1 - decay) * current[n].detach() for n in average.names}
        average.update(module)
        assert all(torch.allclose(average.average[n], expected[n], atol=1e-6) for n in average.names)
    assert average.updates == 40 and "0.weight" not in average.names and "0.bias" not in average.names


def test_swap_exchanges_and_a_second_swap_restores():
    module = small_module()
    average = ParameterAverage(module, decay=0.9)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    raw = {n: p.detach().clone() for n, p in module.named_parameters()}
    held = {n: v.clone() for n, v in average.average.items()}
    average.swap(module)
    current = dict(module.named_parameters())
    assert average.swapped and all(torch.equal(current[n], held[n]) for n in average.names)
    assert torch.equal(current["0.weight"], raw["0.weight"])  # frozen ones never move
    average.swap(module)
    assert not average.swapped
    assert all(torch.equal(p, raw[n]) for n, p in module.named_parameters())


def test_checkpoints_hold_the_average_and_resume_both():
    """Saved swapped (during validation) or not, state_dict holds the average and RAW_WEIGHTS_KEY the raw weights;
    reading it back gives the optimiser the raw weights and the average its values."""
    for swapped in (False, True):
        module = small_module()
        average = ParameterAverage(module, decay=0.9)
        with torch.no_grad():
            for p in module.parameters():
                p.mul_(3.0)
        average.update(module)
        with torch.no_grad():
            for p in module.parameters():
                p.add_(1.0)
        raw = {n: p.detach().clone() for n, p in module.named_parameters()}
        held = {n: v.clone() for n, v in average.average.items()}
        if swapped:
            average.swap(module)
        checkpoint = {"state_dict": {k: v.clone() for k, v in module.state_dict().items()}}
        average.write(checkpoint)
        assert all(torch.equal(checkpoint["state_dict"][n], held[n]) for n in average.names)
        assert all(torch.equal(checkpoint[RAW_WEIGHTS_KEY][n], raw[n]) for n in average.names)
        assert torch.equal(checkpoint["state_dict"]["1.running_mean"], module.state_dict()["1.running_mean"])

        fresh = small_module()
        resumed = ParameterAverage(fresh, decay=0.9)
        resumed.read(checkpoint)
        fresh.load_state_dict(checkpoint["state_dict"])
        assert all(torch.equal(p, raw[n]) for n, p in fresh.named_parameters() if n in resumed.names)
        assert all(torch.equal(resumed.average[n], held[n]) for n in resumed.names) and not resumed.swapped
        assert resumed.updates == average.updates == 1

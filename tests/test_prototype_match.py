"""Per-location prototype matching (model.prototype_match=location): exact against a brute-force search."""
from __future__ import annotations

import copy

import pytest
import torch

from prn_lightning.models.prn.prototypes import PrototypeBank, PrototypeError

SHAPES = [(4, 6, 5), (3, 3, 3), (2, 1, 2)]


def _features(n: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, *shape, generator=generator) for shape in SHAPES]


def _bank(match: str, neighbourhood: int = 0) -> PrototypeBank:
    bank = PrototypeBank(len(SHAPES), match=match, neighbourhood=neighbourhood)
    bank.fit(_features(12, seed=1), ratio=0.5, iterations=5, seed=0)
    return bank


def _brute_force(prototypes: torch.Tensor, features: torch.Tensor, r: int) -> torch.Tensor:
    """Distance from each feature vector to its nearest in-bounds candidate, (B, h, w), by explicit loops."""
    k, c, h, w = prototypes.shape
    best = torch.full((features.shape[0], h, w), float("inf"), dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            ys, xs = range(max(0, y - r), min(h, y + r + 1)), range(max(0, x - r), min(w, x + r + 1))
            window = torch.stack([prototypes[:, :, yy, xx] for yy in ys for xx in xs], dim=1).reshape(-1, c)
            distances = torch.cdist(features[:, :, y, x].double(), window.double())
            best[:, y, x] = distances.min(dim=1).values
    return best


@pytest.mark.parametrize("neighbourhood", [0, 1, 2])
def test_location_match_is_the_nearest_vector_in_the_window(neighbourhood):
    bank = _bank("location", neighbourhood)
    for stage, query in enumerate(_features(5, seed=7)):
        chosen = bank.nearest(stage, query)
        assert chosen.shape == query.shape
        reached = (query - chosen).double().square().sum(dim=1).sqrt()
        torch.testing.assert_close(reached, _brute_force(bank[stage], query, neighbourhood), rtol=1e-5, atol=1e-5)
        # every chosen vector is one of the prototypes' vectors in the window (not a blend)
        vectors = bank[stage].permute(0, 2, 3, 1).reshape(-1, query.shape[1])
        picked = chosen.permute(0, 2, 3, 1).reshape(-1, query.shape[1])
        gaps = torch.cdist(picked, vectors, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
        assert gaps.max() == 0


def test_location_match_mixes_prototypes_where_image_match_cannot():
    image, location = _bank("image"), _bank("location")
    location.load_state_dict(image.state_dict())
    prototypes = image[0]
    # left half from prototype 0, right half from prototype 1: no whole prototype fits, every position does.
    mixed = prototypes[0:1].clone()
    mixed[..., 3:] = prototypes[1:2, ..., 3:]
    assert torch.equal(location.nearest(0, mixed), mixed)
    assert not torch.equal(image.nearest(0, mixed), mixed)
    # a prototype shifted by one position is recovered inside a neighbourhood of 1 (away from the border)
    shifted_bank = _bank("location", neighbourhood=1)
    shifted_bank.load_state_dict(image.state_dict())
    shifted = torch.roll(prototypes[2:3], shifts=1, dims=3)
    found = shifted_bank.nearest(0, shifted)
    assert torch.equal(found[..., 1:], shifted[..., 1:])
    assert not torch.equal(location.nearest(0, shifted)[..., 1:], shifted[..., 1:])


@pytest.mark.parametrize("neighbourhood", [0, 1])
def test_location_leave_one_out_replaces_the_own_prototype_by_the_other_members_mean(neighbourhood):
    """Each member matches, position by position, among the other prototypes and its own cluster without it."""
    maps = _features(12, seed=1)
    bank = _bank("location", neighbourhood)  # fitted on these 12 maps, so every one of them is a member
    members = torch.tensor([True] * 10 + [False] * 2)
    for stage, query in enumerate(maps):
        prototypes, sizes = bank[stage], bank._buffers[f"sizes_{stage}"]
        flat = prototypes.reshape(len(prototypes), -1)
        own = torch.cdist(query.reshape(len(query), -1), flat).argmin(dim=1)
        chosen = bank.nearest(stage, query, members)
        for i in range(len(query)):
            candidates = prototypes
            if members[i]:  # brute force: the own cluster's mean without member i, or no own prototype if alone
                others = [j for j in range(len(query)) if j != i and own[j] == own[i]]
                keep = [k for k in range(len(prototypes)) if k != own[i]]
                candidates = prototypes[keep]
                if others:
                    torch.testing.assert_close(query[others].mean(0), prototypes[own[i]] - (
                        query[i] - prototypes[own[i]]) / (sizes[own[i]] - 1), rtol=1e-4, atol=1e-4)
                    candidates = torch.cat([candidates, query[others].mean(0, keepdim=True)])
            reached = (query[i:i + 1] - chosen[i:i + 1]).double().square().sum(dim=1).sqrt()
            torch.testing.assert_close(reached, _brute_force(candidates, query[i:i + 1], neighbourhood),
                                       rtol=1e-4, atol=1e-4)
        # members reach farther than plainly matched (their own contribution is gone); non-members are unchanged
        plain = bank.nearest(stage, query)
        assert torch.equal(chosen[~members], plain[~members])
        assert (query[members] - chosen[members]).square().sum() > (query[members] - plain[members]).square().sum()


def test_location_windows_are_kept_only_while_the_prototypes_stay_the_same():
    """The shifted candidate windows are built once per prototype tensor: a refit, a load or an in-place change of
    the prototypes rebuilds them, so a lookup always uses the current prototypes."""
    bank = _bank("location", 1)
    query = _features(3, seed=5)[0]
    bank.nearest(0, query)  # builds the windows
    other = _bank("image")
    other.fit(_features(12, seed=9), ratio=0.5, iterations=5, seed=0)
    bank.load_state_dict(other.state_dict())
    reached = (query - bank.nearest(0, query)).double().square().sum(dim=1).sqrt()
    torch.testing.assert_close(reached, _brute_force(other[0], query, 1), rtol=1e-5, atol=1e-5)
    bank.stage_0.mul_(2.0)
    reached = (query - bank.nearest(0, query)).double().square().sum(dim=1).sqrt()
    torch.testing.assert_close(reached, _brute_force(2.0 * other[0], query, 1), rtol=1e-5, atol=1e-5)
    assert copy.deepcopy(bank)._windows == {}


def test_location_match_ignores_the_query_gradient_and_keeps_dtype():
    bank = _bank("location", 1)
    query = _features(2, seed=3)[1].requires_grad_(True)
    chosen = bank.nearest(1, query)
    assert not chosen.requires_grad and chosen.dtype == query.dtype


def test_match_options_name_their_keys():
    with pytest.raises(PrototypeError, match="model.prototype_match"):
        PrototypeBank(3, match="pixel")
    with pytest.raises(PrototypeError, match="model.prototype_lookup=torch"):
        PrototypeBank(3, lookup="faiss", match="location")
    with pytest.raises(PrototypeError, match="model.prototype_neighbourhood"):
        PrototypeBank(3, match="location", neighbourhood=-1)


def test_network_wires_the_match_from_config_and_old_configs_match_whole_maps():
    from omegaconf import OmegaConf

    from prn_lightning.config import experiments_dir
    from prn_lightning.models.prn.network import PRNNetwork

    model_cfg = OmegaConf.load(experiments_dir() / "model" / "base.yaml").model
    model_cfg.backbone.weights = "none"
    model_cfg.msa_blocks = 1
    model_cfg.prototype_match, model_cfg.prototype_neighbourhood = "location", 1
    network = PRNNetwork.from_config(model_cfg, 64).eval()
    assert network.prototypes.match == "location" and network.prototypes.neighbourhood == 1
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    network.prototypes.fit(network.extract_prototype_features([images]), ratio=0.5, iterations=3, seed=0)
    with torch.no_grad():
        assert network(images[:2]).shape == (2, 1, 64, 64)
    old = OmegaConf.to_container(model_cfg)
    del old["prototype_match"], old["prototype_neighbourhood"]
    assert PRNNetwork.from_config(old, 64).prototypes.match == "image"

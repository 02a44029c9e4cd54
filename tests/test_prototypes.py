"""PrototypeBank: FAISS k-means and nearest-prototype search, checkpoint round trips without re-clustering."""
from __future__ import annotations

import copy

import faiss
import pytest
import torch

from prn_lightning.models.prn.prototypes import PrototypeBank, PrototypeError, number_of_prototypes

SHAPES = [(4, 8, 8), (6, 4, 4), (8, 2, 2)]


def _features(n: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, *shape, generator=generator) for shape in SHAPES]


def _fitted_bank(n: int = 40, ratio: float = 0.25, seed: int = 0) -> PrototypeBank:
    bank = PrototypeBank(len(SHAPES))
    bank.fit(_features(n, seed=1), ratio=ratio, iterations=10, seed=seed)
    return bank


def test_nearest_equals_brute_force_search():
    bank = _fitted_bank()
    queries = _features(7, seed=2)
    for stage, query in enumerate(queries):
        prototypes = bank[stage]
        assert prototypes.shape == (10, *SHAPES[stage])
        expected = torch.cdist(query.flatten(1), prototypes.flatten(1)).argmin(dim=1)
        torch.testing.assert_close(bank.nearest(stage, query), prototypes[expected], rtol=0, atol=0)
    # A slightly perturbed prototype finds itself.
    target = bank[1][3:4] + 1e-3 * torch.randn(1, *SHAPES[1])
    assert torch.equal(bank.nearest(1, target), bank[1][3:4])


def test_number_of_prototypes_formula():
    assert number_of_prototypes(0.1, 60) == 6
    assert number_of_prototypes(0.1, 3) == 1  # round(0.3) = 0 -> at least one prototype
    assert number_of_prototypes(0.05, 10) == 1  # round(0.5) = 0 (half to even) -> 1
    assert number_of_prototypes(0.1, 25) == 2  # round(2.5) = 2
    assert number_of_prototypes(1.0, 17) == 17
    bank = PrototypeBank(len(SHAPES))
    assert bank.counts() == [0, 0, 0] and not bank.fitted
    bank.fit(_features(3, seed=0), ratio=0.1, iterations=3, seed=0)
    assert bank.counts() == [1, 1, 1] and bank.fitted
    # One prototype is the mean of all maps (k-means with k = 1).
    torch.testing.assert_close(bank[0][0], _features(3, seed=0)[0].mean(0), rtol=1e-5, atol=1e-5)


def test_fit_is_deterministic_for_a_seed():
    first, second, other = _fitted_bank(seed=3), _fitted_bank(seed=3), _fitted_bank(seed=4)
    for stage in range(len(SHAPES)):
        assert torch.equal(first[stage], second[stage])
    assert any(not torch.equal(first[s], other[s]) for s in range(len(SHAPES)))


def test_state_dict_round_trip_needs_no_clustering(monkeypatch):
    bank = _fitted_bank()
    queries = _features(5, seed=9)
    expected = [bank.nearest(stage, q) for stage, q in enumerate(queries)]
    state = copy.deepcopy(bank.state_dict())

    def no_clustering(*args, **kwargs):
        raise AssertionError("loading prototypes must not run k-means")

    monkeypatch.setattr(faiss, "Kmeans", no_clustering)
    fresh = PrototypeBank(len(SHAPES))
    fresh.load_state_dict(state, strict=True)
    assert fresh.counts() == [10, 10, 10] and fresh.fitted
    for stage, query in enumerate(queries):
        assert torch.equal(fresh.nearest(stage, query), expected[stage])

    # A bank that already holds other prototypes (different K) is resized and its search index rebuilt.
    monkeypatch.undo()
    other = _fitted_bank(ratio=0.5, seed=5)
    other.nearest(0, queries[0])  # build its index with the old prototypes
    other.load_state_dict(state, strict=True)
    assert other.counts() == [10, 10, 10]
    for stage, query in enumerate(queries):
        assert torch.equal(other.nearest(stage, query), expected[stage])


def test_deepcopy_keeps_prototypes_and_rebuilds_the_index():
    bank = _fitted_bank()
    query = _features(4, seed=11)[2]
    answer = bank.nearest(2, query)
    clone = copy.deepcopy(bank)
    assert torch.equal(clone.nearest(2, query), answer)


def test_errors_before_fit_and_for_bad_input():
    bank = PrototypeBank(len(SHAPES))
    with pytest.raises(PrototypeError, match="not fitted"):
        bank.nearest(0, torch.randn(1, *SHAPES[0]))
    with pytest.raises(PrototypeError, match="model.prototype_ratio"):
        bank.fit(_features(10, seed=0), ratio=1.5, iterations=3, seed=0)
    with pytest.raises(PrototypeError, match="3 stages"):
        bank.fit(_features(10, seed=0)[:2], ratio=0.5, iterations=3, seed=0)
    fitted = _fitted_bank()
    with pytest.raises(PrototypeError, match="image size or backbone"):
        fitted.nearest(0, torch.randn(1, 4, 16, 16))


def _real_images(root, names: list[str], size: int) -> torch.Tensor:
    from prn_lightning.imaging.tensors import image_to_tensor, load_image

    return torch.stack([image_to_tensor(load_image(p, size)) for p in names])


def test_torch_lookup_picks_the_same_prototypes_as_faiss_on_real_features(tmp_path):
    """The default tensor-op lookup (what an exported graph runs) and FAISS' IndexFlatL2 agree on real features."""
    from conftest import shared_data_root
    from prn_lightning.data.sources.synthetic import ensure_synthetic
    from prn_lightning.imaging.io import list_images
    from prn_lightning.models.prn.backbone import FrozenBackbone
    from prn_lightning.models.prn.network import PRNNetwork

    root = shared_data_root() / "kolektor"
    if not root.is_dir():
        ensure_synthetic(tmp_path / "synthetic")
        root = tmp_path / "synthetic" / "texture"
    normals = list_images(root / "train" / "good")
    train = normals[:30]
    queries = normals[30:45] + sorted(p for d in (root / "test").iterdir() for p in list_images(d))[::9][:15]
    network = PRNNetwork(FrozenBackbone("tf_efficientnet_lite0", "bundled", (1, 2, 3, 4)), 128, msa_blocks=1)
    with torch.no_grad():  # the network's own input normalisation, then the backbone
        fit_features = network.features(_real_images(root, train, 128))[:3]
        query_features = network.features(_real_images(root, queries, 128))[:3]
    by_torch, by_faiss = PrototypeBank(3, "torch"), PrototypeBank(3, "faiss")
    by_torch.fit(list(fit_features), ratio=0.2, iterations=10, seed=0)
    by_faiss.load_state_dict(by_torch.state_dict())
    chosen = set()
    for stage, query in enumerate(query_features):
        ids = by_torch.nearest_ids(stage, query)
        assert torch.equal(ids, by_faiss.nearest_ids(stage, query))
        chosen |= {(stage, i) for i in ids.tolist()}
    assert len(chosen) > 3  # a real choice among the prototypes, not one id everywhere


def test_unknown_lookup_names_the_key():
    with pytest.raises(PrototypeError, match="model.prototype_lookup"):
        PrototypeBank(3, "annoy")


def _clustered(n_per: int, seed: int) -> torch.Tensor:
    """Four well-separated clusters of `n_per` maps each (stage-0 shape)."""
    generator = torch.Generator().manual_seed(seed)
    centres = 20 * torch.randn(4, *SHAPES[0], generator=generator)
    return torch.cat([c + torch.randn(n_per, *SHAPES[0], generator=generator) for c in centres])


def test_leave_one_out_matches_a_member_to_the_mean_of_the_other_members():
    """The prototype a training normal gets is the one it would get had it been left out of its cluster."""
    maps = _clustered(6, seed=0)
    bank = PrototypeBank(1)
    bank.fit([maps], ratio=4 / 24, iterations=10, seed=0)
    ids = bank.nearest_ids(0, maps)
    assert torch.equal(bank.sizes_0, torch.bincount(ids, minlength=4).float())
    assert bank.sizes_0.sum() == len(maps)
    left_out = bank.nearest(0, maps, torch.ones(len(maps), dtype=torch.bool))
    kept_own = 0
    for i in range(len(maps)):  # brute force: the mean of the other members, or any other prototype if nearer
        others = [j for j in range(len(maps)) if j != i and ids[j] == ids[i]]
        candidates = [maps[others].mean(0)] if others else []
        candidates += [bank[0][k] for k in range(bank.counts()[0]) if k != ids[i]]
        distances = torch.stack([(maps[i] - c).square().sum() for c in candidates])
        torch.testing.assert_close(left_out[i], candidates[int(distances.argmin())], rtol=1e-4, atol=1e-4)
        kept_own += bool(others) and int(distances.argmin()) == 0
    assert kept_own >= len(maps) // 2  # the own cluster's other members are the usual match
    assert (maps - left_out).square().sum() > (maps - bank.nearest(0, maps)).square().sum()
    # non-members (seen anomalies) keep the plain nearest prototype
    nobody = torch.zeros(len(maps), dtype=torch.bool)
    assert torch.equal(bank.nearest(0, maps, nobody), bank.nearest(0, maps))


def test_leave_one_out_re_picks_when_a_member_is_alone_or_another_prototype_is_nearer():
    centres = torch.stack([torch.full(SHAPES[0], v) for v in (0.0, 1.0, 5.0)])
    bank = PrototypeBank(1)
    bank.load_state_dict({"stage_0": centres, "sizes_0": torch.tensor([1.0, 2.0, 10.0])})
    member = torch.ones(1, dtype=torch.bool)
    # alone in its cluster: its prototype is itself, so it matches the nearest other one
    assert torch.equal(bank.nearest(0, centres[:1], member)[0], centres[1])
    # one of two members at 1.2 (the other at 0.8): the other member (0.8) is the match, 0.4 away per value
    query = torch.full((1, *SHAPES[0]), 1.2)
    torch.testing.assert_close(bank.nearest(0, query, member)[0], torch.full(SHAPES[0], 0.8))
    # one of two members at 2.6: the other member sits at -0.6 (3.2 away), so the prototype at 5 (2.4 away) wins
    query = torch.full((1, *SHAPES[0]), 2.6)
    assert torch.equal(bank.nearest(0, query, member)[0], centres[2])


def test_leave_one_out_needs_recorded_sizes():
    bank = _fitted_bank()
    old_checkpoint = {k: v for k, v in bank.state_dict().items() if not k.startswith("sizes_")}
    fresh = PrototypeBank(len(SHAPES))
    fresh.load_state_dict(old_checkpoint, strict=True)  # written before the sizes were recorded: still loads
    query = _features(2, seed=3)[0]
    assert torch.equal(fresh.nearest(0, query), bank.nearest(0, query))
    with pytest.raises(PrototypeError, match="model.prototype_leave_one_out=false"):
        fresh.nearest(0, query, torch.ones(2, dtype=torch.bool))
    located = PrototypeBank(len(SHAPES), match="location")
    located.load_state_dict(old_checkpoint)
    with pytest.raises(PrototypeError, match="model.prototype_leave_one_out=false"):
        located.nearest(0, query, torch.ones(2, dtype=torch.bool))


def test_every_image_its_own_prototype_is_the_k_means_optimum_and_leave_one_out_is_the_nearest_other():
    """ratio 1 (K = N) takes the images themselves (k-means' optimum, as FAISS reaches it from any start) without
    clustering; leave-one-out then matches each training normal to its nearest other one."""
    features = _features(9, seed=4)
    bank = PrototypeBank(len(SHAPES))
    bank.fit(features, ratio=1.0, iterations=5, seed=0)
    kmeans = faiss.Kmeans(features[0][0].numel(), 9, niter=5, seed=0, min_points_per_centroid=1)
    kmeans.train(features[0].flatten(1).numpy())
    by_faiss = torch.from_numpy(kmeans.centroids).reshape(9, *SHAPES[0])
    for stage in range(len(SHAPES)):
        assert torch.equal(bank[stage], features[stage])
        assert torch.equal(bank._buffers[f"sizes_{stage}"], torch.ones(9))
    assert sorted(map(tuple, by_faiss.flatten(1).tolist())) == sorted(map(tuple, features[0].flatten(1).tolist()))
    maps = features[0]
    distances = torch.cdist(maps.flatten(1), maps.flatten(1)).fill_diagonal_(float("inf"))
    left_out = bank.nearest(0, maps, torch.ones(9, dtype=torch.bool))
    assert torch.equal(left_out, maps[distances.argmin(dim=1)])


def test_prototype_norms_are_kept_only_while_the_prototypes_stay_the_same():
    """The squared norms of the flattened prototypes are computed once per prototype tensor: a refit, a load or an
    in-place change recomputes them, so a lookup always searches the current prototypes."""
    bank = _fitted_bank()
    query = _features(5, seed=6)[1]

    def brute_force(prototypes: torch.Tensor) -> torch.Tensor:
        return prototypes[torch.cdist(query.flatten(1), prototypes.flatten(1)).argmin(dim=1)]

    assert torch.equal(bank.nearest(1, query), brute_force(bank[1]))  # computes the norms
    bank.fit(_features(30, seed=8), ratio=0.2, iterations=5, seed=0)
    assert torch.equal(bank.nearest(1, query), brute_force(bank[1]))
    other = _fitted_bank(seed=5)
    other.stage_1.mul_(-0.5)
    bank.load_state_dict(other.state_dict())
    assert torch.equal(bank.nearest(1, query), brute_force(other[1]))
    bank.stage_1[0] = 3.0 * query[0]  # in place: the nearest prototype of query 0 changes
    assert torch.equal(bank.nearest(1, query), brute_force(bank[1]))
    assert copy.deepcopy(bank)._norms == {}

"""Multi-scale normal prototypes: K whole feature maps per stage, clustered with FAISS k-means.

The prototypes are buffers, so they travel in the state dict and a checkpoint restores them without re-clustering
(their K is only known after `fit`, so loading resizes the buffers to the checkpoint's shapes). Nearest-prototype
search is plain tensor ops on the prototypes' own device by default (`lookup="torch"`: squared L2 to each of the K
whole maps, argmin, gather), so a forward pass never leaves the device and the graph exports without FAISS; it
picks the same prototypes as FAISS' `IndexFlatL2` (tests/test_prototypes.py, on real features). `lookup="faiss"`
searches a FAISS `IndexFlatL2` built lazily from the buffers instead (on the current CUDA device when FAISS has GPU
support and a GPU is visible, on the CPU otherwise), for banks kept off the accelerator.

Matching (`match`): "image" is the paper's: one prototype per image, the whole map nearest in L2, so every position
gets its feature from the same prototype. "location" picks, at each spatial position separately, the nearest
prototype feature vector among the K prototypes at that position, or within `neighbourhood` positions of it (a
(2r+1)^2 window, clamped at the border); it follows parts that shift, turn or shine differently from every whole
prototype, at the cost of also fitting small defects that resemble some normal feature. Both are plain tensor ops.

Leave-one-out matching (training only, `nearest(..., members=...)`): a normal training image is one of the n images
averaged into its own prototype, so its residual is smaller than a held-out normal's, by (n-1)/n in L2 (magnetic_tile,
ratio 0.1: training normals' mean residual 1.21x smaller than validation normals'). For samples built on a training
normal, the own prototype (the nearest) is replaced by the mean of the other n-1 members, c - (F - c) / (n - 1),
estimated from the sample's own features F (exact for an unchanged normal), and the match re-picked against the
other prototypes; a member alone in its cluster matches the nearest other prototype. So the network trains on
residuals of the size it meets at test time. With "location" matching the own prototype's vectors are replaced the
same way in every window position, c(q) - (F(q) - c(q)) / (n - 1), and each position picks among them and the other
prototypes' vectors (tire, ratio 0.4: training normals 1.28-1.64x closer than validation normals without it). It
needs the cluster sizes, which `fit` records (buffers `sizes_j`).

Memory: stage j holds K x D float32 values, D = c_j x h_j x w_j, i.e. K x D x 4 bytes, once in the buffer and once
more in the FAISS index. Examples at 256 px: EfficientNet-Lite0 stage 1 is 24 x 64 x 64 = 98,304 floats (384 KiB)
per prototype; wide_resnet50_2 stage 1 is 256 x 64 x 64 = 1,048,576 floats (4 MiB) per prototype, so K = 20 costs
80 MiB for that stage (x2 with the index). Clustering needs N x D floats (all normal training images).
"""
from __future__ import annotations

import faiss
import numpy as np
import torch
from torch import Tensor, nn

from prn_lightning.errors import PRNUserError


class PrototypeError(PRNUserError):
    """Prototypes that cannot be fitted or used as asked; the message says which value and how to fix it (the CLI
    prints it as one line)."""


def faiss_gpu_available() -> bool:
    """FAISS was built with GPU support and a CUDA device is visible (faiss-cpu has no GPU entry points)."""
    return torch.cuda.is_available() and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


_GPU_RESOURCES: dict[int, object] = {}


def on_best_device(index: faiss.Index) -> faiss.Index:
    """`index` moved to the current CUDA device when FAISS can use it, else `index` itself (CPU).

    One device per process (the current one), so DDP ranks do not all pile onto GPU 0 as `index_cpu_to_all_gpus`
    would. The GPU resources are kept per device for the life of the process.
    """
    if not faiss_gpu_available():
        return index
    device = torch.cuda.current_device()
    if device not in _GPU_RESOURCES:
        _GPU_RESOURCES[device] = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(_GPU_RESOURCES[device], device, index)


def _exporting() -> bool:
    """Tracing or ONNX export: values derived from the prototypes are computed in the graph, not taken from a cache."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _identity(prototypes: Tensor) -> tuple:
    """What a cache built from `prototypes` is valid for: this storage, unmodified (in-place writes bump
    `_version`), with this shape, device and dtype."""
    return prototypes.data_ptr(), prototypes._version, prototypes.shape, prototypes.device, prototypes.dtype


def number_of_prototypes(ratio: float, num_images: int) -> int:
    """K = max(1, round(ratio * N)) (Python's round: halves go to the even neighbour)."""
    return max(1, round(ratio * num_images))


class PrototypeBank(nn.Module):
    """Per-stage prototype tensors (K, c, h, w) as buffers, with nearest-prototype lookup (torch or FAISS)."""

    LOOKUPS = ("torch", "faiss")
    MATCHES = ("image", "location")

    def __init__(self, num_stages: int, lookup: str = "torch", match: str = "image", neighbourhood: int = 0) -> None:
        super().__init__()
        if lookup not in self.LOOKUPS:
            raise PrototypeError(f"model.prototype_lookup={lookup!r} must be one of {', '.join(self.LOOKUPS)}")
        if match not in self.MATCHES:
            raise PrototypeError(f"model.prototype_match={match!r} must be one of {', '.join(self.MATCHES)}")
        if match == "location" and lookup != "torch":
            raise PrototypeError("model.prototype_match=location searches with tensor ops: set "
                                 "model.prototype_lookup=torch (FAISS serves whole-map matching only)")
        if neighbourhood < 0:
            raise PrototypeError(f"model.prototype_neighbourhood={neighbourhood} must be >= 0 (0 = same position)")
        self.num_stages = num_stages
        self.lookup = lookup
        self.match = match
        self.neighbourhood = neighbourhood
        for stage in range(num_stages):
            self.register_buffer(self._name(stage), torch.empty(0))
            self.register_buffer(self._size_name(stage), torch.empty(0))
        self._indexes: dict[int, faiss.Index] = {}
        self._windows: dict[int, tuple[tuple, Tensor, Tensor]] = {}
        self._norms: dict[int, tuple[tuple, Tensor]] = {}

    @staticmethod
    def _name(stage: int) -> str:
        return f"stage_{stage}"

    @staticmethod
    def _size_name(stage: int) -> str:
        return f"sizes_{stage}"

    def __getitem__(self, stage: int) -> Tensor:
        """The prototypes of `stage`, shape (K, c, h, w)."""
        return self._buffers[self._name(stage)]

    @property
    def fitted(self) -> bool:
        return all(self[stage].numel() > 0 for stage in range(self.num_stages))

    def counts(self) -> list[int]:
        """K per stage (0 before fit)."""
        return [self[stage].shape[0] if self[stage].dim() == 4 else 0 for stage in range(self.num_stages)]

    def fit(self, stage_features: list[Tensor], ratio: float, iterations: int = 25, seed: int = 0) -> None:
        """K-means over the flattened feature maps of all normal training images, one clustering per stage.

        `stage_features[j]` is (N, c_j, h_j, w_j), normally on the CPU (see PRNNetwork.extract_prototype_features).
        """
        if len(stage_features) != self.num_stages:
            raise PrototypeError(f"fit() needs features of {self.num_stages} stages, got {len(stage_features)}")
        if not 0.0 < ratio <= 1.0:
            raise PrototypeError(f"model.prototype_ratio={ratio} must be in (0, 1] (K = ratio x normal images)")
        if iterations < 1:
            raise PrototypeError(f"model.kmeans_iterations={iterations} must be at least 1")
        for stage, features in enumerate(stage_features):
            if features.dim() != 4 or features.shape[0] == 0:
                raise PrototypeError(f"stage {stage} features must be (N, c, h, w) with N >= 1 normal images, "
                                     f"got {tuple(features.shape)}")
            n = features.shape[0]
            k = number_of_prototypes(ratio, n)
            if k == n:  # every image its own cluster: k-means' optimum, without its K x N x D iterations
                centroids = features.detach().float().cpu().clone()
                sizes = torch.ones(n)
            else:
                data = np.ascontiguousarray(features.detach().reshape(n, -1).float().cpu().numpy())
                # min_points_per_centroid=1 only silences FAISS' warning for few images per centroid.
                kmeans = faiss.Kmeans(data.shape[1], k, niter=iterations, seed=seed, min_points_per_centroid=1)
                kmeans.index = on_best_device(kmeans.index)
                kmeans.train(data)
                centroids = torch.from_numpy(kmeans.centroids.copy()).reshape(k, *features.shape[1:])
                _, assigned = kmeans.index.search(data, 1)
                sizes = torch.bincount(torch.from_numpy(assigned[:, 0]), minlength=k).float()
            self._buffers[self._name(stage)] = centroids.to(self[stage].device)
            self._buffers[self._size_name(stage)] = sizes.to(self[stage].device)
        self._indexes.clear()
        self._windows.clear()
        self._norms.clear()

    def _index(self, stage: int) -> faiss.Index:
        """The flat L2 index over stage `stage`'s prototypes, built on first use after fit or load."""
        if stage not in self._indexes:
            prototypes = self[stage]
            flat = np.ascontiguousarray(prototypes.detach().reshape(prototypes.shape[0], -1).float().cpu().numpy())
            index = on_best_device(faiss.IndexFlatL2(flat.shape[1]))
            index.add(flat)
            self._indexes[stage] = index
        return self._indexes[stage]

    def nearest(self, stage: int, features: Tensor, members: Tensor | None = None) -> Tensor:
        """For each map in `features` (B, c, h, w), its nearest prototype (B, c, h, w) under `match`.

        "image": the prototype nearest in L2 over the whole map; "location": at each position the nearest prototype
        feature vector (see the module docstring). `members` (B,) bool marks samples built on a normal training
        image: they are matched leave-one-out (module docstring; both matches). Returned on `features'`
        device and dtype.
        """
        if not self.fitted:
            raise PrototypeError(
                "prototypes are not fitted: call prototypes.fit(network.extract_prototype_features(...), ratio, ...) "
                "or load a checkpoint that holds them before running the network"
            )
        prototypes = self[stage]
        if features.shape[1:] != prototypes.shape[1:]:
            raise PrototypeError(
                f"stage {stage} features {tuple(features.shape[1:])} do not match the prototypes "
                f"{tuple(prototypes.shape[1:])}: the image size or backbone differs from the one the prototypes were "
                "fitted with"
            )
        if self.match == "location":
            left_out = None if members is None else self._left_out_prototypes(stage, features, members)
            return self._nearest_per_location(stage, features, left_out).to(device=features.device,
                                                                             dtype=features.dtype)
        if members is not None:
            return self._nearest_leave_one_out(stage, features, members).to(device=features.device,
                                                                             dtype=features.dtype)
        ids = self.nearest_ids(stage, features)
        return prototypes.index_select(0, ids).to(device=features.device, dtype=features.dtype)

    def _candidates(self, maps: Tensor) -> Tensor:
        """Per position, the feature vectors of `maps` (N, c, h, w) it may match: (h*w, N*(2r+1)^2, c), shift-major
        (candidate s*N + n is map n shifted by window offset s), r = neighbourhood.

        Shifted copies of the replicate-padded maps (plain slicing, so the graph exports); at the border the clamped
        copies repeat in-bounds vectors, which changes no minimum.
        """
        n, c, h, w = maps.shape
        r = self.neighbourhood
        if r == 0:
            return maps.reshape(n, c, h * w).permute(2, 0, 1)
        padded = nn.functional.pad(maps, (r, r, r, r), mode="replicate")
        shifted = [padded[:, :, dy:dy + h, dx:dx + w] for dy in range(2 * r + 1) for dx in range(2 * r + 1)]
        return torch.cat(shifted, dim=0).reshape(-1, c, h * w).permute(2, 0, 1)

    def _windows_of(self, stage: int) -> tuple[Tensor, Tensor]:
        """Stage `stage`'s window candidates (p, m, c), contiguous, and their squared norms (p, m).

        The prototypes are fixed after fit, so both are built once and kept: building the shifted copies took longer
        than the search itself at every lookup. While exporting they are built in the graph instead.
        """
        prototypes = self[stage]
        if _exporting():
            candidates = self._candidates(prototypes)
            return candidates, candidates.square().sum(dim=2)
        key = _identity(prototypes)
        if stage not in self._windows or self._windows[stage][0] != key:
            candidates = self._candidates(prototypes).contiguous()
            self._windows[stage] = (key, candidates, candidates.square().sum(dim=2))
        return self._windows[stage][1:]

    def _nearest_per_location(self, stage: int, features: Tensor,
                              left_out: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """At each position of `features` (B, c, h, w), the nearest candidate vector in L2 (B, c, h, w).

        `left_out` (own, usable, maps), from `_left_out_prototypes`: for each sample with `usable` set, its own
        prototype `own` is replaced by its leave-one-out map in every window position; a member alone in its
        cluster (`usable` false but own >= 0) loses its own prototype altogether.
        """
        b, c, h, w = features.shape
        k = self[stage].shape[0]
        candidates, norms = self._windows_of(stage)  # (p, m, c), p = h*w positions, m candidates each; (p, m)
        query = features.detach().reshape(b, c, h * w).permute(2, 0, 1).to(candidates)  # (p, B, c)
        # ||q - v||^2 without ||q||^2, which is the same for every candidate v at a position.
        distances = norms.unsqueeze(1) - 2.0 * torch.bmm(query, candidates.transpose(1, 2))
        if left_out is not None:
            own, usable, maps = left_out
            replaced = self._candidates(maps).reshape(h * w, -1, b, c)  # (p, shifts, B, c)
            own_columns = torch.arange(replaced.shape[1], device=own.device).unsqueeze(0) * k + own.unsqueeze(1)
            own_distances = replaced.square().sum(dim=3) - 2.0 * torch.einsum("pbc,psbc->psb", query, replaced)
            own_distances = torch.where(usable, own_distances, torch.full_like(own_distances, float("inf")))
            rows = (own >= 0).nonzero().squeeze(1)
            distances[:, rows.unsqueeze(1), own_columns[rows]] = own_distances[:, :, rows].permute(0, 2, 1)
        ids = distances.argmin(dim=2)  # (p, B)
        chosen = torch.gather(candidates, 1, ids.unsqueeze(2).expand(-1, -1, c))  # (p, B, c)
        if left_out is not None:
            shift, prototype = ids // k, ids % k
            from_own = usable & (prototype == own)  # (p, B): the leave-one-out map's vector was picked
            own_vectors = torch.gather(replaced, 1, shift[:, None, :, None].expand(-1, 1, -1, c)).squeeze(1)
            chosen = torch.where(from_own.unsqueeze(2), own_vectors, chosen)
        return chosen.permute(1, 2, 0).reshape(b, c, h, w)

    def _left_out_prototypes(self, stage: int, features: Tensor, members: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-location leave-one-out: each member's own prototype (the whole-map nearest, as k-means assigned it)
        and that prototype without the member, c - (F - c) / (n - 1); own = -1 for a non-member."""
        prototypes, sizes = self._sizes_or_refuse(stage)
        own = self.nearest_ids(stage, features)  # location matching always looks up with torch
        n = sizes.index_select(0, own)
        is_member = members.to(device=prototypes.device, dtype=torch.bool)
        centre = prototypes.index_select(0, own)
        maps = centre - (features.detach().to(centre) - centre) / (n - 1).clamp_min(1).view(-1, 1, 1, 1)
        own = torch.where(is_member, own, torch.full_like(own, -1))
        return own, is_member & (n > 1), maps

    def _nearest_leave_one_out(self, stage: int, features: Tensor, members: Tensor) -> Tensor:
        """Whole-map matching where each member's own (nearest) prototype is the mean of its n-1 fellow members."""
        _, sizes = self._sizes_or_refuse(stage)
        flat, norms = self._flat_of(stage)
        query = features.detach().reshape(features.shape[0], -1).to(flat)
        distances = (query.square().sum(1, keepdim=True) + norms.unsqueeze(0) - 2.0 * query @ flat.T).clamp_min(0)
        own = distances.argmin(dim=1)
        n = sizes.index_select(0, own)
        is_member = members.to(device=flat.device, dtype=torch.bool)
        # ||F - c_loo||^2 = (n / (n - 1))^2 ||F - c||^2; infinite for a member alone in its cluster.
        rows = torch.arange(len(own), device=flat.device)
        own_distance = distances[rows, own]
        left_out = torch.where(n > 1, own_distance * (n / (n - 1).clamp_min(1)).square(),
                               torch.full_like(own_distance, float("inf")))
        distances[rows, own] = torch.where(is_member, left_out, own_distance)
        chosen = distances.argmin(dim=1)
        matched = flat.index_select(0, chosen)
        kept_own = is_member & (chosen == own)
        shift = (query - matched) / (n - 1).clamp_min(1).unsqueeze(1)  # c_loo = c - (F - c) / (n - 1)
        matched = torch.where(kept_own.unsqueeze(1), matched - shift, matched)
        return matched.reshape(features.shape)

    def _sizes_or_refuse(self, stage: int) -> tuple[Tensor, Tensor]:
        """Stage `stage`'s prototypes and cluster sizes, which leave-one-out matching needs."""
        prototypes, sizes = self[stage], self._buffers[self._size_name(stage)]
        if sizes.numel() != prototypes.shape[0]:
            raise PrototypeError("leave-one-out matching needs the cluster sizes that fit() records; these prototypes "
                                 "come from a checkpoint written before them: refit (train anew) or set "
                                 "model.prototype_leave_one_out=false")
        return prototypes, sizes

    def nearest_ids(self, stage: int, features: Tensor) -> Tensor:
        """Index (B,) of the prototype nearest to each map of `features` (B, c, h, w), on the prototypes' device."""
        prototypes = self[stage]
        if self.lookup == "faiss":
            query = np.ascontiguousarray(features.detach().reshape(features.shape[0], -1).float().cpu().numpy())
            _, ids = self._index(stage).search(query, 1)
            return torch.from_numpy(ids[:, 0]).to(prototypes.device)
        flat, norms = self._flat_of(stage)
        query = features.detach().reshape(features.shape[0], -1).to(flat)
        # ||q - p||^2 = ||q||^2 - 2 q.p + ||p||^2; ||q||^2 is the same for every p, so it does not change the argmin.
        distances = norms.unsqueeze(0) - 2.0 * query @ flat.T
        return distances.argmin(dim=1)

    def _flat_of(self, stage: int) -> tuple[Tensor, Tensor]:
        """Stage `stage`'s prototypes flattened (K, D) and their squared norms (K,).

        The norms are kept between lookups (as the location windows are): squaring K x D values allocates a K x D
        temporary and took longer than the distance product itself (bench/prototype_lookup.py: 203 -> 39 ms per
        batch of 8 at K = 540). While exporting they are computed in the graph instead.
        """
        prototypes = self[stage]
        flat = prototypes.reshape(prototypes.shape[0], -1)
        if _exporting():
            return flat, flat.square().sum(dim=1)
        key = _identity(prototypes)
        if stage not in self._norms or self._norms[stage][0] != key:
            self._norms[stage] = (key, flat.square().sum(dim=1))
        return flat, self._norms[stage][1]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """Resize the buffers to the checkpoint's K (and maps) so loading never needs re-clustering."""
        for stage in range(self.num_stages):
            # checkpoints written before the cluster sizes were recorded load without them (no leave-one-out)
            state_dict.setdefault(prefix + self._size_name(stage), torch.empty(0))
            for name in (self._name(stage), self._size_name(stage)):
                key, current = prefix + name, self._buffers[name]
                if key in state_dict and state_dict[key].shape != current.shape:
                    self._buffers[name] = torch.empty(state_dict[key].shape, dtype=current.dtype,
                                                      device=current.device)
        self._indexes.clear()
        self._windows.clear()
        self._norms.clear()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _apply(self, fn, recurse: bool = True):
        """Moving or casting the buffers (`.to`, `.cuda`, `.half`) invalidates the indexes built from them."""
        self._indexes.clear()
        self._windows.clear()
        self._norms.clear()
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        """Pickling (DDP spawn, deepcopy) drops the FAISS indexes, the location windows and the prototype norms; they
        are rebuilt from the buffers on demand."""
        state = self.__dict__.copy()
        state["_indexes"], state["_windows"], state["_norms"] = {}, {}, {}
        return state

    def extra_repr(self) -> str:
        return (f"num_stages={self.num_stages}, K={self.counts()}, match={self.match}, "
                f"neighbourhood={self.neighbourhood}")

"""The speed work on the network computes what it computed before: the same logits of the first forward pass and
the same losses for the first training steps at the same seed as the code before it (reference values in
tests/fixtures/training_steps_reference.json, written by this file's `--write` mode with the pre-change network).

Numerical differences, all float rounding of the same arithmetic, well under the 1e-5 asserted here:
- the decoder runs in channels-last memory order, whose oneDNN convolutions sum in another order (~1e-7 relative);
- the logit head sums its 3x3 taps after the upsampling instead of before it (conv3x3(up(x)) rewritten as the sum of
  the upsampled per-tap 1x1 convs, exact in real arithmetic: ~1e-7 on the logits);
- a one-token attention head returns V itself, which scaled dot-product attention also returns exactly;
- attention blocks whose map divides into the smallest patches run in quadtree pixel order: the Q/K/V projection and
  the reduction conv become matrix products and the token dot products are summed in another order (~3e-7);
- attention itself is two batched matrix products and a softmax instead of PyTorch's fused kernel (~3e-7).
Everything else (backbone, prototypes, fusion, BatchNorm, loss) runs the same operations. Measured: losses of the
three steps within 2.4e-7 of the reference, first-pass logits within 1.5e-6.
Maps are compared before any optimiser step: Adam's first updates are about lr x sign(gradient), so a parameter
whose gradient is ~0 can move by +-lr on a rounding difference, and maps after a few steps differ by ~1e-4 for that
reason alone; the losses of those steps still agree to 1e-5.

Regenerate (only when the computation is meant to change) from a checkout of the reference code (the fixture came
from commit 45d7e0e):
    PYTHONPATH=<checkout>/src python tests/test_speed_equivalence.py --write tests/fixtures/<fixture>.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from prn_lightning.models.prn import PRNLoss, PRNNetwork
from prn_lightning.models.prn.backbone import FrozenBackbone

FIXTURE = Path(__file__).parent / "fixtures" / "training_steps_reference.json"
SIZE, BATCH, STEPS, NORMALS = 128, 4, 3, 12


def textures(n: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth random [0, 1] images (low-frequency noise plus grain)."""
    coarse = torch.rand(n, 3, SIZE // 16, SIZE // 16, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False)
    return (smooth + 0.1 * torch.rand(n, 3, SIZE, SIZE, generator=generator)).clamp_(0, 1)


def training_run() -> dict:
    """Logits of the first forward pass (training mode) at 64 pixels of each image, and the losses of STEPS Adam
    steps from seed 0."""
    torch.manual_seed(0)
    backbone = FrozenBackbone("tf_efficientnet_lite0", "bundled", (1, 2, 3, 4))
    network = PRNNetwork(backbone, SIZE, use_prototypes=True, use_fusion=True, use_msa=True, msa_blocks=3,
                         msa_sizes=4, decoder_channels=(256, 128, 64, 32))
    generator = torch.Generator().manual_seed(0)
    network.prototypes.fit(network.extract_prototype_features(textures(NORMALS, generator).split(BATCH)),
                           ratio=0.25, iterations=10, seed=0)
    images = textures(BATCH, generator)
    masks = torch.zeros(BATCH, 1, SIZE, SIZE)
    masks[1:, :, 40:70, 50:90] = 1.0
    images[1:, :, 40:70, 50:90] = 1 - images[1:, :, 40:70, 50:90]  # anomalies where the masks are
    loss_fn = PRNLoss(smooth_l1_weight=1.0, focal_weight=5.0, focal_alpha=0.5, focal_gamma=4.0)
    optimiser = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=1e-4)
    network.train()
    pixels = torch.arange(0, SIZE * SIZE, SIZE * SIZE // 64)
    losses, logits = [], []
    for _ in range(STEPS):
        optimiser.zero_grad(set_to_none=True)
        output = network(images)
        loss, _ = loss_fn(output, masks)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        logits = logits or output.detach().flatten(1)[:, pixels].flatten().tolist()
    return {"losses": losses, "logits_at": pixels.tolist(), "logits": logits}


@pytest.mark.slow
def test_training_steps_and_map_match_the_pre_change_network() -> None:
    reference = json.loads(FIXTURE.read_text())
    now = training_run()
    assert now["logits_at"] == reference["logits_at"]
    assert now["losses"] == pytest.approx(reference["losses"], abs=1e-5, rel=0)
    assert now["logits"] == pytest.approx(reference["logits"], abs=1e-5, rel=0)
    assert reference["losses"][-1] < reference["losses"][0]  # the steps do train: a non-trivial reference


if __name__ == "__main__" and sys.argv[1:2] == ["--write"]:
    result = training_run()
    Path(sys.argv[2]).write_text(json.dumps(result, indent=1) + "\n")
    print(result["losses"])


@pytest.mark.parametrize("scale_rule", ["token_dim", "sqrt_token_dim"])
def test_quadtree_attention_equals_patch_tokens_forward_and_backward(scale_rule: str) -> None:
    """The quadtree path of an MSA block and the patch-token path agree to float rounding, gradients included."""
    from prn_lightning.models.prn.attention import MultiSizeAttentionBlock, from_quadtree, to_quadtree

    torch.manual_seed(0)
    x = torch.randn(2, 5, 16, 24)
    assert torch.equal(from_quadtree(to_quadtree(x, 3), 3, 16, 24), x)
    block = MultiSizeAttentionBlock(channels=6, num_sizes=4, scale_rule=scale_rule).train()
    maps = torch.randn(3, 6, 16, 32, requires_grad=True)
    quadtree, patches = block.mixed_heads(maps), block.mixed_heads_by_patches(maps)
    torch.testing.assert_close(quadtree, patches, rtol=0, atol=1e-5)
    weights = torch.randn_like(patches)
    grads = [torch.autograd.grad((out * weights).sum(), [maps, block.qkv.weight]) for out in (quadtree, patches)]
    # rounding relative to the gradient's scale (sums over many pixels; the sharper 1 / sqrt(D) softmax doubles it)
    for ours, reference in zip(*grads):
        torch.testing.assert_close(ours, reference, rtol=0, atol=3e-6 * float(reference.abs().max()))


def test_training_and_inference_attention_agree() -> None:
    """Matrix products while training, the fused operator otherwise: the same values to float rounding."""
    from prn_lightning.models.prn.attention import token_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 16, 3000) for _ in range(3))
    for scale in (1 / 3000, 3000**-0.5):  # model.msa_logit_scale token_dim and sqrt_token_dim
        training = token_attention(q, k, v, scale)
        with torch.no_grad():
            inference = token_attention(q, k, v, scale)
        torch.testing.assert_close(training, inference, rtol=0, atol=1e-5)

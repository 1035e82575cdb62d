from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import (
    BCELoss,
    DeepSupervisionLoss,
    DiceLoss,
    FocalLoss,
    LossConfig,
    SegmentationLoss,
)

LN3 = math.log(3)


@pytest.fixture
def tiny() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits with probabilities 0.5, 0.75 / 0.25, 0.75 against target 1, 1 / 0, 0."""
    logits = torch.tensor([[[[0.0, LN3], [-LN3, LN3]]]], requires_grad=True)
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    return logits, target


def finite_grad(loss: torch.Tensor, logits: torch.Tensor) -> bool:
    (grad,) = torch.autograd.grad(loss, logits)
    return bool(torch.isfinite(grad).all()) and bool(grad.abs().sum() > 0)


def test_bce_matches_hand_value_and_torch(tiny):
    logits, target = tiny
    # -log p per pixel: p_t = 0.5, 0.75, 0.75, 0.25.
    expected = (math.log(2) + 2 * math.log(4 / 3) + math.log(4)) / 4
    loss = BCELoss()(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(logits, target))
    assert finite_grad(loss, logits)


def test_bce_pos_weight_matches_torch_and_accepts_nhw_target(tiny):
    logits, target = tiny
    loss = BCELoss(pos_weight=3.0)(logits, target[:, 0])
    reference = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(3.0))
    assert torch.allclose(loss, reference)
    # Only the two foreground pixels are scaled.
    expected = (3 * math.log(2) + 3 * math.log(4 / 3) + math.log(4 / 3) + math.log(4)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_dice_matches_hand_value(tiny):
    logits, target = tiny
    # Intersection 1.25, |P| 2.25, |T| 2: (2.5 + 1) / (4.25 + 1) = 2/3.
    loss = DiceLoss(smooth=1.0)(logits, target)
    assert loss.item() == pytest.approx(1 / 3, rel=1e-6)
    assert finite_grad(loss, logits)


def test_dice_of_perfect_prediction_is_near_zero():
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:12, 4:12] = 1
    logits = (target * 2 - 1) * 30
    assert DiceLoss()(logits, target).item() < 1e-6
    assert DiceLoss(per_image=False)(logits, target).item() < 1e-6


def test_dice_empty_target_is_finite_and_per_image_differs_from_batch():
    target = torch.zeros(2, 1, 8, 8)
    target[0, :, :4] = 1
    logits = torch.full((2, 1, 8, 8), -30.0, requires_grad=True)
    with torch.no_grad():
        logits[0, :, :4] = 30.0
    # Empty target, empty prediction: loss |P| / (|P| + 1), about 0, not NaN.
    empty = DiceLoss()(logits[1:], target[1:])
    assert 0 <= empty.item() < 1e-6
    per_image = DiceLoss()(logits, target)
    assert torch.isfinite(per_image) and per_image.item() < 1e-6
    assert finite_grad(per_image, logits)
    # False foreground on an empty image: 64 px at p=0.5 gives 32 / 33.
    half = torch.zeros(1, 1, 8, 8)
    assert DiceLoss()(half, torch.zeros(1, 1, 8, 8)).item() == pytest.approx(32 / 33, rel=1e-6)
    # Per image that empty image counts half; pooled, its 32 px of false foreground are
    # diluted by the other image's 32 true ones: (2*32 + 1) / (64 + 32 + 1) = 65/97.
    logits2 = torch.cat([logits.detach()[:1], half])
    assert DiceLoss()(logits2, target).item() == pytest.approx(32 / 33 / 2, rel=1e-5)
    assert DiceLoss(per_image=False)(logits2, target).item() == pytest.approx(32 / 97, rel=1e-5)
    # smooth = 0 does not divide by zero either.
    assert torch.isfinite(DiceLoss(smooth=0.0)(logits[1:], target[1:]))


def test_focal_matches_hand_value(tiny):
    logits, target = tiny
    bce = torch.tensor([math.log(2), math.log(4 / 3), math.log(4 / 3), math.log(4)])
    modulator = torch.tensor([0.5, 0.25, 0.25, 0.75]) ** 2
    alpha_t = torch.tensor([0.25, 0.25, 0.75, 0.75])
    loss = FocalLoss(gamma=2.0)(logits, target)
    assert loss.item() == pytest.approx((modulator * bce).mean().item(), rel=1e-6)
    loss = FocalLoss(alpha=0.25, gamma=2.0)(logits, target)
    assert loss.item() == pytest.approx((alpha_t * modulator * bce).mean().item(), rel=1e-6)
    assert finite_grad(loss, logits)


def test_focal_with_gamma_zero_is_bce(tiny):
    logits, target = tiny
    focal = FocalLoss(alpha=None, gamma=0.0)(logits, target)
    assert torch.allclose(focal, BCELoss()(logits, target))


def test_focal_gradient_finite_for_extreme_logits_and_small_gamma():
    logits = torch.tensor([[[[200.0, -200.0, 0.0, 50.0]]]], requires_grad=True)
    target = torch.tensor([[[[1.0, 0.0, 1.0, 0.0]]]])
    loss = FocalLoss(alpha=0.5, gamma=0.5)(logits, target)
    assert torch.isfinite(loss)
    assert finite_grad(loss, logits)


def test_deep_supervision_resizes_target_to_lower_resolution():
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]]).repeat_interleave(2, 2)
    target = target.repeat_interleave(2, 3)  # 4x4, constant 2x2 blocks
    coarse = torch.tensor([[[[LN3, 0.0], [-LN3, 0.0]]]], requires_grad=True)
    full = torch.zeros(1, 1, 4, 4, requires_grad=True)
    bce = BCELoss()
    loss = DeepSupervisionLoss(bce, weights=[0.4, 0.6], resize="nearest")([coarse, full], target)
    block = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    expected = 0.4 * bce(coarse, block) + 0.6 * math.log(2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert finite_grad(loss, coarse)
    # Default weights are the mean over levels.
    mean = DeepSupervisionLoss(bce)([coarse, full], target[:, 0])
    assert mean.item() == pytest.approx((bce(coarse, block).item() + math.log(2)) / 2, rel=1e-6)


def test_deep_supervision_area_gives_coverage_fractions():
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    one = torch.zeros(1, 1, 1, 1)
    area = DeepSupervisionLoss(BCELoss(), resize="area")([one], target)
    nearest = DeepSupervisionLoss(BCELoss(), resize="nearest")([one], target)
    # At logit 0 the BCE is log 2 for any target; a logit of ln3 tells the targets apart.
    assert area.item() == pytest.approx(math.log(2)) == nearest.item()
    logit = torch.full((1, 1, 1, 1), LN3)
    area = DeepSupervisionLoss(BCELoss(), resize="area")([logit], target)
    expected = -(0.25 * math.log(0.75) + 0.75 * math.log(0.25))
    assert area.item() == pytest.approx(expected, rel=1e-6)
    nearest = DeepSupervisionLoss(BCELoss(), resize="nearest")([logit], target)
    assert nearest.item() == pytest.approx(-math.log(0.75), rel=1e-6)


def test_deep_supervision_rejects_mismatched_or_bad_weights():
    target = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="2 aux weights for 3"):
        DeepSupervisionLoss(BCELoss(), [1, 1])([torch.zeros(1, 1, 4, 4)] * 3, target)
    with pytest.raises(ValueError, match="no auxiliary"):
        DeepSupervisionLoss(BCELoss())([], target)
    with pytest.raises(ValueError, match="aux weight 1"):
        DeepSupervisionLoss(BCELoss(), [1, -1])
    with pytest.raises(ValueError, match="resize"):
        DeepSupervisionLoss(BCELoss(), resize="bilinear")


def test_combined_sums_weighted_terms_and_logs_components(tiny):
    logits, target = tiny
    aux = [torch.tensor([[[[LN3]]]]), logits]
    loss_fn = SegmentationLoss(bce=1.0, dice=0.5, focal=2.0, aux=0.4, focal_gamma=2.0)
    total, parts = loss_fn(logits, target, aux)
    bce, dice, focal = BCELoss(), DiceLoss(), FocalLoss(gamma=2.0)

    def main(x, t):
        return bce(x, t) + 0.5 * dice(x, t) + 2.0 * focal(x, t)

    coarse_target = torch.tensor([[[[0.5]]]])
    expected_aux = (main(aux[0], coarse_target) + main(logits, target)) / 2
    expected = main(logits, target) + 0.4 * expected_aux
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(parts) == {"bce", "dice", "focal", "aux", "total"}
    assert parts["dice"] == pytest.approx(1 / 3, rel=1e-6)
    assert parts["aux"] == pytest.approx(expected_aux.item(), rel=1e-6)
    assert parts["total"] == pytest.approx(total.item())
    assert all(isinstance(value, float) for value in parts.values())
    assert finite_grad(total, logits)


def test_combined_skips_zero_weight_terms_and_missing_aux(tiny, monkeypatch):
    logits, target = tiny
    loss_fn = SegmentationLoss(bce=0.0, dice=1.0, focal=0.0, aux=0.0)
    assert set(loss_fn.main.terms) == {"dice"}

    def boom(*args, **kwargs):
        raise AssertionError("zero-weight term was computed")

    monkeypatch.setattr(FocalLoss, "forward", boom)
    monkeypatch.setattr(BCELoss, "forward", boom)
    total, parts = loss_fn(logits, target, aux=[logits])
    assert set(parts) == {"dice", "total"}
    assert total.item() == pytest.approx(1 / 3, rel=1e-6)
    _, parts = SegmentationLoss(bce=0.0)(logits, target)  # aux > 0 but no aux maps given
    assert set(parts) == {"dice", "total"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bce": -1.0}, "bce must be"),
        ({"aux": float("nan")}, "aux must be"),
        ({"bce": 0, "dice": 0, "focal": 0}, "all zero"),
        ({"aux_weights": [0, 0]}, "aux_weights are all zero"),
        ({"aux_weights": [1, -0.5]}, r"aux_weights\[1\]"),
        ({"focal_alpha": 1.5}, "focal_alpha"),
        ({"pos_weight": 0}, "pos_weight"),
        ({"aux_resize": "bicubic"}, "aux_resize"),
        ({"dice_per_image": "no"}, "dice_per_image"),
        ({"colour": "red"}, "unknown loss option"),
    ],
)
def test_bad_config_raises_naming_the_problem(options, message):
    with pytest.raises(ValueError, match=message):
        SegmentationLoss.from_dict(options)


def test_config_round_trips_through_a_dict():
    values = {
        "bce": 0.5,
        "focal": 1.0,
        "aux_weights": [0.1, 0.2, 0.3, 0.4],
        "aux_resize": "nearest",
    }
    loss_fn = SegmentationLoss.from_dict(values)
    saved = loss_fn.as_dict()
    assert saved == {**LossConfig().as_dict(), **values}
    assert set(saved) == {
        "bce", "dice", "focal", "aux", "pos_weight", "dice_smooth", "dice_per_image",
        "focal_alpha", "focal_gamma", "aux_weights", "aux_resize",
    }  # fmt: skip
    assert SegmentationLoss.from_dict(saved).config == loss_fn.config
    assert SegmentationLoss(loss_fn.config, dice=0.0).config.dice == 0.0
    with pytest.raises(TypeError, match="unknown loss option"):
        SegmentationLoss(colour="red")


def test_losses_run_in_float32_under_cpu_autocast():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 1, 3, padding=1)
    x = torch.randn(2, 3, 32, 32)
    target = (torch.rand(2, 1, 32, 32) > 0.7).float()
    loss_fn = SegmentationLoss(focal=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(x)
        aux = [F.avg_pool2d(logits, 4), logits]
        assert logits.dtype == torch.bfloat16
        total, parts = loss_fn(logits, target, aux)
    assert total.dtype == torch.float32
    assert all(math.isfinite(value) for value in parts.values())
    reference, _ = loss_fn(logits.float(), target, [a.float() for a in aux])
    assert total.item() == pytest.approx(reference.item(), rel=1e-6)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())
    for term in (BCELoss(), DiceLoss(), FocalLoss()):
        assert term(logits, target).dtype == torch.float32

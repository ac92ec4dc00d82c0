"""ID and triplet losses and their combination over named heads."""

import math

import pytest
import torch
import torch.nn.functional as F

from configs.defaults import get_cfg_defaults
from loss import ReIDLoss, TripletLoss, build_loss


def brute_force_triplet(feats, labels, margin=None, normalize=False):
    """Loop over anchors: farthest positive (the anchor itself included), closest negative, in float64."""
    x = feats.double()
    if normalize:
        x = x / x.norm(dim=1, keepdim=True)
    terms = []
    for i in range(len(x)):
        pos = [torch.linalg.vector_norm(x[i] - x[j]) for j in range(len(x)) if labels[j] == labels[i]]
        neg = [torch.linalg.vector_norm(x[i] - x[j]) for j in range(len(x)) if labels[j] != labels[i]]
        if not neg:
            continue
        gap = max(pos) - min(neg)
        terms.append(torch.log1p(torch.exp(gap)) if margin is None else torch.clamp(gap + margin, min=0))
    return torch.stack(terms).mean() if terms else torch.zeros((), dtype=torch.float64)


def pk_batch(seed, p=4, k=4, dim=16):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(p).repeat_interleave(k)
    feats = torch.randn(p * k, dim, generator=generator) + 0.8 * torch.randn(p, dim, generator=generator)[labels]
    return feats, labels


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("margin", [None, 0.3, 5.0])
@pytest.mark.parametrize("normalize", [False, True])
def test_triplet_equals_brute_force(seed, margin, normalize):
    feats, labels = pk_batch(seed)
    feats.requires_grad_(True)
    loss = TripletLoss(margin=margin, normalize_feature=normalize)(feats, labels)
    expected = brute_force_triplet(feats, labels, margin, normalize)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    (grad,) = torch.autograd.grad(loss, feats)
    (expected_grad,) = torch.autograd.grad(expected, feats)
    torch.testing.assert_close(grad, expected_grad.float(), rtol=1e-4, atol=1e-5)


def test_triplet_unequal_identity_counts():
    feats, _ = pk_batch(5, p=3, k=5)
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 3])  # 7, 2, 5 and a singleton
    loss = TripletLoss()(feats, labels)
    assert loss.item() == pytest.approx(brute_force_triplet(feats, labels).item(), rel=1e-5)


def test_triplet_hand_computed():
    x = torch.tensor([[0.0], [1.0], [3.0], [4.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # anchors: (d_ap, d_an) = (1, 3), (1, 2), (1, 2), (1, 3)
    soft = (2 * math.log1p(math.exp(-2)) + 2 * math.log1p(math.exp(-1))) / 4
    assert TripletLoss()(x, labels).item() == pytest.approx(soft, rel=1e-6)
    assert TripletLoss(margin=2.5)(x, labels).item() == pytest.approx((0.5 + 1.5 + 1.5 + 0.5) / 4, rel=1e-6)
    assert TripletLoss(margin=0.3)(x, labels).item() == 0.0
    # soft margin is F.soft_margin_loss(d_an - d_ap, 1)
    d_ap, d_an = torch.tensor([1.0, 1, 1, 1]), torch.tensor([3.0, 2, 2, 3])
    assert TripletLoss()(x, labels).item() == pytest.approx(
        F.soft_margin_loss(d_an - d_ap, torch.ones(4)).item(), rel=1e-6)


def test_triplet_single_identity_batch_is_zero_with_gradient():
    feats = torch.randn(6, 8, requires_grad=True)
    loss = TripletLoss()(feats, torch.zeros(6, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(feats.grad).all()


def test_triplet_under_autocast_is_float32():
    feats, labels = pk_batch(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = TripletLoss()(feats.bfloat16(), labels)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(brute_force_triplet(feats.bfloat16().float(), labels).item(), rel=1e-5)


@pytest.mark.parametrize("eps", [0.1, 0.25])
def test_label_smoothing_equals_original_formula(eps):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 171, generator=generator)
    labels = torch.randint(0, 171, (12,), generator=generator)
    cfg = get_cfg_defaults()
    cfg.MODEL.LABEL_SMOOTH = eps
    id_loss = build_loss(cfg, 171).id_loss(logits, labels)
    onehot = F.one_hot(labels, 171).float()
    expected = (-(onehot * (1 - eps) + eps / 171) * F.log_softmax(logits, dim=1)).mean(0).sum()
    assert id_loss.item() == pytest.approx(expected.item(), rel=1e-6)
    cfg.MODEL.IF_LABELSMOOTH = False
    assert build_loss(cfg, 171).id_loss(logits, labels).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-6)


def fake_outputs(seed, heads=("tpm", "concat"), num_classes=10, with_crm=True):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat_interleave(2)
    outputs = {"heads": {}, "losses": {}}
    for name in heads:
        logits = torch.randn(8, num_classes, generator=generator, requires_grad=True)
        feature = torch.randn(8, 12, generator=generator, requires_grad=True)
        outputs["heads"][name] = (logits, feature)
    if with_crm:
        outputs["losses"]["crm"] = torch.rand((), generator=generator, requires_grad=True)
    return outputs, labels


@pytest.mark.parametrize(("id_w", "tri_w", "crm_w", "no_margin"), [(1.0, 1.0, 1.0, True), (0.5, 2.0, 3.0, False)])
def test_build_loss_terms_and_weights(id_w, tri_w, crm_w, no_margin):
    cfg = get_cfg_defaults()
    cfg.MODEL.ID_LOSS_WEIGHT, cfg.MODEL.TRIPLET_LOSS_WEIGHT, cfg.MODEL.CRM_LOSS_WEIGHT = id_w, tri_w, crm_w
    cfg.MODEL.NO_MARGIN = no_margin
    cfg.SOLVER.MARGIN = 0.7
    outputs, labels = fake_outputs(0, heads=("tpm", "RGB", "NI", "TI"))
    total, terms = build_loss(cfg, 10)(outputs, labels)
    assert list(terms) == ["tpm.id", "tpm.triplet", "RGB.id", "RGB.triplet", "NI.id", "NI.triplet", "TI.id",
                           "TI.triplet", "crm"]
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in terms.values())

    triplet = TripletLoss(margin=None if no_margin else 0.7)
    expected = crm_w * outputs["losses"]["crm"]
    for name, (logits, feature) in outputs["heads"].items():
        id_term = F.cross_entropy(logits, labels, label_smoothing=0.1)
        tri_term = triplet(feature, labels)
        assert terms[f"{name}.id"].item() == pytest.approx(id_term.item(), rel=1e-6)
        assert terms[f"{name}.triplet"].item() == pytest.approx(tri_term.item(), rel=1e-6)
        expected = expected + id_w * id_term + tri_w * tri_term
    assert terms["crm"].item() == pytest.approx(outputs["losses"]["crm"].item())
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    total.backward()
    for logits, feature in outputs["heads"].values():
        assert logits.grad is not None and feature.grad is not None
    assert outputs["losses"]["crm"].grad.item() == pytest.approx(crm_w)


def test_build_loss_without_aux_losses():
    outputs, labels = fake_outputs(1, heads=("concat",), with_crm=False)
    total, terms = build_loss(get_cfg_defaults(), 10)(outputs, labels)
    assert set(terms) == {"concat.id", "concat.triplet"}
    assert total.item() == pytest.approx(terms["concat.id"].item() + terms["concat.triplet"].item(), rel=1e-6)


def test_build_loss_errors():
    loss = build_loss(get_cfg_defaults(), 10)
    outputs, labels = fake_outputs(2)
    outputs["losses"]["recon"] = torch.tensor(1.0)
    with pytest.raises(KeyError, match="'recon'"):
        loss(outputs, labels)
    outputs, labels = fake_outputs(2, num_classes=7)
    with pytest.raises(ValueError, match="7 logits"):
        loss(outputs, labels)
    with pytest.raises(ValueError, match="no heads"):
        loss({"heads": {}, "losses": {}}, labels)


def test_reid_loss_built_without_config():
    loss = ReIDLoss(torch.nn.CrossEntropyLoss(), TripletLoss(margin=0.3), 1.0, 1.0, {"crm": 1.0})
    outputs, labels = fake_outputs(3)
    total, terms = loss(outputs, labels)
    assert torch.isfinite(total) and len(terms) == 5

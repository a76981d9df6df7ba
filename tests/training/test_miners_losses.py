import math

import pytest
import torch

from training.losses import (
    ProxyAnchorLoss,
    multi_similarity_loss,
    similarity_distillation_loss,
    triplet_margin_loss,
)
from training.miners import batch_hard, pairwise_distances, random_triplets, semi_hard


def on_circle(*degrees: float) -> torch.Tensor:
    rad = torch.tensor(degrees) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1)


# Class 0 at 0, 10 and 40 degrees; class 1 at 90 and 210 degrees.
EMB = on_circle(0, 10, 40, 90, 210)
LABELS = torch.tensor([0, 0, 0, 1, 1])


def test_pairwise_distances_are_chords():
    d = pairwise_distances(on_circle(0, 60, 180))
    assert d[0, 1].item() == pytest.approx(1.0, abs=1e-5)  # 2 sin(30 deg)
    assert d[0, 2].item() == pytest.approx(2.0, abs=1e-5)
    assert d[1, 1].item() == pytest.approx(0.0, abs=1e-5)


def test_batch_hard_picks_farthest_positive_and_nearest_negative():
    a, p, n = batch_hard(EMB, LABELS)
    assert a.tolist() == [0, 1, 2, 3, 4]
    assert p.tolist() == [2, 2, 0, 4, 3]
    assert n.tolist() == [3, 3, 3, 2, 0]


def test_batch_hard_skips_anchors_without_positive():
    a, p, n = batch_hard(on_circle(0, 10, 90), torch.tensor([0, 0, 1]))
    assert a.tolist() == [0, 1]
    assert n.tolist() == [2, 2]


def test_semi_hard_picks_nearest_negative_inside_the_margin_band():
    a, p, n = semi_hard(EMB, LABELS, margin=0.3)
    # (2,0): d_ap = 0.684, negative 3 at 0.845 is inside (0.684, 0.984).
    # (4,3): d_ap = 1.732, negatives 0, 1, 2 at 1.932, 1.970, 1.992: nearest is 0.
    assert list(zip(a.tolist(), p.tolist(), n.tolist(), strict=True)) == [(2, 0, 3), (4, 3, 0)]


def test_semi_hard_never_returns_a_negative_closer_than_the_positive():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(32, 8), dim=1)
    labels = torch.arange(32) % 4
    a, p, n = semi_hard(emb, labels, margin=0.5)
    d = pairwise_distances(emb)
    assert len(a) > 0
    assert bool((d[a, n] > d[a, p]).all()) and bool((d[a, n] < d[a, p] + 0.5).all())
    assert bool((labels[a] == labels[p]).all()) and bool((labels[a] != labels[n]).all())


def test_triplet_margin_loss_by_hand():
    anchors = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    positives = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    negatives = torch.tensor([[0.0, 1.0], [0.6, 0.8]])
    loss, active = triplet_margin_loss(anchors, positives, negatives, margin=0.2)
    # First triplet is satisfied (0.894 - 1.414 + 0.2 < 0); second: 1.414 - 0.894 + 0.2.
    assert loss.item() == pytest.approx((math.sqrt(2) - math.sqrt(0.8) + 0.2) / 2, abs=1e-5)
    assert active == 0.5


def test_triplet_loss_of_no_triplets_is_zero_with_a_gradient():
    empty = torch.zeros(0, 2, requires_grad=True)
    loss, active = triplet_margin_loss(empty, empty, empty, 0.2)
    loss.backward()
    assert loss.item() == 0.0 and active == 0.0


def test_similarity_distillation_is_zero_for_identical_geometry_only():
    x = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    rotation = torch.linalg.qr(torch.randn(4, 4))[0]
    assert similarity_distillation_loss(x, x @ rotation).item() == pytest.approx(0, abs=1e-6)
    assert similarity_distillation_loss(x, torch.randn(6, 4)).item() > 0.01


def test_random_triplets_respect_labels():
    labels = [0, 0, 0, 1, 1, 2]
    triplets = random_triplets(labels, 50, torch.Generator().manual_seed(0))
    assert len(triplets) == 50
    for a, p, n in triplets:
        assert a != p and labels[a] == labels[p] and labels[n] != labels[a]


def test_multi_similarity_loss_by_hand():
    # Class 0 at 0 and 20 degrees, class 1 at 30 and 120 degrees.
    emb = on_circle(0, 20, 30, 120)
    loss, active = multi_similarity_loss(emb, torch.tensor([0, 0, 1, 1]), alpha=2.0, beta=50.0,
                                         base=0.5, epsilon=0.1)
    c = [math.cos(math.radians(d)) for d in (20, 30, 10, 90)]  # AB, AC, BC, CD

    def pos(s: float) -> float:
        return math.log1p(math.exp(-2 * (s - 0.5))) / 2

    def neg(*s: float) -> float:
        return math.log1p(sum(math.exp(50 * (x - 0.5)) for x in s)) / 50

    # A and B keep each other and C (the 120-degree point is too far); C keeps D and both
    # class-0 points; D's negatives are below its positive's cosine - 0.1: D keeps nothing.
    by_anchor = [pos(c[0]) + neg(c[1]), pos(c[0]) + neg(c[2]), pos(c[3]) + neg(c[1], c[2]), 0]
    assert loss.item() == pytest.approx(sum(by_anchor) / 4, rel=1e-5)
    assert active == 0.75


def test_multi_similarity_gradient_step_lowers_the_loss():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(16, 8), dim=1).requires_grad_()
    labels = torch.arange(16) % 4
    loss, _ = multi_similarity_loss(emb, labels)
    loss.backward()
    stepped = torch.nn.functional.normalize(emb.detach() - 0.05 * emb.grad, dim=1)
    assert multi_similarity_loss(stepped, labels)[0].item() < loss.item()


def test_multi_similarity_of_a_batch_without_positives_is_zero_with_a_gradient():
    emb = on_circle(0, 90, 180).requires_grad_()
    loss, active = multi_similarity_loss(emb, torch.tensor([0, 1, 2]))
    loss.backward()
    assert loss.item() == 0.0 and active == 0.0


def test_proxy_anchor_loss_by_hand():
    # Proxies at 0 and 90 degrees (a third, at 180, has no photo in the batch); photos of
    # class 0 at 10 and 50 degrees, of class 1 at 80.
    loss_fn = ProxyAnchorLoss(3, 2, alpha=4.0, delta=0.1, init=on_circle(0, 90, 180))
    loss, within_margin = loss_fn(on_circle(10, 50, 80), torch.tensor([0, 0, 1]))
    cos = {d: math.cos(math.radians(d)) for d in (10, 40, 50, 80, 90, 100, 130, 170)}

    def pos(*s: float) -> float:
        return math.log1p(sum(math.exp(-4 * (x - 0.1)) for x in s))

    def neg(*s: float) -> float:
        return math.log1p(sum(math.exp(4 * (x + 0.1)) for x in s))

    positives = (pos(cos[10], cos[50]) + pos(cos[10])) / 2  # two proxies have photos
    negatives = (neg(cos[80]) + neg(cos[80], cos[40]) + neg(cos[170], cos[130], cos[100])) / 3
    assert loss.item() == pytest.approx(positives + negatives, rel=1e-5)
    # The photos at 10 and 80 lead the other proxies by cos 10 - cos 80 > 0.2; the photo at
    # 50 trails the proxy at 90 (cos 50 - cos 40 < 0).
    assert within_margin == pytest.approx(1 / 3)


def test_proxy_anchor_step_pulls_photos_to_their_proxies():
    torch.manual_seed(0)
    loss_fn = ProxyAnchorLoss(4, 8)
    emb = torch.nn.functional.normalize(torch.randn(16, 8), dim=1).requires_grad_()
    labels = torch.arange(16) % 4
    loss, _ = loss_fn(emb, labels)
    loss.backward()
    assert loss_fn.proxies.grad is not None and loss_fn.proxies.grad.abs().sum() > 0
    stepped = torch.nn.functional.normalize(emb.detach() - 0.01 * emb.grad, dim=1)
    assert loss_fn(stepped, labels)[0].item() < loss.item()


def test_proxy_anchor_refuses_an_init_of_the_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        ProxyAnchorLoss(3, 2, init=torch.zeros(2, 2))

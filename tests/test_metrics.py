"""binary_auroc against hand-counted pairs, ties and degenerate inputs."""

from __future__ import annotations

import math

import torch

from trl_likelihood.metrics import binary_auroc


def test_auroc_by_hand_with_ties():
    scores = torch.tensor([0.1, 0.4, 0.4, 0.8, 0.3])
    labels = torch.tensor([0, 1, 0, 1, 1]).bool()
    # positives 0.4, 0.8, 0.3 vs negatives 0.1, 0.4: wins 1+0.5, 1+1, 1+0 -> 4.5 of 6
    assert binary_auroc(scores, labels) == 4.5 / 6


def test_auroc_extremes_and_missing_class():
    labels = torch.tensor([1, 1, 0, 0]).bool()
    assert binary_auroc(torch.tensor([3.0, 2.0, 1.0, 0.0]), labels) == 1.0
    assert binary_auroc(torch.tensor([0.0, 1.0, 2.0, 3.0]), labels) == 0.0
    assert binary_auroc(torch.ones(4), labels) == 0.5
    assert math.isnan(binary_auroc(torch.ones(3), torch.ones(3).bool()))


def test_auroc_random_scores_near_half():
    g = torch.Generator().manual_seed(0)
    scores, labels = torch.rand(4000, generator=g), torch.rand(4000, generator=g) > 0.5
    assert abs(binary_auroc(scores, labels) - 0.5) < 0.03

import math

import pytest
import torch

from cvstudy.trainers.config import LossConfig
from cvstudy.trainers.losses import ImbalanceLoss, effective_number_weights, sampling_weights, soft_targets

COUNTS = torch.tensor([8.0, 2.0])
LOGITS = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
LABELS = torch.tensor([0, 1])


def _loss(**kw):
    cfg = LossConfig(**{"label_smoothing": 0.0, **kw})
    fn = ImbalanceLoss(cfg, COUNTS)
    return fn, fn(LOGITS, soft_targets(LABELS, 2, cfg.label_smoothing), fn.weights_at(0))


def _nll(z, y):
    return -(z[y] - math.log(sum(math.exp(v) for v in z)))


def test_ce_matches_hand_computation():
    _, value = _loss(loss="ce")
    expected = (_nll([2, 0], 0) + _nll([0, 1], 1)) / 2
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_balanced_softmax_adds_log_prior():
    _, value = _loss(loss="balanced_softmax", tau=1.0)
    p = [math.log(0.8), math.log(0.2)]
    expected = (_nll([2 + p[0], 0 + p[1]], 0) + _nll([0 + p[0], 1 + p[1]], 1)) / 2
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_focal_down_weights_easy_examples():
    _, value = _loss(loss="focal", gamma=2.0)
    p0 = math.exp(-_nll([2, 0], 0))
    p1 = math.exp(-_nll([0, 1], 1))
    expected = ((1 - p0) ** 2 * _nll([2, 0], 0) + (1 - p1) ** 2 * _nll([0, 1], 1)) / 2
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_class_balanced_weights_are_effective_numbers():
    beta = 0.9
    raw = [(1 - beta) / (1 - beta**8), (1 - beta) / (1 - beta**2)]
    w = [2 * r / sum(raw) for r in raw]
    assert effective_number_weights(COUNTS, beta).tolist() == pytest.approx(w, rel=1e-6)
    _, value = _loss(loss="class_balanced", beta=beta)
    expected = (w[0] * _nll([2, 0], 0) + w[1] * _nll([0, 1], 1)) / 2
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_drw_switches_weights_on_at_its_epoch():
    fn = ImbalanceLoss(LossConfig(loss="ce", drw_epoch=3, beta=0.9), COUNTS)
    assert fn.weights_at(0) is None and fn.weights_at(2) is None
    assert torch.equal(fn.weights_at(3), fn.class_weights) and torch.equal(fn.weights_at(7), fn.class_weights)
    assert ImbalanceLoss(LossConfig(loss="ce"), COUNTS).weights_at(10) is None


def test_label_smoothing_targets():
    t = soft_targets(torch.tensor([1]), 4, 0.2)
    assert t.tolist() == [pytest.approx([0.05, 0.85, 0.05, 0.05])]


@pytest.mark.parametrize("sampler, expected", [("class_balanced", [0.5, 0.5]), ("sqrt", [2 / 3, 1 / 3])])
def test_sampler_draw_frequencies(sampler, expected):
    torch.manual_seed(0)
    labels = torch.tensor([0] * 800 + [1] * 200)
    w = sampling_weights(labels, torch.tensor([800, 200]), sampler)
    draws = labels[torch.multinomial(w, 200_000, replacement=True)]
    freq = torch.bincount(draws).float() / len(draws)
    assert freq.tolist() == pytest.approx(expected, abs=0.01)
    assert sampling_weights(labels, torch.tensor([800, 200]), "uniform") is None

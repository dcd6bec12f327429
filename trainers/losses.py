"""Losses for long-tailed training, all written for soft targets (label smoothing, mixup, cutmix).

For targets t (rows sum to 1), logits z, class counts n_c and optional class weights w_c:

    loss = mean over the batch of  - sum_c  w_c * m_c * t_c * log softmax(z + a)_c

- ce:               a = 0, m = 1
- balanced_softmax: a_c = tau * log(n_c / N)  (logit adjustment; Ren et al. 2020, Menon et al. 2021);
                    predictions use the raw logits, so the prior is removed at test time
- focal:            m_c = (1 - p_c) ** gamma  (Lin et al. 2017)
- class_balanced:   w_c = (1 - beta) / (1 - beta ** n_c), scaled to mean 1 (Cui et al. 2019), always on
- deferred re-weighting (drw_epoch): the same w_c switched on from that epoch for any loss
  (Cao et al. 2019).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import LossConfig


def effective_number_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """(1 - beta) / (1 - beta^n_c), normalised to mean 1 over classes."""
    counts = counts.double()
    w = (
        (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
        if beta > 0
        else torch.ones_like(counts)
    )
    return (w * len(w) / w.sum()).float()


class ImbalanceLoss(nn.Module):
    log_prior: torch.Tensor  # buffers, registered in __init__
    class_weights: torch.Tensor

    def __init__(self, cfg: LossConfig, class_counts: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        counts = class_counts.float().clamp_min(1)
        self.register_buffer("log_prior", torch.log(counts / counts.sum()))
        self.register_buffer("class_weights", effective_number_weights(counts, cfg.beta))

    def weights_at(self, epoch: int) -> torch.Tensor | None:
        """Per-class weights in force at ``epoch`` (0-based), or None for unweighted."""
        drw_on = self.cfg.drw_epoch is not None and epoch >= self.cfg.drw_epoch
        return self.class_weights if self.cfg.loss == "class_balanced" or drw_on else None

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        z = logits.float()
        if self.cfg.loss == "balanced_softmax":
            z = z + self.cfg.tau * self.log_prior
        log_p = F.log_softmax(z, dim=1)
        per_class = -targets * log_p
        if self.cfg.loss == "focal":
            per_class = per_class * (1.0 - log_p.exp()).pow(self.cfg.gamma)
        if weights is not None:
            per_class = per_class * weights
        return per_class.sum(1).mean()


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot targets with ``smoothing`` of the mass spread uniformly over all classes."""
    off = smoothing / num_classes
    return torch.full((len(labels), num_classes), off, device=labels.device).scatter_(
        1, labels[:, None], 1.0 - smoothing + off
    )


def sampling_weights(labels: torch.Tensor, counts: torch.Tensor, sampler: str) -> torch.Tensor | None:
    """Per-image draw weights for a sampler; None for uniform (a plain permutation)."""
    if sampler == "uniform":
        return None
    power = {"class_balanced": 1.0, "sqrt": 0.5}[sampler]  # class probability ~ n_c^(1 - power)
    return counts.float().clamp_min(1).pow(-power)[labels]

"""The epoch-wise learning-rate schedule of the reference code.

Epoch ``e`` (counted from 0) trains at ``lr × multiplier(e)``: the warm-up factors for the first epochs, then the
last warm-up factor, multiplied by ``decay_rate`` once for every decay epoch already reached. As in the reference's
loop (the warm-up's learning rate is set, else the rate decays at a decay epoch), a decay epoch inside the warm-up
has no effect, and an epoch listed twice decays once.

>>> [lr_multiplier(e, (0.5, 1.0, 1.5, 2.0), (10, 12), 0.25) for e in range(13)]
[0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 0.5, 0.5, 0.125]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ban.engine.config import TrainConfig


def lr_multiplier(epoch: int, warmup: Sequence[float], decay_epochs: Sequence[int], decay_rate: float) -> float:
    """Factor applied to the base learning rate during ``epoch``."""
    if epoch < len(warmup):
        return float(warmup[epoch])
    base = float(warmup[-1]) if warmup else 1.0
    return base * decay_rate ** sum(1 for d in set(decay_epochs) if len(warmup) <= d <= epoch)


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` under ``config``."""
    return config.lr * lr_multiplier(epoch, config.warmup, config.decay_epochs, config.decay_rate)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set ``lr`` on every parameter group of ``optimizer``."""
    for group in optimizer.param_groups:
        group["lr"] = lr

"""An exponential moving average of the generator's weights (``train.ema``).

The average of the last few thousand steps' weights is a better denoiser than the last
step's (less of the final steps' noise), and for GANs a steadier one (ESRGAN, StyleGAN and
DRUNet train this way).  Validation, the best checkpoint and inference use the average;
the optimiser keeps stepping the raw weights.  torch's ``AveragedModel`` does the
bookkeeping; the decay warms up as in TensorFlow's ``ExponentialMovingAverage``
(``min(decay, (1 + n) / (10 + n))`` after ``n`` updates), so a short CPU run is not an
average dominated by its random initialisation.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel


class WeightAverage:
    def __init__(self, network: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema must be between 0 and 1 (e.g. 0.999), got {decay}")
        self.decay = float(decay)
        # use_buffers: BatchNorm's running statistics are averaged too (integer counters copied).
        self.averaged = AveragedModel(network, multi_avg_fn=self._average, use_buffers=True)
        self.averaged.eval()

    def _average(self, averaged: list, current: list, count) -> None:
        decay = min(self.decay, (1.0 + float(count)) / (10.0 + float(count)))
        for mean, value in zip(averaged, current):
            if mean.is_floating_point():
                mean.lerp_(value, 1.0 - decay)
            else:
                mean.copy_(value)

    @property
    def network(self) -> torch.nn.Module:
        """The averaged network (same class as the generator)."""
        return self.averaged.module

    @torch.no_grad()
    def update(self, network: torch.nn.Module) -> None:
        self.averaged.update_parameters(network)

    def state_dict(self) -> dict:
        return {"weights": self.network.state_dict(), "count": int(self.averaged.n_averaged), "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.network.load_state_dict(state["weights"])
        self.averaged.n_averaged.fill_(int(state["count"]))

"""Optimizers from torch.optim; ``betas`` may be given as a YAML list."""

from __future__ import annotations

import torch

import toolbox


def adam(params, lr: float = 1e-4, betas=(0.9, 0.999), eps: float = 1e-8,
         weight_decay: float = 0.0, amsgrad: bool = False):
    """Adam (torch.optim.Adam)."""
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps,
                            weight_decay=weight_decay, amsgrad=amsgrad)


def adamw(params, lr: float = 1e-4, betas=(0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 0.01, amsgrad: bool = False):
    """AdamW (decoupled weight decay)."""
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps,
                             weight_decay=weight_decay, amsgrad=amsgrad)


def sgd(params, lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0,
        nesterov: bool = False):
    """SGD with momentum."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov)


def rmsprop(params, lr: float = 5e-5, alpha: float = 0.99, momentum: float = 0.0):
    """RMSprop (the original WGAN optimizer)."""
    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, momentum=momentum)


@toolbox.hookimpl
def register_optimizers(register):
    register("adam", adam)
    register("adamw", adamw)
    register("sgd", sgd)
    register("rmsprop", rmsprop)

"""Test-time self-ensemble: the average of the network's outputs over flips and rotations.

Each transformed copy of the input is denoised and transformed back, and the results are
averaged (the "x8" of EDSR / DRUNet): the noise is the same noise in another arrangement,
so the network's errors partly average out (typically +0.1 to +0.3 dB) at N times the cost.
2D: the 8 symmetries of the square (4 rotations, each with and without a flip).  3D: the 48
symmetries of the cube, ordered so that the first 8 are the flips of the 3 axes (a subset
that also suits anisotropic volumes) and the rest permute the axes.
"""

from __future__ import annotations

import itertools

import torch

from toolbox.nn import first_output


def symmetries(spatial_dims: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(axis permutation, flipped axes) pairs over the spatial axes 0..dims-1, identity first."""
    axes = tuple(range(spatial_dims))
    flips = [tuple(a for a, f in zip(axes, bits) if f) for bits in itertools.product((0, 1), repeat=spatial_dims)]
    return [(perm, flip) for perm in itertools.permutations(axes) for flip in flips]


def max_ensemble(spatial_dims: int) -> int:
    return len(symmetries(spatial_dims))


class SelfEnsemble(torch.nn.Module):
    """``network`` averaged over the first ``count`` symmetries of ``symmetries(spatial_dims)``."""

    def __init__(self, network: torch.nn.Module, spatial_dims: int, count: int):
        super().__init__()
        available = max_ensemble(spatial_dims)
        if not 1 <= count <= available:
            raise ValueError(f"self-ensemble size must be 1..{available} in {spatial_dims}D, got {count}")
        self.network = network
        self.chosen = symmetries(spatial_dims)[:count]

    def forward(self, x):
        total = None
        for perm, flip in self.chosen:
            order = (0, 1) + tuple(2 + a for a in perm)
            moved = x.permute(order)
            if flip:
                moved = moved.flip([2 + a for a in flip])
            out = first_output(self.network(moved.contiguous()))
            if flip:
                out = out.flip([2 + a for a in flip])
            out = out.permute(tuple(order.index(i) for i in range(len(order))))
            total = out if total is None else total + out
        return total / len(self.chosen)

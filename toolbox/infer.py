"""Sliding-window inference with MONAI: memory bounded by the window, not by the image.

Networks that return several outputs (deep supervision) contribute their first, full-size
output.  Overlapping windows are blended with a Gaussian weight so seams do not show.
"""

from __future__ import annotations

import torch


class FirstOutput(torch.nn.Module):
    """Wrap a network so that a tuple/list output becomes its first item."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x):
        out = self.network(x)
        return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def denoise_tensor(
    network: torch.nn.Module,
    image: torch.Tensor,
    roi_size,
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    device: torch.device | str = "cpu",
    autocast_dtype=None,
) -> torch.Tensor:
    """Denoise one image ``(C, *spatial)`` (normalised) and return it on the CPU."""
    from monai.inferers import SlidingWindowInferer

    device = torch.device(device)
    inferer = SlidingWindowInferer(
        roi_size=tuple(roi_size), sw_batch_size=sw_batch_size, overlap=overlap,
        mode="gaussian", padding_mode="reflect", sw_device=device, device=torch.device("cpu"),
    )
    was_training = network.training
    network.eval()
    try:
        batch = image.unsqueeze(0).to(device)
        if autocast_dtype is not None:
            with torch.autocast(device.type, dtype=autocast_dtype):
                out = inferer(batch, FirstOutput(network))
        else:
            out = inferer(batch, FirstOutput(network))
    finally:
        network.train(was_training)
    return out[0].float().cpu()

"""PSNR and SSIM from MONAI, always with an explicit data range."""

from __future__ import annotations

import torch


def psnr_ssim(prediction: torch.Tensor, target: torch.Tensor, spatial_dims: int,
              data_range: float = 1.0) -> tuple[float, float]:
    """PSNR (dB) and SSIM of one image ``(C, *spatial)`` against its reference.

    Values are clipped to the data range first, as a viewer would show them.
    """
    from monai.metrics import PSNRMetric, SSIMMetric

    prediction = prediction.float().clamp(0, data_range).unsqueeze(0)
    target = target.float().clamp(0, data_range).unsqueeze(0)
    psnr = PSNRMetric(max_val=data_range)(prediction, target).mean().item()
    # SSIM's 11-pixel window needs at least that much image along every axis.
    small = min(prediction.shape[2:])
    kernel = 11 if small >= 11 else (small if small % 2 else small - 1)
    ssim = SSIMMetric(spatial_dims=spatial_dims, data_range=data_range,
                      win_size=max(kernel, 1))(prediction, target).mean().item()
    return psnr, ssim

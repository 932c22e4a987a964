"""PSNR and SSIM from MONAI, in the image's own units with an explicit data range."""

from __future__ import annotations

import numpy as np
import torch


def psnr_ssim(prediction, target, spatial_dims: int, data_range: float = 1.0) -> tuple[float, float]:
    """PSNR (dB) and SSIM of one image ``(C, *spatial)`` against its reference.

    Over the whole image and unclipped: a voxel outside a display window (CT air, bone,
    metal) counts like any other, as in a user's own comparison.  ``data_range`` is in the
    images' units (for CT, 2000 HU for a -1000..1000 window).
    """
    from monai.metrics import PSNRMetric, SSIMMetric

    prediction = torch.as_tensor(np.asarray(prediction), dtype=torch.float32).unsqueeze(0)
    target = torch.as_tensor(np.asarray(target), dtype=torch.float32).unsqueeze(0)
    # float64: HU-sized values over millions of voxels.
    psnr = PSNRMetric(max_val=data_range)(prediction.double(), target.double()).mean().item()
    # SSIM's 11-pixel window needs at least that much image along every axis.
    small = min(prediction.shape[2:])
    kernel = 11 if small >= 11 else (small if small % 2 else small - 1)
    ssim = SSIMMetric(spatial_dims=spatial_dims, data_range=data_range,
                      win_size=max(kernel, 1))(prediction, target).mean().item()
    return psnr, ssim

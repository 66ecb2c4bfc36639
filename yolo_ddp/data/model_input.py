"""A loader batch's uint8 images → the model's input: on the device, in [0, 1], in the step's compute dtype."""

from __future__ import annotations

import torch


def to_model_input(img: torch.Tensor, device: torch.device, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """Copy uint8 (4x fewer bytes than fp32) to the device, then scale by 1/255 in the AMP dtype (fp32 without
    AMP): autocast would cast an fp32 batch to that dtype at the first convolution anyway, so the full-size
    fp32 copy is skipped, with the same values (the division runs in fp32 and rounds once). Strides are kept:
    DALI's channels_last view stays channels_last."""
    # copy=True: the in-place division must never reach the loader's own tensor (a float batch already there).
    return img.to(device, non_blocking=True).to(amp_dtype or torch.float32, copy=True).div_(255)

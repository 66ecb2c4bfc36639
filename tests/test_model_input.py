"""The loader's uint8 batch → the model's input, normalised in the AMP dtype (no full-size fp32 copy)."""

from __future__ import annotations

import pytest
import torch

from yolo_ddp.data.model_input import to_model_input

CPU = torch.device("cpu")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_amp_input_equals_what_autocast_makes_of_the_fp32_input(dtype: torch.dtype) -> None:
    img = torch.arange(256, dtype=torch.uint8).repeat(2, 3, 4, 1).contiguous(memory_format=torch.channels_last)
    out = to_model_input(img, CPU, dtype)
    assert out.dtype == dtype and out.shape == img.shape
    assert torch.equal(out, (img.float() / 255).to(dtype))  # the values the first convolution saw before
    assert out.is_contiguous(memory_format=torch.channels_last)  # DALI's layout survives


def test_without_amp_the_input_is_fp32_as_before() -> None:
    img = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out = to_model_input(img, CPU, None)
    assert out.dtype == torch.float32 and torch.equal(out, img.float() / 255)
    assert img.dtype == torch.uint8  # the loader's batch is untouched (split micro-batches reuse it)


def test_a_float_batch_on_the_device_is_not_divided_in_place() -> None:
    img = torch.full((1, 3, 4, 4), 255.0)
    out = to_model_input(img, CPU, None)
    assert torch.equal(out, torch.ones_like(img)) and torch.equal(img, torch.full_like(img, 255.0))

"""Where resumed optimizer state and reverted BatchNorm layers live, checked without a GPU: the `meta` device
stands in for an accelerator, so a tensor left on the CPU (or moved off it) by mistake is visible."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.optim.optimizer import _get_scalar_dtype

from yolo_ddp.engine.loop import load_optimizer_state
from yolo_ddp.engine.sync_bn import CollectiveBatchNorm2d, revert_sync_batchnorm


def _checkpoint(fused: bool) -> dict:
    """A CPU optimizer state after one step, as `last.pt` holds it (loaded with map_location='cpu')."""
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1, fused=fused)
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, map_location="cpu", weights_only=True)


def _stepped(fused: bool) -> dict:
    return _checkpoint(fused)["state"][0]  # what this kind of optimizer creates itself


@pytest.mark.parametrize(("saved_fused", "run_fused"), [(True, False), (False, True)])
def test_resume_with_another_kernel_steps_like_a_fresh_optimizer(saved_fused: bool, run_fused: bool) -> None:
    net = nn.Linear(4, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1, fused=run_fused)
    load_optimizer_state(opt, _checkpoint(saved_fused))
    assert all(g["fused"] is run_fused for g in opt.param_groups)
    fresh = _stepped(run_fused)["step"]
    for p in net.parameters():
        step = opt.state[p]["step"]
        assert (step.device, step.dtype) == (fresh.device, fresh.dtype)
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    assert float(opt.state[net.weight]["step"]) == 2.0


@pytest.mark.parametrize(("saved_fused", "run_kernel_on_device"), [(False, True), (True, False)])
def test_resumed_step_sits_where_this_runs_kernel_reads_it(saved_fused: bool, run_kernel_on_device: bool) -> None:
    """torch places `step` by the checkpoint's flags; the run's own kernel decides: the parameter's device for
    fused (here `meta`, as CUDA would be), a CPU scalar otherwise (no `.item()` per parameter per step)."""
    param = nn.Parameter(torch.zeros(3, 4, device="meta"))
    bias = nn.Parameter(torch.zeros(3, device="meta"))
    opt = torch.optim.AdamW([param, bias], lr=0.1)  # fused AdamW refuses `meta`: set the flag as CUDA's would be
    opt.param_groups[0]["fused"] = run_kernel_on_device
    load_optimizer_state(opt, _checkpoint(saved_fused))
    for p in (param, bias):
        step = opt.state[p]["step"]
        want = (p.device, torch.float32) if run_kernel_on_device else (torch.device("cpu"), _get_scalar_dtype())
        assert (step.device, step.dtype) == want
        assert opt.state[p]["exp_avg"].device == p.device


@pytest.mark.parametrize("sync_type", [nn.SyncBatchNorm, CollectiveBatchNorm2d])
def test_reverted_batchnorm_stays_on_its_layers_device(sync_type: type) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), sync_type(4)).to("meta")
    out = revert_sync_batchnorm(model)
    bn = out[1]
    assert type(bn) is nn.BatchNorm2d
    assert {t.device.type for t in (*bn.parameters(), *bn.buffers())} == {"meta"}  # with the conv, not on the CPU


def test_reverted_batchnorm_keeps_dtype_and_values() -> None:
    bn = CollectiveBatchNorm2d(4).double()
    bn.running_mean.fill_(0.5)
    out = revert_sync_batchnorm(nn.Sequential(bn))[0]
    assert out.weight.dtype == out.running_mean.dtype == torch.float64
    assert torch.equal(out.running_mean, bn.running_mean)

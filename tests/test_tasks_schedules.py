"""Each paper schedule gives the paper's learning rate at chosen epochs (through the same
LambdaLR + optimiser path the task uses)."""
from __future__ import annotations

import math

import pytest
import torch

from cvkit.tasks.schedules import LRSchedule

STEPS = 7  # optimizer steps per epoch in these tests


def lr_at_epochs(schedule: LRSchedule, base_lr: float, epochs: list[int], total: float,
                 steps_per_epoch: int = STEPS) -> dict[int, float]:
    """LR in effect during the first step of each 1-based epoch, read from a real optimiser."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule.lambda_lr(steps_per_epoch, total))
    out, step = {}, 0
    for e in range(1, max(epochs) + 1):
        for i in range(steps_per_epoch):
            if i == 0 and e in epochs:
                out[e] = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            step += 1
    return out


def test_eca_resnet_step_schedule():
    """ECA-Net ResNets: 0.1, x0.1 every 30 epochs, 100 epochs."""
    lrs = lr_at_epochs(LRSchedule("step", step_size=30, gamma=0.1), 0.1, [1, 30, 31, 60, 61, 91, 100], 100)
    assert lrs[1] == pytest.approx(0.1) and lrs[30] == pytest.approx(0.1)
    assert lrs[31] == pytest.approx(0.01) and lrs[60] == pytest.approx(0.01)
    assert lrs[61] == pytest.approx(1e-3)
    assert lrs[91] == pytest.approx(1e-4) and lrs[100] == pytest.approx(1e-4)


def test_mobilenetv2_exponential_schedule():
    """ECA-Net MobileNetV2: 0.045 x0.98 per epoch; GCP MobileNetV2 LRfast: 0.06 x0.92 per epoch."""
    lrs = lr_at_epochs(LRSchedule("exponential", gamma=0.98), 0.045, [1, 2, 101, 400], 400)
    assert lrs[1] == pytest.approx(0.045)
    assert lrs[2] == pytest.approx(0.045 * 0.98)
    assert lrs[101] == pytest.approx(0.045 * 0.98 ** 100)
    assert lrs[400] == pytest.approx(0.045 * 0.98 ** 399)
    lrs = lr_at_epochs(LRSchedule("exponential", gamma=0.92), 0.06, [1, 10, 100], 100)
    assert lrs[10] == pytest.approx(0.06 * 0.92 ** 9) and lrs[100] == pytest.approx(0.06 * 0.92 ** 99)


@pytest.mark.parametrize("epoch", [1, 2, 15, 30])
def test_gcp_lrfast(epoch):
    """GCP LRfast: lr = 0.1 (1 - (e-1)/52)^11 for 30 epochs."""
    lrs = lr_at_epochs(LRSchedule("poly", power=11, horizon=52), 0.1, [epoch], 30)
    assert lrs[epoch] == pytest.approx(0.1 * (1 - (epoch - 1) / 52) ** 11, rel=1e-12)


@pytest.mark.parametrize("epoch", [1, 2, 25, 50])
def test_gcp_lradju(epoch):
    """GCP LRadju: lr = 0.1 (1 - (e-1)/49)^2 for 50 epochs (the last epoch's LR is 0)."""
    lrs = lr_at_epochs(LRSchedule("poly", power=2, horizon=49), 0.1, [epoch], 50)
    assert lrs[epoch] == pytest.approx(0.1 * (1 - (epoch - 1) / 49) ** 2, rel=1e-12, abs=1e-15)
    if epoch == 50:
        assert lrs[epoch] == 0.0


def test_isqrt_multistep():
    """iSQRT-COV: 0.1, x0.1 at epochs 30, 45, 60 (65 epochs)."""
    s = LRSchedule("multistep", milestones=[30, 45, 60], gamma=0.1)
    lrs = lr_at_epochs(s, 0.1, [30, 31, 45, 46, 60, 61, 65], 65)
    assert [round(lrs[e], 8) for e in (30, 31, 45, 46, 60, 61, 65)] == \
        [0.1, 0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001]


def test_vit_cosine_with_step_warmup_per_iteration():
    """HC ViT recipe: linear warmup over the first steps, then cosine per iteration to 0."""
    spe, total = 10, 30
    s = LRSchedule("cosine", warmup_steps=25, per_iteration=True)
    f = s.lambda_lr(spe, total)
    assert f(0) == pytest.approx(1 / 25) and f(12) == pytest.approx(13 / 25 * s.factor(1 + 12 / spe, total))
    assert f(24) == pytest.approx(s.factor(1 + 24 / spe, total))
    # cosine per iteration: changes inside an epoch, half-way is 0.5, the end is 0
    assert f(150) == pytest.approx(0.5) and f(151) < f(150)
    assert f(spe * total) == pytest.approx(0.0, abs=1e-12)
    assert f(100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 100 / 300)))


def test_epoch_schedule_is_constant_within_an_epoch():
    f = LRSchedule("exponential", gamma=0.5).lambda_lr(4, 10)
    assert [f(i) for i in range(9)] == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25]


def test_unknown_schedule_is_one_line_error():
    with pytest.raises(ValueError, match="unknown LR schedule 'linear'"):
        LRSchedule("linear")


def _gcp_mobilenetv2_lradju(epoch: int) -> float:
    """The GCP release's MobileNetV2 LRadju (ZhangLi-CS/GCP_Optimization, src/main.py), written
    from its formula with its 0-based epoch e0 = epoch - 1: 0.06 -> 0.01 over epochs 0-50, ->
    0.001 over 50-100, -> 1e-5 over 100-150, then 1e-5."""
    e0 = epoch - 1
    if e0 <= 50:
        return 0.06 - (0.06 - 0.01) / 50 * e0
    if e0 <= 100:
        return 0.01 - (0.01 - 0.001) / 50 * (e0 - 50)
    if e0 <= 150:
        return 0.001 - (0.001 - 0.00001) / 50 * (e0 - 100)
    return 0.00001


MOBILENETV2_LRADJU_POINTS = [[1, 1.0], [51, 0.01 / 0.06], [101, 0.001 / 0.06], [151, 1e-5 / 0.06]]


@pytest.mark.parametrize("epoch", [1, 2, 26, 51, 52, 77, 101, 126, 150, 151, 160])
def test_gcp_mobilenetv2_lradju_piecewise_linear(epoch):
    lrs = lr_at_epochs(LRSchedule("piecewise_linear", points=MOBILENETV2_LRADJU_POINTS), 0.06,
                       [epoch], 150)
    assert lrs[epoch] == pytest.approx(_gcp_mobilenetv2_lradju(epoch), rel=1e-12)


def test_piecewise_linear_per_iteration_interpolates_inside_an_epoch():
    s = LRSchedule("piecewise_linear", points=[[1, 1.0], [3, 0.0]], per_iteration=True)
    f = s.lambda_lr(4, 10)
    assert [f(i) for i in (0, 2, 4, 6, 8, 9)] == pytest.approx([1, 0.75, 0.5, 0.25, 0, 0])
    assert LRSchedule("piecewise_linear", points=[[5, 0.5]]).factor(1) == 0.5  # before the first


@pytest.mark.parametrize("points", [[], [[1, 1.0], [1, 0.5]], [[2, 1.0], [1, 0.5]],
                                    [[1, -0.1]], [[1, 1.0, 2]], [["a", 1.0]], None,
                                    [[1, float("nan")], [3, 0.0]], [[1, 1.0], [float("inf"), 0.0]]])
def test_piecewise_linear_bad_points_are_one_line_errors(points):
    with pytest.raises(ValueError, match=r"schedule 'piecewise_linear': points must be "):
        LRSchedule("piecewise_linear", points=points)

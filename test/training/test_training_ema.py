"""The weight average of train.ema: its decay ramp, its update and what it leaves alone."""

import math

import pytest
from tarfuse_ros.training.config import TrainConfig
from tarfuse_ros.training.ema import ema_decay, weight_average
import torch


def test_decay_ramps_up_to_its_long_run_value():
    assert ema_decay(0.99, 0.0, 1) == 0.99
    assert ema_decay(0.99, 100.0, 100) == pytest.approx(0.99 * (1 - math.exp(-1)))
    assert ema_decay(0.99, 100.0, 10_000) == pytest.approx(0.99, abs=1e-12)
    assert ema_decay(0.99, 100.0, 1) < ema_decay(0.99, 100.0, 2) < 0.99


def test_update_moves_the_average_and_leaves_equal_tensors_alone():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2),
                                torch.nn.Conv2d(2, 2, 1))
    average = weight_average(model, 0.75)
    average.update_parameters(model)  # the first update copies
    frozen = model[2].weight.detach().clone()
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model(torch.rand(2, 1, 6, 6))  # BatchNorm statistics move in training mode
    average.update_parameters(model)
    # One update with decay 0.75: a quarter of the way to the new weights.
    torch.testing.assert_close(average.module[0].weight, start + 0.25)
    stats = model[1].running_mean
    assert not torch.equal(average.module[1].running_mean, stats)
    torch.testing.assert_close(average.module[1].running_mean, 0.25 * stats)
    assert torch.equal(average.module[2].weight, frozen)  # unchanged tensors stay bit-identical
    assert int(average.module[1].num_batches_tracked) == 1  # integers are copied
    assert int(average.n_averaged) == 2


@pytest.mark.parametrize('decay, tau', [(0.0, 0.0), (1.0, 0.0), (0.5, -1.0)])
def test_bad_settings_are_refused(decay, tau):
    with pytest.raises(ValueError, match='EMA'):
        weight_average(torch.nn.Linear(2, 2), decay, tau)


@pytest.mark.parametrize('key, value, message', [
    ('ema', 1.0, 'train.ema must lie in [0, 1)'),
    ('ema', -0.1, 'train.ema must lie in [0, 1)'),
    ('ema_tau', -5, 'train.ema_tau must be >= 0'),
])
def test_config_refuses_bad_values(key, value, message):
    with pytest.raises(ValueError) as info:
        TrainConfig(epochs=1, batch=1, lr=1e-3, **{key: value})
    assert message in str(info.value)

"""The time budget fixes the horizon once and then only stops early; the LR curve spans it."""

import time

import pytest
from tarfuse_ros.training.schedule import fit_epochs, lr_factor, TimeBudget


def _curve(horizon, steps_per_epoch=10, warmup=10):
    total = horizon * steps_per_epoch
    return [lr_factor(step, total, warmup, 'cosine', 0.05) for step in range(total)]


def test_no_budget_keeps_the_configured_horizon_and_never_stops():
    budget = TimeBudget(0, 150, time.monotonic())
    assert budget.fixed and budget.horizon == 150 and budget.info() is None
    assert budget.fix(1, 1e9, 1e9) == 150
    assert not budget.stop_after(1, 1e9)


def test_horizon_is_fixed_once_and_then_only_stops_early():
    t0 = time.monotonic() - 100.0  # 100 s already used
    budget = TimeBudget(1000.0, 150, t0)
    # 1000 s - 100 s - 60 s reserve = 840 s of 20 s epochs on top of the one running: 43.
    assert budget.fix(1, 100.0, 20.0, step_seconds=0.5) == 43
    assert budget.fixed and budget.step_ms == 500.0
    # Later estimates never move the horizon, up or down.
    assert budget.fix(2, 100.0, 1.0) == 43 and budget.fix(2, 900.0, 100.0) == 43
    # Epochs as estimated: no stop, horizon unchanged.
    assert not budget.stop_after(1, 20.0) and budget.horizon == 43
    # Epochs much slower than estimated (and the budget nearly spent): stop, same horizon.
    budget.t0 = time.monotonic() - 900.0
    assert budget.stop_after(2, 200.0)
    info = budget.info()
    assert info['horizon_epochs'] == 43 and info['stopped_early_at'] == 2
    assert info['epochs_chosen'] == 2 and info['epochs_configured'] == 150


def test_short_epochs_fix_the_horizon_after_two_epochs():
    budget = TimeBudget(1000.0, 150, time.monotonic())
    assert not budget.stop_after(1, 30.0) and not budget.fixed  # start-up epoch: not used
    assert not budget.stop_after(2, 5.0) and budget.fixed
    assert budget.horizon == 150  # 5 s epochs fit 150 easily


def test_a_run_stopped_before_the_horizon_is_fixed_ends_there():
    budget = TimeBudget(1.0, 50, time.monotonic())
    assert budget.stop_after(1, 0.5)
    assert budget.horizon == 1 and budget.info()['epochs_chosen'] == 1


def test_learning_rate_curve_warms_up_and_ends_at_the_horizon():
    curve = _curve(30)
    assert curve[0] == pytest.approx(0.1) and curve[10] == pytest.approx(1.0)
    assert curve[-1] == pytest.approx(0.05, abs=2e-3)
    assert lr_factor(300, 300, 10, 'cosine', 0.05) == pytest.approx(0.05)
    assert lr_factor(299, 300, 0, 'constant', 0.05) == 1.0


def test_fit_epochs_bounds():
    assert fit_epochs(300, 60, 3, 2.0, 150, minimum=3) == 110
    assert fit_epochs(300, 299, 3, 2.0, 150, minimum=4) == 4

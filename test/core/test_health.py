"""Registration health: the per-frame score on real pairs and the rolling verdict."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from tarfuse_ros.core.health import fit_affine_flow, FrameScore, HealthSettings
from tarfuse_ros.core.health import RegistrationHealth, score_frame, visible_luma

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / 'test' / 'data' / 'datasets'
# Real aligned pairs (folder, stem) from four data sets, and for each an unrelated IR.
PAIRS = [(ROOT / 'samples', 'FLIR_00993'), (ROOT / 'samples', 'FLIR_04229'),
         (DATA / 'roadscene', 'FLIR_00060'), (DATA / 'roadscene', 'FLIR_00550'),
         (DATA / 'm3fd_samples', 'M3FD_00370'), (DATA / 'tno', 'TNO_01')]


def _read_pair(folder, stem):
    ir_path, = (folder / 'ir').glob(f'{stem}.*')
    vi_path, = (folder / 'vi').glob(f'{stem}.*')
    vi = cv2.imread(str(vi_path), cv2.IMREAD_COLOR)
    ir = cv2.imread(str(ir_path), cv2.IMREAD_GRAYSCALE)
    return cv2.resize(ir, (vi.shape[1], vi.shape[0]), interpolation=cv2.INTER_AREA), vi


def _zero_flow(image):
    return np.zeros(image.shape[:2] + (2,), np.float32)


@pytest.mark.parametrize('index', range(len(PAIRS)))
def test_an_aligned_real_pair_scores_higher_than_the_same_visible_with_an_unrelated_ir(index):
    ir, vi = _read_pair(*PAIRS[index])
    other, _ = _read_pair(*PAIRS[(index + 3) % len(PAIRS)])
    other = cv2.resize(other, (vi.shape[1], vi.shape[0]), interpolation=cv2.INTER_AREA)
    aligned = score_frame(ir, vi, _zero_flow(vi))
    swapped = score_frame(other, vi, _zero_flow(vi))
    # Measured at max_side_px 160 on these six pairs: aligned 0.25-0.77, unrelated 0.04-0.32
    # (absolute levels depend on the scene; the drop for the same scene does not).
    assert aligned.alignment > swapped.alignment + 0.1, (aligned, swapped)
    assert aligned.coverage == 1.0 and aligned.flow_px == 0.0


def test_a_shifted_ir_scores_lower_and_the_flow_that_undoes_it_is_measured_in_pixels():
    ir, vi = _read_pair(ROOT / 'samples', 'FLIR_04229')
    shift = 48  # 9 % of the 534 px width; the score falls slowly with small shifts
    moved = np.zeros_like(ir)
    moved[:, shift:] = ir[:, :-shift]  # the IR camera looks 48 px further left
    unregistered = score_frame(moved, vi, _zero_flow(vi))
    aligned = score_frame(ir, vi, _zero_flow(vi))
    assert unregistered.alignment < aligned.alignment - 0.15  # measured 0.51 vs 0.74
    # A registration that undoes the shift: registered(p) = moved(p + (48, 0)).
    flow = _zero_flow(vi)
    flow[..., 0] = shift
    registered = np.zeros_like(ir)
    registered[:, :-shift] = moved[:, shift:]
    repaired = score_frame(registered, vi, flow)
    assert repaired.alignment > aligned.alignment - 0.05
    assert repaired.flow_px == pytest.approx(shift, abs=1e-3)
    assert repaired.flow_nonaffine_px == pytest.approx(0.0, abs=1e-3)
    # The right 48 px sample outside the IR: they are left out of the score.
    assert repaired.coverage == pytest.approx(1.0 - shift / vi.shape[1], abs=0.02)
    # Relative to a reference (e.g. a calibration prior) that already shifts by 12 px.
    assert score_frame(registered, vi, flow, reference_flow_px=flow).flow_px == pytest.approx(
        0.0, abs=1e-6)


def test_a_real_model_registration_scores_its_own_pair_above_an_unrelated_one():
    from tarfuse_ros.core.engine import FusionEngine
    engine = FusionEngine(None, device='cpu')
    ir, vi = _read_pair(ROOT / 'samples', 'FLIR_04229')
    other, _ = _read_pair(ROOT / 'samples', 'FLIR_00122')
    size = (256, 128)
    ir, vi, other = (cv2.resize(x, size, interpolation=cv2.INTER_AREA) for x in (ir, vi, other))
    aligned = engine.infer(ir, vi)
    swapped = engine.infer(other, vi)
    good = score_frame(aligned.registered_ir, vi, aligned.flow_px)
    bad = score_frame(swapped.registered_ir, vi, swapped.flow_px)
    assert good.alignment > bad.alignment + 0.1, (good, bad)
    assert np.isfinite(good.flow_px) and good.flow_px >= good.flow_nonaffine_px >= 0


def test_the_affine_fit_recovers_an_affine_flow_and_leaves_a_local_bump():
    height, width = 40, 50
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    truth = np.array([[0.02, -0.01, 3.0], [0.005, 0.03, -2.0]])
    flow = np.stack((truth[0, 0] * xs + truth[0, 1] * ys + truth[0, 2],
                     truth[1, 0] * xs + truth[1, 1] * ys + truth[1, 2]), axis=-1)
    model, fitted = fit_affine_flow(flow)
    np.testing.assert_allclose(model, truth, atol=1e-9)
    np.testing.assert_allclose(fitted, flow, atol=1e-9)
    bump = flow.copy()
    bump[10:20, 10:20, 0] += 5.0
    _, fitted = fit_affine_flow(bump)
    assert np.abs(bump - fitted).max() > 3.0
    weights = np.ones((height, width))
    weights[10:20, 10:20] = 0.0  # the bump left out: the affine part is exact again
    model, _ = fit_affine_flow(bump, weights)
    np.testing.assert_allclose(model, truth, atol=1e-9)
    with pytest.raises(ValueError, match='at least 3'):
        fit_affine_flow(flow, np.zeros((height, width)))


def test_bad_inputs_raise_with_the_shapes():
    ir, vi = _read_pair(ROOT / 'samples', 'FLIR_04229')
    with pytest.raises(ValueError, match='share H and W'):
        score_frame(ir[:-1], vi, _zero_flow(vi))
    with pytest.raises(ValueError, match='share H and W'):
        score_frame(ir, vi, _zero_flow(vi)[..., :1])
    with pytest.raises(ValueError, match='max_side_px'):
        score_frame(ir, vi, _zero_flow(vi), max_side_px=4)
    flow = _zero_flow(vi)
    flow[3, 4, 0] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        score_frame(ir, vi, flow)
    with pytest.raises(ValueError, match='HxWx3'):
        visible_luma(np.zeros((4, 4, 2), np.uint8))


def test_the_luma_of_any_visible_type_gives_the_same_score():
    ir, vi = _read_pair(ROOT / 'samples', 'FLIR_00993')
    flow = _zero_flow(vi)
    reference = score_frame(ir, vi, flow).alignment
    grey = cv2.cvtColor(vi, cv2.COLOR_BGR2GRAY)
    for visible in (grey, grey[:, :, None], vi.astype(np.uint16) * 257,
                    vi.astype(np.float32) / 255.0, cv2.cvtColor(vi, cv2.COLOR_BGR2BGRA)):
        assert score_frame(ir, visible, flow).alignment == pytest.approx(reference, abs=0.01)


def _score(alignment, flow_px=1.0):
    return FrameScore(alignment=alignment, flow_px=flow_px, flow_nonaffine_px=0.5,
                      coverage=1.0, cost_ms=2.0)


def test_the_window_waits_until_full_then_warns_with_the_numbers_and_clears_again():
    health = RegistrationHealth(HealthSettings(window=3, min_alignment=0.3))
    for value in (0.6, 0.5):
        health.add(_score(value))
        assert health.summary().state == 'waiting'
    health.add(_score(0.55))
    summary = health.summary()
    assert (summary.state, summary.problems, summary.samples) == ('ok', (), 3)
    assert summary.alignment_mean == pytest.approx(0.55)
    health.add(_score(0.05))  # one bad frame: the mean (0.367) is still above 0.3
    assert health.summary().state == 'ok'
    health.add(_score(0.1))   # the IR swapped: (0.55 + 0.05 + 0.1) / 3 = 0.233
    summary = health.summary()
    assert summary.state == 'warn'
    problem, = summary.problems
    assert '0.233' in problem and 'min 0.050' in problem and '0.300' in problem
    assert 'registration_health.min_alignment' in problem
    health.add(_score(0.6))
    assert health.summary().state == 'warn'  # (0.05 + 0.1 + 0.6) / 3 = 0.25
    health.add(_score(0.6))   # (0.1 + 0.6 + 0.6) / 3 = 0.433: cleared
    assert health.summary().state == 'ok'
    values = health.summary().as_dict()
    assert values['registration_health'] == 'ok'
    assert values['registration_samples'] == '3/3'
    assert values['registration_frames_scored'] == 7
    assert values['registration_alignment_last'] == pytest.approx(0.6)


def test_a_growing_residual_flow_warns_only_when_a_limit_is_set():
    health = RegistrationHealth(HealthSettings(window=2, min_alignment=0.0))
    for _ in range(2):
        health.add(_score(0.5, flow_px=40.0))
    assert health.summary().state == 'ok'  # max_flow_px 0: the flow test is off
    health.update_settings(max_flow_px=10.0)
    summary = health.summary()
    assert summary.state == 'warn'
    problem, = summary.problems
    assert '40.0 px' in problem and 'registration_health.max_flow_px 10 px' in problem
    # The limit as set: 0.04 read '0.0 px' (0 turns the test off) beside a flow of 0.1 px.
    small = RegistrationHealth(HealthSettings(window=1, min_alignment=0.0, max_flow_px=0.04))
    small.add(_score(0.5, flow_px=0.1))
    above, = small.summary().problems
    assert 'is above registration_health.max_flow_px 0.04 px' in above, above
    health.add(_score(0.5, flow_px=2.0))
    health.add(_score(0.5, flow_px=2.0))
    assert health.summary().state == 'ok'


def test_every_nth_frame_is_scored_and_a_smaller_window_keeps_the_newest_scores():
    health = RegistrationHealth(HealthSettings(every_n=3, window=4))
    assert [health.due() for _ in range(7)] == [True, False, False, True, False, False, True]
    for value in (0.1, 0.2, 0.3, 0.4):
        health.add(_score(value))
    health.update_settings(window=2)
    summary = health.summary()
    assert summary.samples == 2 and summary.alignment_mean == pytest.approx(0.35)
    assert summary.frames_seen == 7 and summary.frames_scored == 4
    health.reset()
    assert health.summary().state == 'waiting'


def test_observe_scores_a_real_frame_into_the_window():
    ir, vi = _read_pair(ROOT / 'samples', 'FLIR_04229')
    health = RegistrationHealth(HealthSettings(window=1, max_side_px=96))
    score = health.observe(ir, vi, _zero_flow(vi))
    summary = health.summary()
    assert summary.state == 'ok' and summary.alignment_last == score.alignment
    assert np.isfinite(summary.cost_ms_mean) and summary.cost_ms_mean > 0


@pytest.mark.parametrize('changes, name', [
    ({'window': 0}, 'window'), ({'every_n': 1.5}, 'every_n'), ({'max_side_px': 8}, 'max_side'),
    ({'min_alignment': 1.5}, 'min_alignment'), ({'max_flow_px': -1.0}, 'max_flow_px'),
    ({'max_flow_px': float('inf')}, 'max_flow_px')])
def test_settings_out_of_range_are_refused_by_name(changes, name):
    with pytest.raises(ValueError, match=name):
        HealthSettings(**changes)
    health = RegistrationHealth()
    with pytest.raises(ValueError, match=name):
        health.update_settings(**changes)
    assert health.settings == HealthSettings()

"""The IR time offset from two cameras' motion signals (tarfuse_ros.core.time_offset)."""

from dataclasses import replace

import numpy as np
import pytest
from tarfuse_ros.core.time_offset import estimate_problem, estimate_time_offset
from tarfuse_ros.core.time_offset import estimate_warnings, frame_for_motion, MotionSignal
from tarfuse_ros.core.time_offset import motion_signal


def stop_and_go(seed, duration=20.0):
    """Return ``speed(t)``: a rig's speed (px/s) that starts and stops at random instants."""
    rng = np.random.default_rng(seed)
    edges = np.cumsum(rng.uniform(0.3, 1.5, int(duration) + 8)) - 2.0
    speeds = np.where(rng.random(len(edges)) < 0.35, 0.0, rng.uniform(10.0, 100.0, len(edges)))

    def speed(t):
        return speeds[np.clip(np.searchsorted(edges, t), 0, len(speeds) - 1)]
    return speed


def sampled(speed, rate, start, duration=20.0, latency=0.0):
    """Return the motion signal of a camera at ``rate`` Hz seeing ``speed``, stamped late.

    The change between two frames is the mean speed over their interval (a fine integral).
    """
    captures = start + np.arange(0.0, duration, 1.0 / rate)
    fine = np.linspace(captures[0], captures[-1], 200 * len(captures))
    distance = np.concatenate([[0.0], np.cumsum(speed(fine[1:]) * np.diff(fine))])
    moved = np.diff(np.interp(captures, fine, distance))
    return MotionSignal(0.5 * (captures[1:] + captures[:-1]) + latency,
                        moved / np.diff(captures), 2.5 / rate)


def test_frame_for_motion_ignores_gain_and_level_and_reads_a_constant_image_as_zero():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (120, 200)).astype(np.float32)
    frame = frame_for_motion(image)
    assert frame.shape == (96, 160)  # long side 160, area-shrunk
    assert abs(float(frame.mean())) < 1e-5 and float(frame.std()) == pytest.approx(1, abs=1e-4)
    counts = (image * 40 + 3000).astype(np.uint16)  # a 16-bit camera's gain and level
    np.testing.assert_allclose(frame_for_motion(counts), frame, atol=2e-3)
    colour = np.repeat(image[..., None], 3, axis=2)
    np.testing.assert_allclose(frame_for_motion(colour), frame, atol=1e-4)
    assert not frame_for_motion(np.full((50, 50), 7, np.uint8)).any()
    with pytest.raises(ValueError, match=r'shape \(2, 3, 4, 5\)'):
        frame_for_motion(np.zeros((2, 3, 4, 5)))


def test_the_change_of_a_frame_is_placed_at_the_middle_of_its_interval_per_second():
    frames = [np.zeros((4, 4), np.float32), np.ones((4, 4), np.float32),
              np.full((4, 4), 3.0, np.float32)]
    signal = motion_signal([10.0, 10.5, 10.7], frames)
    np.testing.assert_allclose(signal.times_s, [10.25, 10.6])
    np.testing.assert_allclose(signal.values, [1 / 0.5, 2 / 0.2])


def test_a_repeated_frame_is_left_out_and_a_gap_is_not_read_across():
    rng = np.random.default_rng(1)
    frames = [rng.normal(size=(8, 8)).astype(np.float32) for _ in range(12)]
    frames[4] = frames[3].copy()  # a frozen image (flat-field correction)
    stamps = np.arange(12) * 0.1
    signal = motion_signal(stamps, frames)
    assert 0.35 not in np.round(signal.times_s, 3)  # 3 -> 4: the image repeated
    assert 0.4 in np.round(signal.times_s, 3)  # 3 -> 5 is one interval of 0.2 s
    stamps[8:] += 1.0  # a second without images: frames lost
    signal = motion_signal(stamps, frames)
    assert not np.any((signal.times_s > 0.75) & (signal.times_s < 1.75))
    assert not signal.readable(np.array([1.2]))[0] and signal.readable(np.array([0.5]))[0]


def test_an_ir_camera_stamped_late_gives_a_negative_offset_as_the_node_takes_it():
    # sync.infrared_time_offset is added to the IR stamps: -0.06 for IR stamped 60 ms late.
    speed = stop_and_go(seed=3)
    visible = sampled(speed, 30.0, start=0.004)
    for latency in (0.06, -0.025, 0.21):
        infrared = sampled(speed, 9.0, start=0.031, latency=latency)
        estimate = estimate_time_offset(visible, infrared)
        assert estimate.offset_s == pytest.approx(-latency, abs=0.004), latency
        assert estimate.correlation > 0.9
        assert estimate_problem(estimate, 0.5) is None
        assert len(estimate.window_offsets_s) == 3
        assert estimate.window_spread_s() < 0.02
        assert estimate_warnings(estimate) == []


def test_ir_stamps_drifting_140_ms_are_named_with_the_offsets_and_times_of_both_ends():
    # IR stamps drifting 7 ms a second over 20 s: the parts peaked 101 ms apart, under the
    # 9 Hz IR's frame interval (111 ms), and no note said that one offset cannot pair them.
    speed = stop_and_go(seed=3)
    steady = sampled(speed, 9.0, start=0.031, latency=0.06)
    drifting = MotionSignal(steady.times_s + 0.007 * steady.times_s, steady.values,
                            steady.max_gap_s)
    estimate = estimate_time_offset(sampled(speed, 30.0, start=0.004), drifting)
    assert estimate_problem(estimate, 0.5) is None
    first, last = estimate.window_offsets_s[0], estimate.window_offsets_s[-1]
    assert first > estimate.window_offsets_s[1] > last  # later and later IR stamps
    (note,) = estimate_warnings(estimate)
    assert note.startswith(f'the offset drifts through the recording: {first:+.3f} s in its '
                           f'part 0.0-6.6 s, {last:+.3f} s in its part 13.3-19.9 s '
                           f'({1000 * (first - last):.0f} ms apart, more than the 0.05 s'), note
    assert 'a fixed offset cannot pair the whole recording' in note
    assert estimate_warnings(estimate, tolerance_s=0.2) == []  # 130 ms: within 0.2 s


def test_parts_that_disagree_back_and_forth_are_not_named_a_drift():
    speed = stop_and_go(seed=3)
    estimate = estimate_time_offset(sampled(speed, 30.0, start=0.004),
                                    sampled(speed, 9.0, start=0.031, latency=0.06))
    # The middle part off by 120 ms (too little motion there, a chance peak): first and last
    # agree, so the offset does not drift.
    offsets = (-0.06, 0.06, -0.06)
    assert estimate_warnings(replace(estimate, window_offsets_s=offsets))[0].startswith(
        'the parts of the recording disagree by 120 ms')
    # One way, but 40 ms from the first part to the last: within the 50 ms the node pairs in.
    for offsets, drifts in (((-0.06, -0.08, -0.1), False), ((-0.06, -0.09, -0.12), True)):
        notes = estimate_warnings(replace(estimate, window_offsets_s=offsets))
        assert any('drifts' in note for note in notes) == drifts, offsets


def test_the_estimate_does_not_depend_on_which_camera_is_faster():
    speed = stop_and_go(seed=4)
    for ir_rate, vi_rate in ((9.0, 30.0), (30.0, 9.0), (15.0, 15.0)):
        estimate = estimate_time_offset(sampled(speed, vi_rate, start=0.01),
                                        sampled(speed, ir_rate, start=0.05, latency=0.04))
        assert estimate.offset_s == pytest.approx(-0.04, abs=0.004), (ir_rate, vi_rate)


def test_motion_without_structure_is_refused_with_the_reason():
    steady = sampled(lambda t: np.full_like(t, 50.0) + 0.5 * np.sin(0.3 * t), 30.0, 0.0)
    estimate = estimate_time_offset(steady, sampled(lambda t: np.full_like(t, 50.0)
                                                    + 0.5 * np.sin(0.3 * t), 9.0, 0.02))
    assert 'hardly changes with the offset' in estimate_problem(estimate, 0.5)
    rng = np.random.default_rng(5)
    noise = MotionSignal(np.arange(600) / 30.0, rng.normal(size=600), 0.1)
    other = MotionSignal(np.arange(180) / 9.0, rng.normal(size=180), 0.3)
    assert 'too little motion' in estimate_problem(estimate_time_offset(noise, other), 0.5)


def test_a_periodic_motion_is_refused_as_ambiguous():
    def swaying(t):  # a rig swaying at 2.5 Hz: offsets 0.4 s apart fit alike
        return 50.0 + 40.0 * np.sin(2 * np.pi * 2.5 * t)
    estimate = estimate_time_offset(sampled(swaying, 30.0, 0.0),
                                    sampled(swaying, 30.0, 0.01, latency=0.05))
    assert 'another offset fits nearly as well' in estimate_problem(estimate, 0.5)


def test_a_peak_at_the_edge_of_the_search_asks_for_a_larger_max_offset():
    speed = stop_and_go(seed=6)
    estimate = estimate_time_offset(sampled(speed, 30.0, 0.0),
                                    sampled(speed, 9.0, 0.02, latency=0.4), max_offset_s=0.2)
    assert 'raise --max-offset' in estimate_problem(estimate, 0.2)


@pytest.mark.parametrize('kwargs, words', [
    ({'max_offset_s': 0.0}, 'max_offset_s must be in'),
    ({'max_offset_s': 1.5}, 'max_offset_s must be in'),
    ({'max_offset_s': float('nan')}, 'max_offset_s must be in'),
    ({'windows': -1}, 'windows must be >= 0'),
    ({'step_s': 0.0}, 'step_s must be in'),
])
def test_bad_arguments_raise_naming_them(kwargs, words):
    signal = sampled(stop_and_go(seed=7), 30.0, 0.0, duration=3.0)
    with pytest.raises(ValueError, match=words):
        estimate_time_offset(signal, signal, **kwargs)


def test_too_few_frames_are_refused():
    with pytest.raises(ValueError, match='needs 3'):
        motion_signal([0.0, 0.1, 0.1], [np.zeros((2, 2))] * 3)


def test_a_camera_set_to_another_size_mid_recording_leaves_out_only_that_change():
    # A camera reconfigured (binning, region of interest) was refused as a whole.
    rng = np.random.default_rng(8)
    frames = [rng.normal(size=(6, 8) if index < 5 else (3, 8)).astype(np.float32)
              for index in range(10)]
    signal = motion_signal(np.arange(10) * 0.1, frames)
    np.testing.assert_allclose(signal.times_s, [0.05, 0.15, 0.25, 0.35, 0.55, 0.65, 0.75,
                                                0.85])
    assert signal.readable(np.array([0.45]))[0]  # one change left out, as a lost frame's


def test_a_part_of_the_recording_is_not_read_across_a_gap_of_the_visible_camera():
    # A part of the recording was read across a 5 s gap of the visible stream (interpolating
    # over it): its peak correlation fell to 0.51 and its estimate 20 ms off.
    speed = stop_and_go(seed=9)
    full = sampled(speed, 30.0, start=0.004)
    keep = (full.times_s < 8.0) | (full.times_s > 13.0)
    visible = MotionSignal(full.times_s[keep], full.values[keep], full.max_gap_s)
    estimate = estimate_time_offset(visible, sampled(speed, 9.0, 0.031, latency=0.06))
    assert estimate.offset_s == pytest.approx(-0.06, abs=0.004)
    np.testing.assert_allclose(estimate.window_offsets_s, -0.06, atol=0.01)
    assert min(estimate.window_correlations) > 0.9


def test_cameras_that_overlap_briefly_are_not_said_not_to_overlap():
    speed = stop_and_go(seed=10)
    visible = sampled(speed, 30.0, start=0.0, duration=6.0)
    infrared = sampled(speed, 9.0, start=5.0, duration=5.0, latency=0.06)  # 1 s together
    problem = estimate_problem(estimate_time_offset(visible, infrared), 0.5)
    assert 'or too little' in problem and 'record both cameras at once' in problem


def _rig_images(seconds, ir_latency=0.06, seed=8):
    """Return ``[(camera, stamp_s, image)]`` of a rig panning over a textured scene, in time.

    A 9 Hz IR and a 30 Hz visible camera see one random texture through a window that moves
    by stop-and-go steps; each image is stamped with its camera's latency.
    """
    import cv2
    rng = np.random.default_rng(seed)
    scene = cv2.GaussianBlur(rng.uniform(0, 255, (400, 600)).astype(np.float32), (0, 0), 3)
    speed = stop_and_go(seed)
    fine = np.arange(0.0, seconds, 0.001)
    position = np.cumsum(speed(fine)) * 0.001 % 200.0
    out = []
    for camera, rate, latency, start in (('ir', 9.0, ir_latency, 0.03), ('vi', 30.0, 0.0, 0.01)):
        for t in start + np.arange(0.0, seconds - start, 1.0 / rate):
            x = float(np.interp(t, fine, position))
            view = cv2.getRectSubPix(scene, (160, 120), (200.0 + x, 200.0))
            out.append((camera, t + latency, view))
    return sorted(out, key=lambda item: item[1])


def test_the_monitor_finds_the_offset_of_a_live_stream_once_its_window_is_full():
    from tarfuse_ros.core.time_offset import OffsetMonitor
    monitor = OffsetMonitor(window_s=10.0)
    images = _rig_images(16.0)
    for camera, stamp, image in images[:len(images) // 2]:
        monitor.add(camera, stamp, image)
    assert monitor.check() is None  # 8 s of 10
    for camera, stamp, image in images[len(images) // 2:]:
        monitor.add(camera, stamp, image)
    assert min(monitor.span_s().values()) > 15.0
    held = max(len(log.changes) for log in monitor._logs.values())
    assert held < 11.2 * 30  # the changes of the window and the search's reach only
    estimate, problem = monitor.check()
    assert problem is None
    assert estimate.offset_s == pytest.approx(-0.06, abs=0.01)
    assert monitor.add('vi', 1.0, images[0][2]) is True  # a bag loop: both start over
    assert monitor.span_s() == {'ir': 0.0, 'vi': 0.0}
    assert monitor.check() is None


def test_the_monitor_gives_no_estimate_once_one_camera_has_stopped():
    # The IR camera stopped at 12 s: the window was read back from its last stamp, so the
    # visible stream's past was estimated again and again, and once the visible images of that
    # past were dropped, over 3 s of them: -0.010 s trusted (the IR is 60 ms late).
    from tarfuse_ros.core.time_offset import OffsetMonitor
    monitor = OffsetMonitor(window_s=8.0)
    checked = []
    for camera, stamp, image in _rig_images(24.0):
        if camera == 'ir' and stamp > 12.0:
            continue
        monitor.add(camera, stamp, image)
        if camera == 'vi' and stamp > 13.6 and len(checked) < 10 * (stamp - 13.6):
            checked.append(monitor.check())
    assert len(checked) > 50
    for estimate, problem in checked:
        assert estimate is None
        assert problem.startswith('no IR images for the last'), problem
        assert 'the IR camera stopped' in problem


def test_the_monitor_trusts_no_offset_of_a_still_scene_in_a_window_of_a_few_frames():
    # A 0.5 s window of a 9 Hz IR camera holds 4 frame intervals: the noise of a still scene
    # correlated above 0.5 at some offset in one check of seven (-0.19 s at 0.80), and two
    # checks in a row warned.
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'benchmarks'))
    import time_offset as simulation
    from tarfuse_ros.core.time_offset import MIN_INTERVALS, OffsetMonitor
    if not simulation.DATA.is_dir():
        pytest.skip(f'{simulation.DATA} is absent (../shared not beside the checkout)')
    ir, vi = simulation.read_pair('00004N')
    case = simulation.Case('still', motion='still', duration=12.0)
    recording = simulation.simulate(case, ir, vi, 1, lambda f: np.clip(f, 0, 255).astype(
        np.uint8), view=(240, 180))
    events = sorted((stamp, camera, frame) for camera in ('ir', 'vi')
                    for stamp, frame in zip(*recording[camera]))
    monitor = OffsetMonitor(window_s=0.5)
    results = []
    for stamp, camera, frame in events:
        monitor.add(camera, stamp, frame)
        if camera == 'vi' and stamp > 2.0:
            results.append(monitor.check())
    assert len(results) > 250
    assert all(result[1] is not None for result in results)
    assert f'fewer than {MIN_INTERVALS}: too few to tell motion from noise' in results[-1][1]


def test_a_fast_camera_is_measured_over_20_ms_at_least_not_frame_to_frame():
    # Two 100 Hz cameras: between frames 10 ms apart the change was mostly noise, and the
    # estimate was refused as 'a periodic motion'.
    from tarfuse_ros.core.time_offset import ChangeLog, MIN_INTERVAL_S
    rng = np.random.default_rng(9)
    log = ChangeLog()
    for stamp in np.arange(0.0, 1.0, 0.01):
        log.add(stamp, rng.normal(size=(8, 8)).astype(np.float32))
    intervals = [end - start for start, end, _ in log.changes]
    assert min(intervals) >= MIN_INTERVAL_S - 1e-9 and max(intervals) < 0.031
    speed = stop_and_go(seed=10)
    estimate = estimate_time_offset(sampled(speed, 100.0, 0.0), sampled(speed, 100.0, 0.003,
                                                                        latency=0.013))
    assert estimate.offset_s == pytest.approx(-0.013, abs=0.004)

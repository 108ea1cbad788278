"""How well `tarfuse-time-offset` finds the IR camera's time offset: simulated rig recordings.

No recording of a real rig with a known offset is at hand, so each case is simulated from one
real aligned pair (`msrs_det`): both cameras look at the pair's scene through a window that
moves as a rig turning and stopping would move the view (stop-and-go pans, random speeds), or
through a still window with one part of the scene (a disc cut from the pair itself, in both
images) crossing it at a varying speed. Each camera renders its frames at its own capture
times (its rate, a little timing noise) and stamps them with its latency; sensor noise is
added. The estimate (`tarfuse_ros.core.time_offset`, as `tarfuse-time-offset` runs it) is
compared with the truth: the visible latency minus the IR latency.

    python benchmarks/time_offset.py --out models/eval/time_offset_synthetic.json

Prints per case the error (ms) of each run, the peak correlation and whether the tool would
accept the estimate (`tarfuse_ros.core.time_offset.estimate_problem`).
"""

import argparse
from dataclasses import dataclass
import json
from pathlib import Path
import platform
import sys
import time

from bench_args import check_outputs, positive_int
import cv2
import numpy as np

DATA = Path(__file__).resolve().parents[2] / 'shared' / 'datasets' / 'msrs_det'
PAIRS = ('00004N', '00055D', '00881N', '01570D')
VIEW = (480, 360)  # px: each simulated camera's frame (a window on the 640x480 pair)


@dataclass(frozen=True)
class Case:
    """One simulated recording's settings (rates in Hz, latencies and times in s)."""

    name: str
    ir_rate: float = 9.0
    vi_rate: float = 30.0
    ir_latency: float = 0.06  # stamp minus capture time
    vi_latency: float = 0.0
    motion: str = 'pan'  # 'pan', 'object', 'constant', 'still'
    ir_scale: float = 1.0  # < 1: the IR sees the central part of the visible view
    freeze_every: float = 0.0  # s between flat-field freezes of the IR (0: none)
    duration: float = 20.0

    @property
    def truth_s(self):
        """The node's ``sync.infrared_time_offset`` for this recording."""
        return self.vi_latency - self.ir_latency


CASES = (
    Case('pan, IR 9 Hz stamped 60 ms late'),
    Case('pan, both 30 Hz, IR stamped 25 ms early', ir_rate=30.0, ir_latency=-0.025),
    Case('pan, IR 9 Hz 80 % view, flat-field freezes, 100 ms late', ir_latency=0.1,
         ir_scale=0.8, freeze_every=6.0),
    Case('still rig, one object crossing, IR 9 Hz 40 ms late', ir_latency=0.04,
         motion='object'),
    Case('constant pan (no structure)', motion='constant'),
    Case('still scene (noise only)', motion='still'),
)


def _stop_and_go(duration, rng, step=0.001):
    """Return ``(times, position)`` of a 1-D stop-and-go motion (px) sampled every ``step`` s."""
    times = np.arange(-1.0, duration + 1.0, step)
    velocity = np.zeros_like(times)
    start = 0
    while start < len(times):
        length = int(rng.uniform(0.4, 1.6) / step)
        speed = 0.0 if rng.random() < 0.35 else rng.uniform(-120.0, 120.0)  # px/s
        velocity[start:start + length] = speed
        start += length
    sigma = int(0.08 / step)  # a rig speeds up and slows down within about 0.1 s
    kernel = np.exp(-0.5 * (np.arange(-3 * sigma, 3 * sigma + 1) / sigma) ** 2)
    velocity = np.convolve(velocity, kernel / kernel.sum(), mode='same')
    return times, np.cumsum(velocity) * step


def _fold(position, reach):
    """Return ``position`` folded into [-reach, reach]: a motion that turns back at the ends.

    (A clipped motion stood still at an end for long stretches: no motion to time.)
    """
    return reach - np.abs(np.mod(position + reach, 4 * reach) - 2 * reach)


class Scene:
    """Renders one aligned pair as two cameras see it at any capture time."""

    def __init__(self, ir, vi, case, rng, view=VIEW):
        self.ir, self.vi, self.case = ir.astype(np.float32), vi.astype(np.float32), case
        self.view = view
        self.rng = rng
        duration = case.duration
        if case.motion in ('pan', 'object'):
            self.times, self.x = _stop_and_go(duration, rng)
            _, self.y = _stop_and_go(duration, rng)
            self.y *= 0.3
        elif case.motion == 'constant':
            self.times = np.arange(-1.0, duration + 1.0, 0.001)
            self.x, self.y = 40.0 * self.times - 40.0, np.zeros_like(self.times)
        else:
            self.times = np.arange(-1.0, duration + 1.0, 0.001)
            self.x = self.y = np.zeros_like(self.times)
        if case.motion == 'pan':  # the view stays on the pair: it turns back at the ends
            self.x, self.y = _fold(self.x, 70.0), _fold(self.y, 50.0)
        if case.motion == 'object':
            height, width = ir.shape[:2]
            self.disc_from = (width // 4, height // 2)
            self.radius = 40
            self.x, self.y = _fold(self.x * 2.0, 200.0), _fold(self.y, 60.0)

    def _position(self, t):
        return float(np.interp(t, self.times, self.x)), float(np.interp(t, self.times, self.y))

    def _with_object(self, image, t):
        dx, dy = self._position(t)
        height, width = image.shape[:2]
        cx, cy = self.disc_from
        out = image.copy()
        size = 2 * self.radius + 1
        patch = cv2.getRectSubPix(image, (size, size), (cx, cy))
        mask = np.zeros((size, size), np.float32)
        cv2.circle(mask, (self.radius, self.radius), self.radius, 1.0, -1)
        if patch.ndim == 3:
            mask = mask[..., None]
        x0, y0 = int(round(width / 2 + dx)) - self.radius, int(round(height / 2 + dy))
        y0 -= self.radius
        if x0 < 0 or y0 < 0 or x0 + size > width or y0 + size > height:
            return out
        region = out[y0:y0 + size, x0:x0 + size]
        out[y0:y0 + size, x0:x0 + size] = mask * (patch + 40.0) + (1 - mask) * region
        return out

    def render(self, camera, t):
        """Return the camera's frame (float32, 0-255 plus noise) captured at time ``t``."""
        image = self.ir if camera == 'ir' else self.vi
        height, width = image.shape[:2]
        if self.case.motion == 'object':
            image, dx, dy = self._with_object(image, t), 0.0, 0.0
        else:
            dx, dy = self._position(t)
        scale = self.case.ir_scale if camera == 'ir' else 1.0
        # out(p) = image(centre + (p - view centre) * (view scale) + motion)
        zoom = scale
        matrix = np.float32([
            [zoom, 0, width / 2 + dx - zoom * self.view[0] / 2],
            [0, zoom, height / 2 + dy - zoom * self.view[1] / 2]])
        # A constant pan runs off the pair: it wraps around (its seams move with the view).
        border = cv2.BORDER_WRAP if self.case.motion == 'constant' else cv2.BORDER_REFLECT
        frame = cv2.warpAffine(image, matrix, self.view,
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=border)
        return frame + self.rng.normal(0.0, 2.0, frame.shape).astype(np.float32)


def capture_times(rate, duration, rng, start):
    """Return a free-running camera's capture times (s): ``1/rate`` apart, 1 ms of noise."""
    times = start + np.arange(0.0, duration, 1.0 / rate)
    return times + rng.normal(0.0, 0.001, len(times))


def simulate(case, ir, vi, seed, to_frame, view=VIEW):
    """Return ``{camera: (stamps_s, frames)}`` of one simulated recording.

    ``to_frame(image)`` turns each rendered frame into what is kept (the motion signal's
    frame for the benchmark, an 8-bit image for a bag); ``view`` is the frames' size (px).
    """
    rng = np.random.default_rng(seed)
    scene = Scene(ir, vi, case, rng, view)
    out = {}
    for camera, rate, latency in (('ir', case.ir_rate, case.ir_latency),
                                  ('vi', case.vi_rate, case.vi_latency)):
        times = capture_times(rate, case.duration, rng, start=rng.uniform(0.0, 1.0 / rate))
        frames, held = [], None
        for t in times:
            frozen = (camera == 'ir' and case.freeze_every
                      and (t % case.freeze_every) < 0.4 and t > 1.0)
            if frozen and held is not None:
                frames.append(held)  # a flat-field correction repeats the last frame
                continue
            held = to_frame(scene.render(camera, t))
            frames.append(held)
        out[camera] = (times + latency, frames)
    return out


def read_pair(stem):
    """Return the aligned pair ``(ir (H, W), vi (H, W, 3))`` of ``msrs_det`` as uint8."""
    ir = cv2.imread(str(DATA / 'ir' / f'{stem}.png'), cv2.IMREAD_GRAYSCALE)
    vi = cv2.imread(str(DATA / 'vi' / f'{stem}.png'), cv2.IMREAD_COLOR)
    if ir is None or vi is None:
        raise FileNotFoundError(f'pair {stem} not found in {DATA}')
    return ir, vi


def run(cases, stems, seeds):
    """Return one result row per case, pair and seed."""
    from tarfuse_ros.core.time_offset import estimate_time_offset, frame_for_motion
    from tarfuse_ros.core.time_offset import motion_signal
    from tarfuse_ros.core.time_offset import estimate_problem as verdict
    from tarfuse_ros.core.time_offset import estimate_warnings
    rows = []
    for case in cases:
        for index, stem in enumerate(stems):
            ir, vi = read_pair(stem)
            for seed in seeds:
                seed = 1000 * index + seed  # each pair its own motions: independent runs
                recording = simulate(case, ir, vi, seed, frame_for_motion)
                started = time.perf_counter()
                estimate = estimate_time_offset(motion_signal(*recording['vi']),
                                                motion_signal(*recording['ir']))
                seconds = time.perf_counter() - started
                problem = verdict(estimate, max_offset_s=0.5)
                error_ms = (None if estimate.offset_s is None
                            else 1000 * (estimate.offset_s - case.truth_s))
                rows.append({'case': case.name, 'pair': stem, 'seed': seed,
                             'truth_s': case.truth_s, 'offset_s': estimate.offset_s,
                             'error_ms': error_ms, 'correlation': estimate.correlation,
                             'runner_up': estimate.runner_up,
                             'window_spread_ms': 1000 * estimate.window_spread_s(0.5, 0.05),
                             'sharpness': estimate.sharpness,
                             'accepted': problem is None, 'problem': problem,
                             'warnings': estimate_warnings(estimate),
                             'estimate_s': seconds})
                print(f'{case.name} | {stem} seed {seed}: error '
                      f'{error_ms if error_ms is None else round(error_ms, 1)} ms, r '
                      f'{estimate.correlation:.3f}, sharpness {estimate.sharpness:.3f}, other '
                      f'peak {estimate.runner_up:.3f}, '
                      f'windows spread {1000 * estimate.window_spread_s(0.5, 0.05):.1f} ms, '
                      f'{"accepted" if problem is None else "refused: " + problem}',
                      flush=True)
    return rows


def summary(rows):
    """Return per case: runs, accepted runs, mean / max |error| (ms) of the accepted ones."""
    out = {}
    for name in dict.fromkeys(row['case'] for row in rows):
        mine = [row for row in rows if row['case'] == name]
        errors = [abs(row['error_ms']) for row in mine if row['accepted']]
        out[name] = {'runs': len(mine), 'accepted': sum(row['accepted'] for row in mine),
                     'mean_abs_error_ms': float(np.mean(errors)) if errors else None,
                     'max_abs_error_ms': float(np.max(errors)) if errors else None,
                     'correlation_median': float(np.median([row['correlation']
                                                            for row in mine]))}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--pairs', nargs='+', default=list(PAIRS), help='msrs_det stems')
    parser.add_argument('--seeds', type=positive_int, default=2, help='runs per case and pair')
    parser.add_argument('--out', type=Path, default=None, help='JSON report')
    args = parser.parse_args(argv)
    check_outputs(parser, out=args.out)
    try:  # every pair read before the first case runs (one missing: one line)
        for stem in args.pairs:
            read_pair(stem)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    cv2.setNumThreads(1)
    started = time.time()
    rows = run(CASES, args.pairs, range(args.seeds))
    table = summary(rows)
    print('\ncase | accepted | mean / max |error| of accepted (ms) | median r')
    for name, row in table.items():
        mean = row['mean_abs_error_ms']
        errors = ('-' if mean is None
                  else f'{mean:.1f} / {row["max_abs_error_ms"]:.1f}')
        print(f'{name} | {row["accepted"]} of {row["runs"]} | {errors} | '
              f'{row["correlation_median"]:.3f}')
    if args.out:
        args.out.write_text(json.dumps({
            'machine': platform.platform(), 'seconds': round(time.time() - started, 1),
            'cases': [case.__dict__ | {'truth_s': case.truth_s} for case in CASES],
            'summary': table, 'runs': rows}, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())

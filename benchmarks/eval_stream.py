#!/usr/bin/env python3
"""One rigid rig, many scenes: the global stage's map kept over a stream of pairs.

A camera rig does not change its misalignment from frame to frame, but the global stage fits
it afresh on every pair, with an error that depends on the scene. ``FusionEngine``'s
``global_every`` / ``global_window`` (the node's ``registration.global_every`` /
``registration.global_window``) fit one pair in ``global_every`` and start every pair from the
elementwise median of the last ``global_window`` fits; ``global_track`` (N) fits the first pair
in full and refines the previous pair's map on each later one with the fine passes alone, with
a full fit every N-th pair kept where it agrees better. This script measures what these do to
the registration error and to the time per pair.

The rig is emulated from aligned pairs: every pair of ``--data`` / ``--split`` (in list order)
has its aligned IR deformed by the *same* field, one seeded draw of
``deform.random_deformation`` with the default ranges (rotation, translation, scale, a 4 px
elastic part) per entry of ``--seeds``, and is fed to one engine per setting, pair by pair
(``FusionEngine.infer``, as the node does). Printed per rig and setting: the mean EPE (px,
against the field's inverse, over the pixels the deformed IR covers), the mean, median and
90th percentile of the engine's model time and total time per pair (ms), and the spread of the
fits held at the end (``FusionEngine.global_map_state``, px; null with fewer than 2); then the
mean over the rigs (of each rig's median and p90 for the times). Frames keep their size
(``msrs_det``: 640x480). Settings are ``EVERYxWINDOW`` (``global_every`` x
``global_window``): ``1x1`` is a fit on every pair alone (the default, as without a stream); or
``trackN`` (``global_track`` N, 1-10000, e.g. ``track10``), whose figures add the engine's
``global_track_state`` counts at the end of each rig's stream (``tracked``, ``fitted``,
``fit_kept``, ``held``; their mean over the rigs in the summary) instead of the spread of the
fits (null). Either may end in ``:P`` (e.g. ``track10:1``, ``1x1:1``): the global stage runs P
fine passes (0-8, ``FusionEngine(fine_passes=P)``, the node's ``registration.fine_passes``)
instead of the model's own, for its full fits and its tracked pairs alike (``trackN:0`` is
refused: tracking runs the fine passes alone).
The aligned pairs' own offsets (``benchmarks/dataset_alignment.py``) are part of each pair's
error either way.

With ``--pan N`` every pair becomes a scene of ``N`` frames, as a camera panning over it would
record them (:func:`pan_frames`: a window of 80 % of the frame's width and height sliding 4 px a
frame to the right and back, the IR and the visible image cut alike): frames of one scene follow
each other as in a video, while the pairs in list order are separate recordings. ``--real``
pans the stored pairs too.

With ``--real`` the pairs are one real rig's unregistered pairs as stored (``cvc14_misaligned``:
25 pairs of the CVC-14 car rig), not deformed, and scored without ground truth: the edge
alignment (``metrics.edge_alignment``, as ``tarfuse-eval`` scores it) of the registered IR
with the visible luma over the pixels it covers, its mean, the unregistered input's, and the
fraction of pairs on which the registered IR beats the unregistered one.

    python benchmarks/eval_stream.py --data msrs_det --split test --threads 2 \
        --settings 1x1 5x1 5x9 track10 --json /tmp/stream.json
"""

import argparse
import sys
import time

from bench_args import check_outputs
import cv2
import numpy as np
from tarfuse_ros.core import data, metrics
from tarfuse_ros.core.checkpoint import load_checkpoint
from tarfuse_ros.core.cpus import machine_facts
from tarfuse_ros.core.deform import DeformConfig, random_deformation
from tarfuse_ros.core.engine import FusionEngine
from tarfuse_ros.core.global_stream import check_stream_settings
from tarfuse_ros.core.images import to_uint8, unit_plane
from tarfuse_ros.core.model.warp import warp
from tarfuse_ros.core.paths import default_weights_path
from tarfuse_ros.evaluation.inputs import covered
from tarfuse_ros.training.datasets import resolve_dataset_dir
import torch

# A sibling script: importable when this one runs from benchmarks/ (or with it on sys.path).
from dataset_alignment import save_figures  # noqa: I100


SETTING_FORMS = ('a setting is EVERYxWINDOW (e.g. 5x9) or trackN (e.g. track10), either '
                 'optionally ending in :P fine passes (e.g. track10:1)')


def parse_setting(text):
    """Return ``('every', every, window)`` or ``('track', n)`` from a setting's text.

    ``'EVERYxWINDOW'`` (EVERY in [1, 10000], WINDOW in [1, 1000]) or ``'trackN'`` (N in
    [1, 10000]); the module docstring says what they set. With a ``':P'`` suffix (P fine
    passes, 0-8) the tuple ends in P: ``('track', 10, 1)`` for ``'track10:1'``.
    """
    if ':' in text:
        base, passes = text.rsplit(':', 1)
        if not (passes.isascii() and passes.isdigit() and int(passes) <= 8):
            raise ValueError(f'P of a setting ending in :P is 0-8 fine passes, got {text!r}')
        setting = parse_setting(base) + (int(passes),)
        track = setting[1] if setting[0] == 'track' else 0
        try:  # trackN:0 (it raised in the engine once the pairs were loaded)
            check_stream_settings(1, 1, track, int(passes))
        except ValueError as exc:
            raise ValueError(f'{text!r}: {exc}') from None
        return setting
    lowered = text.lower()
    if lowered.startswith('track'):
        digits = lowered[len('track'):]
        if not (digits.isascii() and digits.isdigit()):  # no sign, space or other digits
            raise ValueError(f'{SETTING_FORMS}, got {text!r}')
        if not 1 <= int(digits) <= 10000:
            raise ValueError(f'N of trackN must be in [1, 10000], got {text!r}')
        return 'track', int(digits)
    try:
        every, window = (int(v) for v in lowered.split('x'))
    except ValueError:
        raise ValueError(f'{SETTING_FORMS}, got {text!r}') from None
    if not (1 <= every <= 10000 and 1 <= window <= 1000):
        raise ValueError(f'EVERY must be in [1, 10000] and WINDOW in [1, 1000], got {text!r}')
    return 'every', every, window


def setting_name(setting):
    """Return the printed name of a :func:`parse_setting` tuple: ``'5x9'`` or ``'track10'``."""
    size = 2 if setting[0] == 'track' else 3
    name = f'track{setting[1]}' if setting[0] == 'track' else f'{setting[1]}x{setting[2]}'
    return name if len(setting) == size else f'{name}:{setting[size]}'


def make_engine(setting, weights):
    """Return the CPU ``FusionEngine`` of a :func:`parse_setting` tuple."""
    size = 2 if setting[0] == 'track' else 3
    passes = setting[size] if len(setting) > size else None
    if setting[0] == 'track':
        return FusionEngine(weights, device='cpu', global_track=setting[1], fine_passes=passes)
    return FusionEngine(weights, device='cpu', global_every=setting[1],
                        global_window=setting[2], fine_passes=passes)


def pan_frames(ir, vi, count, step=4):
    """Return ``count`` ``(ir, vi)`` crops of one pair, as a camera panning over it records them.

    Args:
        ir, vi: the pair's images, one size ``(H, W)`` (the visible may have channels).
        count: frames (>= 1).
        step: pixels the window moves a frame (fewer where the frame leaves no room).

    Returns:
        list of ``(ir, vi)`` crops of ``(round(0.8 H), round(0.8 W))``, centred vertically; the
        window's left edge moves right by ``step`` a frame for the first half and back.
    """
    height, width = ir.shape[:2]
    rows, cols = round(0.8 * height), round(0.8 * width)
    top, half = (height - rows) // 2, max(count // 2, 1)
    step = min(step, (width - cols) // half)
    lefts = [step * min(t, count - t) for t in range(count)]
    return [(ir[top:top + rows, x:x + cols].copy(), vi[top:top + rows, x:x + cols].copy())
            for x in lefts]


def rig_field(seed, height, width):
    """Return ``(applied, inverse)``: one seeded default deformation, ``(H, W, 2)`` px each."""
    generator = torch.Generator().manual_seed(int(seed))
    applied, inverse = random_deformation(1, height, width, DeformConfig(), generator=generator)
    return (field[0].permute(1, 2, 0).numpy() for field in (applied, inverse))


def deform(ir, applied):
    """Return the uint8 plane ``ir`` warped by the ``(H, W, 2)`` field ``applied``."""
    field = torch.from_numpy(np.ascontiguousarray(applied)).permute(2, 0, 1)[None]
    return to_uint8(warp(torch.from_numpy(unit_plane(ir))[None, None], field)[0, 0].numpy())


def epe_score(inverse, content):
    """Return ``score(result, ir, vi) -> {'epe': px}`` against a rig's known field."""
    def score(result, ir, vi):
        return {'epe': metrics.epe(result.flow_px, inverse, mask=content)}
    return score


def edge_score(result, ir, vi):
    """Return the edge alignment (``metrics.edge_alignment``) of a real pair, before and after.

    ``registered``: the registered IR with the visible luma over the pixels it covers (as
    ``tarfuse-eval`` scores it); ``unregistered``: the stored IR with the visible luma.
    """
    luma = cv2.cvtColor(vi, cv2.COLOR_BGR2GRAY) if vi.ndim == 3 else vi
    return {'edge_alignment': metrics.edge_alignment(result.registered_ir, luma,
                                                     covered(result.flow_px)),
            'edge_alignment_unregistered': metrics.edge_alignment(ir, luma)}


def run_stream(engine, pairs, score):
    """Feed ``pairs`` (uint8 IR, visible) to ``engine`` in order; return per-pair rows.

    Each row: what ``score(result, ir, vi)`` returns, ``model_ms`` and ``total_ms`` (the
    engine's own timings) and ``wall_ms`` (the ``infer`` call).
    """
    rows = []
    for ir, vi in pairs:
        start = time.perf_counter()
        result = engine.infer(ir, vi)
        wall = 1e3 * (time.perf_counter() - start)
        rows.append({**score(result, ir, vi), 'model_ms': result.timings_ms['model'],
                     'total_ms': result.timings_ms['total'], 'wall_ms': wall})
    return rows


def summarise(rows):
    """Return the mean scores and the mean / median / p90 times of a stream's rows."""
    timed = ('model_ms', 'total_ms', 'wall_ms')
    out = {key: float(np.mean([r[key] for r in rows])) for key in rows[0] if key not in timed}
    if 'edge_alignment' in out:
        out['better_than_unregistered_fraction'] = float(np.mean(
            [r['edge_alignment'] > r['edge_alignment_unregistered'] for r in rows]))
    for key in ('model_ms', 'total_ms'):
        values = [r[key] for r in rows]
        out[key + '_mean'] = float(np.mean(values))
        out[key + '_median'] = float(np.median(values))
        out[key + '_p90'] = float(np.percentile(values, 90))
    return out


def _mean(values):
    """Mean of the values that are not None (None when all are)."""
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', default='msrs_det',
                        help='data set folder (ir/, vi/, aligned) or a shared name')
    parser.add_argument('--split', default='test', help='split name or list file')
    parser.add_argument('--weights', default=None, help='checkpoint (default: shipped)')
    parser.add_argument('--settings', nargs='+', default=['1x1', '5x1', '5x9'],
                        help='EVERYxWINDOW (e.g. 5x9) or trackN (e.g. track10) settings of '
                             'the engine, either with an optional :P for P fine passes (e.g. '
                             'track10:1; module docstring; default: %(default)s)')
    parser.add_argument('--seeds', type=int, nargs='+', default=None,
                        help='one emulated rig per seed (default 1 2 3; not with --real)')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads')
    parser.add_argument('--max-pairs', type=int, default=0, help='0 = all')
    parser.add_argument('--real', action='store_true',
                        help='the stored IR is the unregistered input of one real rig (e.g. '
                             'cvc14_misaligned): no field; scored by edge alignment')
    parser.add_argument('--pan', type=int, default=0, metavar='N',
                        help='every pair becomes a scene of N frames of a camera panning over '
                             'it (module docstring; default 0: the pairs as they are)')
    parser.add_argument('--json', default=None, help='also write the figures here')
    args = parser.parse_args(argv)
    try:
        settings = [parse_setting(text) for text in args.settings]
    except ValueError as exc:
        parser.error(str(exc))
    if len(set(settings)) != len(settings):
        parser.error(f'--settings lists a setting twice: {args.settings}')
    if args.real and args.seeds is not None:
        parser.error('--real runs the stored pairs of one real rig: no --seeds')
    args.seeds = args.seeds or [1, 2, 3]
    if args.threads < 1 or args.max_pairs < 0 or not 0 <= args.pan <= 1000:
        parser.error('need --threads >= 1, --max-pairs >= 0 and --pan in [0, 1000]')
    check_outputs(parser, json=args.json)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    try:  # a data set, split or checkpoint not found, an unreadable image: one line
        dataset_dir = resolve_dataset_dir(args.data)
        stems = list(data.read_split(dataset_dir, args.split))[:args.max_pairs or None]
        loaded = [data.load_pair(dataset_dir, stem) for stem in stems]
        load_checkpoint(args.weights or default_weights_path())
    except ValueError as exc:
        parser.error(str(exc))
    if not stems:
        parser.error(f'{args.data} {args.split}: no pair to stream')
    size = loaded[0][1].shape[:2]
    if any(vi.shape[:2] != size or ir.shape[:2] != size for ir, vi in loaded):
        parser.error(f'{args.data} {args.split}: the pairs differ in size; a rig streams '
                     'frames of one size (pick a split whose frames share one)')
    aligned = [(cv2.cvtColor(ir, cv2.COLOR_BGR2GRAY) if ir.ndim == 3 else ir, vi)
               for ir, vi in loaded]
    if args.pan:
        aligned = [frame for ir, vi in aligned for frame in pan_frames(ir, vi, args.pan)]
        stems = [f'{stem}@{index}' for stem in stems for index in range(args.pan)]
        size = aligned[0][1].shape[:2]
    engines = {setting: make_engine(setting, args.weights) for setting in settings}
    rows, figures = [], {}
    for seed in [None] if args.real else args.seeds:
        if seed is None:
            pairs, score, rig = aligned, edge_score, {'rig': 'real'}
            print('real rig (stored IR unregistered)', flush=True)
        else:
            applied, inverse = rig_field(seed, *size)
            content = covered(applied)
            pairs = [(deform(ir, applied), vi) for ir, vi in aligned]
            score = epe_score(inverse, content)
            rig = {'rig_seed': seed, 'unregistered_epe': metrics.epe(
                np.zeros_like(inverse), inverse, mask=content)}
            print(f'rig {seed}: unregistered EPE {rig["unregistered_epe"]:.2f} px', flush=True)
        for setting, engine in engines.items():
            engine.reset_global_maps()
            stream = run_stream(engine, pairs, score)
            name = setting_name(setting)
            summary = summarise(stream)
            # How far the fits held at the end lie from the map in use (global_map_state).
            summary['final_spread_px'] = engine.global_map_state()[1]
            if setting[0] == 'track':  # what tracking did over this rig's stream
                summary.update(engine.global_track_state())
            figures.setdefault(name, []).append(summary)
            rows.append({**rig, 'setting': name, **summary,
                         'pairs': [{'stem': stem, **row} for stem, row in zip(stems, stream)]})
            spread = summary['final_spread_px']
            quality = (f'edge alignment {summary["edge_alignment"]:.4f} (unregistered '
                       f'{summary["edge_alignment_unregistered"]:.4f})' if args.real
                       else f'EPE {summary["epe"]:.2f} px')
            if setting[0] == 'track':
                label = f'  {name}'
                tail = ('tracked {tracked}, fitted {fitted} (kept over the track '
                        '{fit_kept}), held {held}').format(**summary)
            else:
                label = f'  every {setting[1]}, window {setting[2]}' + (
                    f', {setting[3]} fine pass(es)' if len(setting) > 3 else '')
                tail = ('spread of the fits '
                        + ('n/a' if spread is None else f'{spread:.2f} px'))
            print(f'{label}: {quality}, model mean '
                  f'{summary["model_ms_mean"]:.0f} ms, median '
                  f'{summary["model_ms_median"]:.0f} ms (p90 '
                  f'{summary["model_ms_p90"]:.0f}), total {summary["total_ms_median"]:.0f} ms '
                  f'(p90 {summary["total_ms_p90"]:.0f}), {tail}', flush=True)
    summary = {'data': args.data, 'split': args.split, 'pairs': len(stems),
               'frame': [size[1], size[0]], 'threads': args.threads, 'machine': machine_facts(),
               'pan_frames': args.pan,
               'weights': args.weights or 'shipped default',
               'settings': {name: {key: _mean([f[key] for f in values]) for key in values[0]}
                            for name, values in figures.items()}}
    if not args.real:
        summary['rig_seeds'] = args.seeds
        summary['unregistered_epe'] = float(np.mean(
            [r['unregistered_epe'] for r in rows if r['setting'] == rows[0]['setting']]))
    save_figures(summary, rows, args.json)
    return 0


if __name__ == '__main__':
    sys.exit(main())

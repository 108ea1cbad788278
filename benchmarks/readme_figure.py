"""The README picture: one row of four panels per IR / visible pair.

Per pair: the unregistered IR, the registered IR, the visible image and the fused image with
detections, side by side. The IR of each pair is misaligned with its data set's ground-truth
field where it has one (MSRS ``synthetic_misaligned``), else with the seeded synthetic
deformation of ``tarfuse-eval`` (:func:`tarfuse_ros.evaluation.inputs.deform_pair`), so the
picture shows what the evaluation measures. Run from the repository root::

    python benchmarks/readme_figure.py --out docs/demo_fused.png --pair roadscene:FLIR_00122 \
        --pair msrs_det:00004N
"""

import argparse
import sys

import cv2
import numpy as np
from tarfuse_ros.core import data, drawing
from tarfuse_ros.core.engine import FusionEngine
from tarfuse_ros.evaluation.inputs import deform_pair
from tarfuse_ros.training.datasets import resolve_dataset_dir
import torch

TITLES = ('IR (unregistered input)', 'IR registered by the model', 'visible',
          'fused + detections')


def _titled(image, title, height):
    image = drawing.as_bgr8(image)
    scale = height / image.shape[0]
    image = cv2.resize(image, (round(image.shape[1] * scale), height),
                       interpolation=cv2.INTER_AREA)
    band = np.zeros((28, image.shape[1], 3), np.uint8)
    cv2.putText(band, title, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1,
                cv2.LINE_AA)
    return np.vstack((band, image))


def pair_row(engine, spec, height, seed):
    """Return the four-panel BGR row of one ``set:stem`` pair."""
    name, _, stem = spec.rpartition(':')
    dataset_dir = resolve_dataset_dir(name)
    ir, vi = data.load_pair(dataset_dir, stem)
    if ir.ndim == 3:
        ir = cv2.cvtColor(ir, cv2.COLOR_BGR2GRAY)
    try:
        deformed = deform_pair(dataset_dir, stem, ir, 'dataset', seed, (1.0, 1.0))[0]
    except (ValueError, OSError):  # no ground-truth field for this pair
        deformed = deform_pair(dataset_dir, stem, ir, 'synthetic', seed, (1.0, 1.0))[0]
    result = engine.infer(deformed, vi)
    fused = drawing.draw_detections(drawing.as_bgr8(result.fused), result.detections)
    panels = (deformed, result.registered_ir, vi, fused)
    return np.hstack([_titled(p, t, height) for p, t in zip(panels, TITLES)])


def _pair_spec(text):
    """Return ``text`` when it is ``SET:STEM`` with both parts given (argparse type)."""
    name, sep, stem = text.rpartition(':')
    if not sep or not name or not stem:
        raise argparse.ArgumentTypeError(f'give SET:STEM (e.g. roadscene:FLIR_00122), got '
                                         f'{text!r}')
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True, help='PNG to write')
    parser.add_argument('--pair', action='append', required=True, type=_pair_spec,
                        help='SET:STEM (a data set folder or shared name, and a pair); repeat')
    parser.add_argument('--weights', default=None, help='checkpoint (default: shipped)')
    parser.add_argument('--height', type=int, default=240, help='panel height in pixels')
    parser.add_argument('--seed', type=int, default=0, help='seed of synthetic deformations')
    args = parser.parse_args(argv)
    if args.height < 32:
        parser.error(f'--height must be >= 32 pixels, got {args.height}')
    if not cv2.haveImageWriter(args.out):
        parser.error(f'--out {args.out}: OpenCV writes no image of that extension (give .png)')
    torch.set_num_threads(2)
    try:  # a checkpoint, data set or pair not found: one line
        engine = FusionEngine(args.weights, device='cpu')
        rows = [pair_row(engine, spec, args.height, args.seed) for spec in args.pair]
    except ValueError as exc:
        parser.error(str(exc))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    if not cv2.imwrite(args.out, np.vstack(rows)):
        parser.error(f'could not write {args.out}')
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

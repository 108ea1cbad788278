#!/usr/bin/env python3
"""Write a copy of an aligned IR / visible set at another camera resolution, for tarfuse-eval.

The registration issue's large-frame goal is set at 1280x1024, and no set here is that large
(M3FD's four samples are 1024x768). This script resizes both images of every pair of a split
to ``--size`` (OpenCV ``INTER_CUBIC`` when enlarging, ``INTER_AREA`` when shrinking; the aspect
ratio follows the size given), copies ``classes.txt`` and the YOLO label files (normalised
coordinates: unchanged by a resize of the whole frame) and writes a README that names the
source and the resize, so that ``tarfuse-eval --data OUT --split all --deform synthetic`` scores
the seeded synthetic fields at that resolution. Only for aligned sets: a set's own
ground-truth fields (``disp/``, ``synthetic_misaligned/``) are not resized and not copied.

An enlarged frame holds no more detail than its source, so the figures measure the geometry
at that size (displacements of rotations and scales grow with the frame, the global stage
starts on the frame halved above 640 px), not a sharper camera.

    python benchmarks/resized_set.py --data m3fd_samples --size 1280x1024 --out /tmp/m3fd_1280
    tarfuse-eval --data /tmp/m3fd_1280 --split all --deform synthetic --seed 0 --out /tmp/ev
"""

import argparse
from pathlib import Path
import shutil
import sys

import cv2
from tarfuse_ros.core import data
from tarfuse_ros.training.datasets import resolve_dataset_dir


def parse_size(text):
    """Return ``(width, height)`` from ``'WxH'``; raise ``argparse.ArgumentTypeError``."""
    try:
        width, height = (int(part) for part in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must be WxH, e.g. 1280x1024, got {text!r}')
    if width < 16 or height < 16:
        raise argparse.ArgumentTypeError(f'size must be at least 16x16, got {text!r}')
    return width, height


def resize(image, size):
    """Return ``image`` resized to ``size`` = (width, height): cubic up, area down."""
    enlarge = size[0] * size[1] >= image.shape[0] * image.shape[1]
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC if enlarge else cv2.INTER_AREA)


def write_resized_set(source, split, size, out):
    """Write the resized copy of ``source``'s ``split`` into ``out``; return the stems written.

    Raises:
        ValueError: ``out`` exists and is not empty, or the split has no pair.
        FileNotFoundError: a pair's image is missing.

    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f'{out} exists and is not empty: give a new folder')
    stems = data.read_split(source, split)
    if not stems:
        raise ValueError(f'{source}: split {split!r} has no pair')
    for sub in ('ir', 'vi', 'labels'):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for stem in stems:
        for sub, path in zip(('ir', 'vi'), data.pair_files(source, stem)):
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise FileNotFoundError(f'cannot read {path}')
            cv2.imwrite(str(out / sub / (stem + '.png')), resize(image, size))
        labels = data.label_file(source, stem)
        if labels.is_file():
            shutil.copyfile(labels, out / 'labels' / labels.name)
    classes = Path(source) / 'classes.txt'
    if classes.is_file():
        shutil.copyfile(classes, out / 'classes.txt')
    (out / 'README.md').write_text(
        f'# {Path(source).name} resized to {size[0]}x{size[1]}\n\n'
        f'Written by benchmarks/resized_set.py from `{source}` (split `{split}`, '
        f'{len(stems)} pairs): both images of each pair resized to {size[0]}x{size[1]} '
        f'(cubic when enlarging, area when shrinking), YOLO labels and classes.txt copied. '
        f"Licence and provenance: the source set's README. Not a data set of its own: do not "
        f'redistribute or train on it.\n')
    return stems


def main(argv=None):
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', required=True, help='aligned set (name under the shared '
                        'datasets or a folder)')
    parser.add_argument('--split', default='all', help="split name or list file (default 'all')")
    parser.add_argument('--size', required=True, type=parse_size, help='WxH, e.g. 1280x1024')
    parser.add_argument('--out', required=True, help='new output folder')
    args = parser.parse_args(argv)
    try:
        source = resolve_dataset_dir(args.data)
        stems = write_resized_set(source, args.split, args.size, args.out)
    except (OSError, ValueError) as exc:
        print(f'resized_set: {exc}', file=sys.stderr)
        return 1
    print(f'{len(stems)} pairs of {source} at {args.size[0]}x{args.size[1]} -> {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

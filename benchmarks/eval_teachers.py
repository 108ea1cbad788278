"""Score only the COCO teachers on a labelled split, as ``tarfuse-eval --teacher`` scores them.

Usage: python benchmarks/eval_teachers.py --data DIR [--split NAME|FILE ...] [--teacher yolov8n]
[--teacher yolox] [--max-side PX] [--out FILE.json]

The same images (``evaluation.inputs.prepare``), label mapping, NMS settings and AP code
(:mod:`tarfuse_ros.evaluation.teachers`, :mod:`tarfuse_ros.evaluation.detection`) as the
teacher rows of ``tarfuse-eval``, without running the model: a quick reference when only the
teachers' figures are wanted. Several ``--split`` are intersected (e.g. ``test`` and
``det_labelled``). Prints one markdown row per teacher and source.
"""

import argparse
import json
from pathlib import Path
import sys

from bench_args import check_outputs
from tarfuse_ros.core import data
from tarfuse_ros.evaluation import inputs
from tarfuse_ros.evaluation.options import EvalOptions
from tarfuse_ros.evaluation.teachers import load_teacher, SOURCES, TeacherReference
from tarfuse_ros.training.datasets import resolve_dataset_dir

CLASS_NAMES = ('person', 'bicycle', 'car')  # the model's classes (teachers map to these)


def build_parser():
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', required=True,
                        help='labelled data set folder (ir/, vi/, labels/) or a shared name')
    parser.add_argument('--split', action='append', default=None,
                        help='split name or list file (default test); repeat to intersect')
    parser.add_argument('--teacher', action='append', default=None,
                        help='yolov8n | yolox (shared/teachers) | FILE.onnx; repeatable '
                             '(default yolov8n)')
    parser.add_argument('--labels', default='labels',
                        help='label sub-folder, e.g. labels_vi (default labels)')
    parser.add_argument('--max-side', type=int, default=None,
                        help='downscale so the longer side is at most this many pixels '
                             "(tarfuse-eval's --max-side; default native)")
    parser.add_argument('--conf', type=float, default=0.001,
                        help='minimum candidate score (default 0.001, as tarfuse-eval)')
    parser.add_argument('--iou', type=float, default=0.6,
                        help='class-wise NMS IoU (default 0.6, as tarfuse-eval)')
    parser.add_argument('--out', default=None, help='also write the figures here (JSON)')
    return parser


def main(argv=None):
    """Print (and optionally write) the teachers' AP on a labelled split (2: bad request)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_outputs(parser, out=args.out)
    try:
        return _run(args)
    except ValueError as exc:  # a bad request: one line, no traceback
        print(f'eval_teachers: error: {exc}', file=sys.stderr)
        return 2


def _run(args):
    splits = args.split or ['test']
    teachers = args.teacher or ['yolov8n']
    # tarfuse-eval's checks of the options these share, with its messages.
    EvalOptions(split=splits[0], max_side=args.max_side, labels_dir=args.labels,
                conf=args.conf, iou=args.iou, teachers=tuple(teachers))
    dataset_dir = resolve_dataset_dir(args.data)
    if not (dataset_dir / args.labels).is_dir():
        raise ValueError(f'--labels {args.labels!r}: {str(dataset_dir / args.labels)!r} is not '
                         f'a folder; name a label folder of the data set')
    stems = data.DataSource(dataset_dir, splits[0]).stems()
    for split in splits[1:]:
        keep = set(data.DataSource(dataset_dir, split).stems())
        stems = [s for s in stems if s in keep]
    # As tarfuse-eval: the label folder's classes.txt (else the set's) names the label ids,
    # every label file is read (and checked) before a teacher runs.
    label_classes = data.read_classes(dataset_dir, args.labels) or list(CLASS_NAMES)
    lookup = inputs.class_lookup(dataset_dir, CLASS_NAMES, args.labels)
    labels = {stem: data.load_labels(dataset_dir, stem, args.labels, label_classes)
              for stem in stems}
    labelled = [stem for stem in stems if labels[stem] is not None]
    if not labelled:
        raise ValueError(f'none of the {len(stems)} pairs of {"+".join(splits)} has a label '
                         f'file in {str(dataset_dir / args.labels)!r}: no teacher can be scored')
    references = {spec: TeacherReference(load_teacher(spec), CLASS_NAMES, args.conf, args.iou)
                  for spec in teachers}
    truths = []
    for stem in labelled:
        ir_raw, vi_raw = data.load_pair(dataset_dir, stem)
        pair = inputs.prepare(ir_raw, vi_raw, args.max_side, name=stem)
        height, width = pair.vi_y.shape
        truths.append(inputs.targets(labels[stem], lookup, width, height)[0])
        for reference in references.values():
            reference.add(pair.ir, pair.vi)
    results = {name: ref.result(truths, CLASS_NAMES) for name, ref in references.items()}
    print(f'{dataset_dir} {"+".join(splits)}: {len(truths)} labelled pairs, '
          f'{sum(len(t) for t in truths)} boxes')
    print('| teacher | source | mAP@0.5 | mAP@0.5:0.95 | ' + ' | '.join(
        f'AP50 {n}' for n in CLASS_NAMES) + ' |')
    print('|---|---|---|---|' + '---|' * len(CLASS_NAMES))
    for name, result in results.items():
        for source in SOURCES:
            det = result[source]
            cells = [_fmt(det['per_class'][n]['ap50']) if n in det['per_class'] else '-'
                     for n in CLASS_NAMES]
            print(f'| {name} | {source} | {_fmt(det["map50"])} | {_fmt(det["map50_95"])} | '
                  + ' | '.join(cells) + ' |')
    if args.out:
        Path(args.out).write_text(json.dumps(
            {'dataset': str(dataset_dir), 'splits': splits, 'pairs': len(truths),
             'teachers': results}, indent=2) + '\n')
    return 0


def _fmt(value):
    """Return an AP with 4 decimals, 'n/a' where not computed (no ground-truth box: NaN)."""
    return 'n/a' if value is None or value != value else f'{value:.4f}'


if __name__ == '__main__':
    sys.exit(main())

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

from tarfuse_ros.core import data
from tarfuse_ros.evaluation import inputs
from tarfuse_ros.evaluation.teachers import load_teacher, SOURCES, TeacherReference
from tarfuse_ros.training.datasets import resolve_dataset_dir

CLASS_NAMES = ('person', 'bicycle', 'car')  # the model's classes (teachers map to these)


def main(argv=None):
    """Print (and optionally write) the teachers' AP on a labelled split."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', required=True)
    parser.add_argument('--split', action='append', default=None)
    parser.add_argument('--teacher', action='append', default=None)
    parser.add_argument('--labels', default='labels')
    parser.add_argument('--max-side', type=int, default=None)
    parser.add_argument('--conf', type=float, default=0.001)
    parser.add_argument('--iou', type=float, default=0.6)
    parser.add_argument('--out', default=None)
    args = parser.parse_args(argv)
    dataset_dir = resolve_dataset_dir(args.data)
    splits = args.split or ['test']
    stems = data.DataSource(dataset_dir, splits[0]).stems()
    for split in splits[1:]:
        keep = set(data.DataSource(dataset_dir, split).stems())
        stems = [s for s in stems if s in keep]
    lookup = inputs.class_lookup(dataset_dir, CLASS_NAMES)
    references = {spec: TeacherReference(load_teacher(spec), CLASS_NAMES, args.conf, args.iou)
                  for spec in (args.teacher or ['yolov8n'])}
    truths = []
    for stem in stems:
        labels = data.load_labels(dataset_dir, stem, args.labels)
        if labels is None:
            continue
        ir_raw, vi_raw = data.load_pair(dataset_dir, stem)
        pair = inputs.prepare(ir_raw, vi_raw, args.max_side, name=stem)
        height, width = pair.vi_y.shape
        truths.append(inputs.targets(labels, lookup, width, height)[0])
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
            cells = [f'{det["per_class"][n]["ap50"]:.4f}' if n in det['per_class'] else '-'
                     for n in CLASS_NAMES]
            print(f'| {name} | {source} | {det["map50"]:.4f} | {det["map50_95"]:.4f} | '
                  + ' | '.join(cells) + ' |')
    if args.out:
        Path(args.out).write_text(json.dumps(
            {'dataset': str(dataset_dir), 'splits': splits, 'pairs': len(truths),
             'teachers': results}, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""Print one markdown table comparing several ``tarfuse-eval`` results.

Usage: python benchmarks/metrics_table.py NAME=path/to/metrics.json [NAME=...]
Each row is one run (the model as evaluated); columns are the headline figures of issue 4,
after the set, split, number of pairs and the size the run was evaluated at (EPE is in pixels
of that size). A note under the table gives the units.
"""

import argparse
import json
from pathlib import Path
import sys

COLUMNS = [('EPE px', ('registration', 'EPE')), ('EPE cut %', ('registration', 'epe_reduction')),
           ('NCC', ('registration', 'NCC')), ('MSE', ('registration', 'MSE')),
           ('CC', ('fusion', 'CC')), ('Qabf', ('fusion', 'Qabf')),
           ('SSIM', ('fusion', 'SSIM')), ('VIF', ('fusion', 'VIF')),
           ('mAP50', ('detection', 'map50')), ('mAP50-95', ('detection', 'map50_95'))]
NOTE = ('EPE: mean end-point error in px of the evaluated visible images (max side: the longer '
        'side they were downscaled to, native: the stored size); EPE cut: 1 - EPE / the '
        'unregistered EPE; MSE, NCC: registered vs aligned IR, images in [0, 1]; CC, Qabf, '
        'SSIM, VIF: fused luma vs aligned IR and visible luma; mAP: ultralytics AP at IoU 0.5 '
        'and 0.5:0.95; -: not computed in that run.')


def _cell(metrics, path):
    value = metrics
    for key in path:
        if not isinstance(value, dict) or value.get(key) is None:
            return '-'
        value = value[key]
    if path[-1] == 'epe_reduction':
        return f'{100 * value:.1f}'
    return f'{value:.4f}' if abs(value) < 1 else f'{value:.2f}'


def _run(text):
    """Parse one ``NAME=metrics.json`` argument into ``(name, metrics dict)``."""
    name, sep, path = text.partition('=')
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f'{text!r}: give NAME=path/to/metrics.json')
    try:
        metrics = json.loads(Path(path).read_text(encoding='utf-8'))
    except OSError as exc:
        raise argparse.ArgumentTypeError(f'{path!r}: cannot read it ({exc.strerror})')
    except (UnicodeDecodeError, ValueError):
        raise argparse.ArgumentTypeError(f'{path!r}: not a JSON file')
    if not isinstance(metrics, dict) or not {'num_pairs', 'registration'} <= set(metrics):
        raise argparse.ArgumentTypeError(f'{path!r}: not a tarfuse-eval metrics.json (no '
                                         f'num_pairs and registration)')
    return name, metrics


def build_parser():
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        description='Print one markdown table comparing tarfuse-eval results (metrics.json).')
    parser.add_argument('runs', nargs='+', type=_run, metavar='NAME=metrics.json',
                        help='a row name and the metrics.json of one tarfuse-eval run')
    return parser


def table(runs):
    """Return the markdown rows, then a note on the units, of ``[(name, metrics), ...]``."""
    head = ['run', 'set', 'split', 'pairs', 'max side'] + [name for name, _ in COLUMNS]
    lines = ['| ' + ' | '.join(head) + ' |', '|---' * len(head) + '|']
    for name, metrics in runs:
        max_side = metrics.get('max_side')
        facts = [name, Path(str(metrics.get('dataset', '-'))).name,
                 Path(str(metrics.get('split', '-'))).name, str(metrics['num_pairs']),
                 'native' if max_side is None else str(max_side)]
        lines.append('| ' + ' | '.join(facts + [_cell(metrics, p) for _, p in COLUMNS]) + ' |')
    return '\n'.join(lines + ['', NOTE])


def main(argv=None):
    """Print the table for ``NAME=metrics.json`` arguments (exit status 2 for bad ones)."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    print(table(args.runs))
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""Print one markdown table comparing several ``tarfuse-eval`` results.

Usage: python benchmarks/metrics_table.py NAME=path/to/metrics.json [NAME=...]
Each row is one run (the model as evaluated); columns are the headline figures of issue 4.
"""

import json
import sys

COLUMNS = [('EPE px', ('registration', 'EPE')), ('EPE cut %', ('registration', 'epe_reduction')),
           ('NCC', ('registration', 'NCC')), ('MSE', ('registration', 'MSE')),
           ('CC', ('fusion', 'CC')), ('Qabf', ('fusion', 'Qabf')),
           ('SSIM', ('fusion', 'SSIM')), ('VIF', ('fusion', 'VIF')),
           ('mAP50', ('detection', 'map50')), ('mAP50-95', ('detection', 'map50_95'))]


def _cell(metrics, path):
    value = metrics
    for key in path:
        if not isinstance(value, dict) or value.get(key) is None:
            return '-'
        value = value[key]
    if path[-1] == 'epe_reduction':
        return f'{100 * value:.1f}'
    return f'{value:.4f}' if abs(value) < 1 else f'{value:.2f}'


def main(argv=None):
    """Print the table for ``NAME=metrics.json`` arguments."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__)
        return 2
    print('| run | ' + ' | '.join(name for name, _ in COLUMNS) + ' |')
    print('|---' * (len(COLUMNS) + 1) + '|')
    for item in argv:
        name, _, path = item.partition('=')
        with open(path) as handle:
            metrics = json.load(handle)
        print(f'| {name} | ' + ' | '.join(_cell(metrics, p) for _, p in COLUMNS) + ' |')
    return 0


if __name__ == '__main__':
    sys.exit(main())

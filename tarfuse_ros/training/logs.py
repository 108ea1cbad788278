"""What a run records: ``log.jsonl``, the loss curves, the stem lists and the code's commit.

``log.jsonl`` holds one JSON object per epoch: ``epoch``, ``epochs`` (the horizon), ``step``,
``lr``, ``epoch_time_s``, ``time_s``, ``train`` (mean loss parts), optionally ``val``
(validation figures), ``val_time_s`` and ``partial`` (an epoch cut short by ``--max-steps``).
"""

import json
import math
from pathlib import Path
import subprocess

import numpy as np

__all__ = ['LOG_NAME', 'append_record', 'git_commit', 'plot_curves', 'plot_curves_cv2',
           'read_log', 'truncate_log', 'write_stem_lists']

LOG_NAME = 'log.jsonl'


def read_log(path):
    """Return the list of epoch records of a ``log.jsonl`` (empty when there is none).

    A last line cut short (no line end: a run killed while it appended its record, whose
    epoch no state holds) is left out.

    Raises:
        ValueError: another line that is not a JSON object, naming the file and line.

    """
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, encoding='utf-8', errors='replace') as stream:
        lines = stream.readlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            if number == len(lines) and not line.endswith('\n'):
                break  # the record a killed run was writing
            raise ValueError(f'training log {str(path)!r} line {number} is not a JSON record '
                             f'({line.strip()[:40]!r}): repair or remove that line')
        records.append(record)
    return records


def truncate_log(path, last_epoch):
    """Drop records after ``last_epoch`` (a resumed run writes them again), whole or not at all.

    Rewritten in place, a stop in the write (Ctrl-C while a run started) lost the history.
    """
    from tarfuse_ros.core.files import write_text_atomic
    records = [r for r in read_log(path) if r.get('epoch', 0) <= last_epoch]
    write_text_atomic(path, ''.join(json.dumps(record) + '\n' for record in records))


def append_record(path, record):
    """Append one epoch record to a ``log.jsonl``."""
    with open(path, 'a', encoding='utf-8') as stream:
        stream.write(json.dumps(record) + '\n')


def write_stem_lists(sources, folder):
    """Write each source's stems (after ``exclude``) to ``folder/NN_<set>_<split>.txt``.

    A record of the exact pairs a run used (for the user: no run reads them back), each
    written whole or not at all.
    """
    from tarfuse_ros.core.files import remove_stale_outputs, write_text_atomic
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, source in enumerate(sources):
        path = folder / f'{index:02d}_{Path(source.path).name}_{Path(source.split).stem}.txt'
        remove_stale_outputs(path)  # a killed run's half-written one
        write_text_atomic(path, '\n'.join(source.stems()) + '\n')
        paths.append(path)
    return paths


def git_commit(cwd=None):
    """Return ``(commit, dirty)`` of the checkout holding this file, or ``(None, None)``."""
    cwd = cwd or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=cwd, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                                cwd=cwd, capture_output=True, text=True, timeout=10).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def _plot_key(ax, records, key):
    xs = [r['epoch'] for r in records if key in r.get('train', {})]
    ys = [r['train'][key] for r in records if key in r.get('train', {})]
    ax.plot(xs, ys, label='train')
    vx = [r['epoch'] for r in records if key in (r.get('val') or {})]
    vy = [r['val'][key] for r in records if key in (r.get('val') or {})]
    if vx:
        ax.plot(vx, vy, 'o-', label='val')
    ax.set_title(key)
    ax.set_xlabel('epoch')
    if ys and min(ys) > 0 and max(ys) / max(min(ys), 1e-12) > 20:
        ax.set_yscale('log')
    ax.legend(fontsize=7)


def _plot_epe(ax, records):
    val = [r for r in records if 'epe' in (r.get('val') or {})]
    ax.plot([r['epoch'] for r in val], [r['val']['epe'] for r in val], 'o-',
            label='val EPE (px)')
    ax.plot([r['epoch'] for r in val], [r['val']['epe_zero_flow'] for r in val], '--',
            label='zero flow')
    ax.set_title('registration EPE')
    ax.set_xlabel('epoch')
    ax.legend(fontsize=7)


def plot_curves(log_path, png_path):
    """Draw the loss curves of ``log.jsonl`` to a PNG (matplotlib Agg, else OpenCV).

    One panel per loss part (train and validation), plus the validation EPE when there is one.
    Returns the PNG path, or None for an empty log.
    """
    records = read_log(log_path)
    if not records:
        return None
    keys = ['total'] + [k for k in records[-1].get('train', {}) if k != 'total']
    has_epe = any('epe' in (r.get('val') or {}) for r in records)
    try:
        import matplotlib
        matplotlib.use('Agg')
        from matplotlib import pyplot as plt
    except ImportError:
        return plot_curves_cv2(records, keys, png_path)
    cols = 3
    rows = math.ceil((len(keys) + has_epe) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        _plot_key(ax, records, key)
    if has_epe:
        _plot_epe(axes.flat[len(keys)], records)
    for ax in list(axes.flat)[len(keys) + has_epe:]:
        ax.axis('off')
    # Fixed margins (in inches, so any number of rows looks alike): tight_layout measured every
    # tick label and took half of the drawing's time, paid by every finished run.
    height = 3 * rows
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.55 / height, top=1 - 0.35 / height,
                        wspace=0.25, hspace=0.9 / 3)
    from tarfuse_ros.core.files import atomic_output
    try:
        with atomic_output(png_path) as temporary:  # whole or not at all
            fig.savefig(str(temporary), dpi=80, format='png')
    finally:
        plt.close(fig)
    return Path(png_path)


def plot_curves_cv2(records, keys, png_path):
    """Draw the training curves of ``keys`` with OpenCV (no matplotlib); return the PNG path."""
    import cv2
    width, height, pad = 640, 360, 40
    canvas = np.full((height, width, 3), 255, np.uint8)
    colours = [(200, 0, 0), (0, 150, 0), (0, 0, 200), (150, 0, 150), (0, 150, 150),
               (120, 120, 0), (60, 60, 60), (0, 90, 255)]
    epochs = [r['epoch'] for r in records]
    e0, e1 = min(epochs), max(max(epochs), min(epochs) + 1)
    for i, key in enumerate(keys):
        ys = np.array([r.get('train', {}).get(key, np.nan) for r in records], float)
        if not np.isfinite(ys).any():
            continue
        lo, hi = np.nanmin(ys), np.nanmax(ys)
        span = hi - lo if hi > lo else 1.0
        pts = [(int(pad + (e - e0) / (e1 - e0) * (width - 2 * pad)),
                int(height - pad - (y - lo) / span * (height - 2 * pad)))
               for e, y in zip(epochs, ys) if np.isfinite(y)]
        colour = colours[i % len(colours)]
        cv2.polylines(canvas, [np.array(pts, np.int32)], False, colour, 2)
        cv2.putText(canvas, f'{key} ({lo:.3g}..{hi:.3g})', (pad, 15 + 14 * i),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1)
    from tarfuse_ros.core.files import atomic_output
    with atomic_output(png_path) as temporary:  # whole or not at all
        temporary.write_bytes(cv2.imencode('.png', canvas)[1].tobytes())
    return Path(png_path)

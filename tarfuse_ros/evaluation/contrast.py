"""Target contrast: how well labelled people and cars stand out in the fused image vs the IR.

Per labelled ``person`` / ``car`` box of a pair (visible frame), the box's contrast to its
surroundings (:func:`tarfuse_ros.core.metrics.target_contrast`: mean inside minus mean of a
ring around it, grey levels 0-255) is measured in the aligned IR, in the visible luma and in
each fused image (the model's and the baselines'). Boxes are pooled over pairs, per group
(``all``, ``day``, ``night``) and per class; over the boxes whose IR contrast is positive
(targets that stand out in the IR)::

    target_contrast_ratio = mean(fused contrast) / mean(IR contrast)

the definition of :func:`tarfuse_ros.core.metrics.target_contrast_ratio`, applied to the
pooled boxes (one pair alone gives exactly that function's ratio). 1 keeps the IR targets'
contrast, 0 loses it, < 0 inverts it (the target follows a dark visible image).

Day or night: a ``pairs.tsv`` column named in :data:`ILLUMINATION_COLUMNS` whose value says
``day`` or ``night``; otherwise MSRS's naming (a number then ``D`` for day or ``N`` for night,
e.g. ``00004N``); otherwise unknown (the pair counts in ``all`` only).
"""

import csv
import re

import numpy as np
from tarfuse_ros.core import metrics

__all__ = ['CONTRAST_CLASSES', 'GROUPS', 'ILLUMINATION_COLUMNS', 'TargetContrast',
           'illumination', 'read_illumination']

# The classes whose boxes are measured (a bicycle box is mostly background between spokes).
CONTRAST_CLASSES = ('person', 'car')
GROUPS = ('all', 'day', 'night')
ILLUMINATION_COLUMNS = ('illumination', 'day_night', 'daynight', 'time_of_day', 'lighting')
_MSRS_STEM = re.compile(r'^\d+([DN])$')


def read_illumination(dataset_dir):
    """Return ``{stem: 'day' | 'night'}`` from the set's ``pairs.tsv``, or {} without one.

    The first column is the stem; the first column named in :data:`ILLUMINATION_COLUMNS`
    gives day or night (a value containing ``night`` or ``day``, case-insensitive).
    """
    path = dataset_dir / 'pairs.tsv'
    if not path.is_file():
        return {}
    with open(path, newline='') as handle:
        rows = list(csv.reader(handle, delimiter='\t'))
    if not rows:
        return {}
    header = [h.strip().lower() for h in rows[0]]
    column = next((header.index(c) for c in ILLUMINATION_COLUMNS if c in header), None)
    if column is None:
        return {}
    out = {}
    for row in rows[1:]:
        if len(row) > column and row[0].strip():
            value = row[column].strip().lower()
            if 'night' in value or 'day' in value:
                out[row[0].strip()] = 'night' if 'night' in value else 'day'
    return out


def illumination(stem, table=None):
    """Return ``'day'``, ``'night'`` or None (unknown) for one pair.

    Args:
        stem: the pair's name.
        table: ``{stem: 'day' | 'night'}`` from :func:`read_illumination` (it wins).

    """
    if table and stem in table:
        return table[stem]
    match = _MSRS_STEM.match(stem)
    if match:
        return 'night' if match.group(1) == 'N' else 'day'
    return None


def _summary(ir, visible, fused, pairs, total):
    """Pooled contrasts of one selection of boxes (per-box arrays of equal length)."""
    keep = np.isfinite(ir) & (ir > 0)
    for values in fused.values():
        keep &= np.isfinite(values)
    out = {'pairs': pairs, 'boxes': total, 'counted_boxes': int(keep.sum())}
    if not keep.any():
        out.update({'ir': None, 'visible': None,
                    'fused': dict.fromkeys(fused), 'ratio': dict.fromkeys(fused)})
        return out
    ir_mean = float(ir[keep].mean())
    visible_kept = visible[keep][np.isfinite(visible[keep])]
    out['ir'] = ir_mean
    out['visible'] = float(visible_kept.mean()) if visible_kept.size else None
    out['fused'] = {name: float(v[keep].mean()) for name, v in fused.items()}
    out['ratio'] = {name: float(v[keep].mean()) / ir_mean for name, v in fused.items()}
    return out


class TargetContrast:
    """Per-box target contrasts of an evaluation, pooled per group and class (module doc).

    Args:
        methods: names of the fused images measured (``'model'`` and baselines).

    """

    def __init__(self, methods):
        self.methods = tuple(methods)
        self._rows = []  # (group, class name, stem, ir, visible, {method: fused})

    def add(self, stem, group, boxes_xyxy, class_names, ir, vi_y, fused):
        """Measure one pair's boxes.

        Args:
            stem: the pair's name.
            group: ``'day'``, ``'night'`` or None.
            boxes_xyxy: (N, 4) boxes ``x1, y1, x2, y2`` in pixels of the evaluated frame.
            class_names: (N,) class name of each box; only :data:`CONTRAST_CLASSES` count.
            ir: the aligned IR (H, W), uint8 or float in [0, 1].
            vi_y: the visible luma (H, W), uint8 or float in [0, 1].
            fused: ``{method: (H, W) fused luma}``, one per name in ``methods``.

        Raises:
            ValueError: a method missing from ``fused``, or bad images / boxes (from
                :func:`~tarfuse_ros.core.metrics.target_contrast`).

        """
        missing = [m for m in self.methods if m not in fused]
        if missing:
            raise ValueError(f'no fused image for {missing}')
        boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
        names = list(class_names)
        if len(names) != len(boxes):
            raise ValueError(f'{len(boxes)} boxes but {len(names)} class names')
        keep = [i for i, name in enumerate(names) if name in CONTRAST_CLASSES]
        if not keep:
            self._rows.append((group, None, stem, None, None, None))
            return
        boxes = boxes[keep]
        ir_c = metrics.target_contrast(ir, boxes)
        vi_c = metrics.target_contrast(vi_y, boxes)
        fused_c = {m: metrics.target_contrast(fused[m], boxes) for m in self.methods}
        for k, index in enumerate(keep):
            self._rows.append((group, names[index], stem, ir_c[k], vi_c[k],
                               {m: fused_c[m][k] for m in self.methods}))

    def _select(self, group, class_name=None):
        rows = [r for r in self._rows if group == 'all' or r[0] == group]
        pairs = len({r[2] for r in rows})
        rows = [r for r in rows if r[1] is not None
                and (class_name is None or r[1] == class_name)]
        ir = np.array([r[3] for r in rows], np.float64)
        visible = np.array([r[4] for r in rows], np.float64)
        fused = {m: np.array([r[5][m] for r in rows], np.float64) for m in self.methods}
        return _summary(ir, visible, fused, pairs, len(rows))

    def summary(self):
        """Return ``{group: {...}}`` for ``all``, ``day``, ``night``.

        Each group: ``pairs``, ``boxes`` (person/car boxes), ``counted_boxes`` (IR contrast
        > 0), ``ir`` and ``visible`` (mean contrasts over the counted boxes, grey levels),
        ``fused`` and ``ratio`` (``{method: value}``), ``per_class`` (the same per class);
        None where nothing was counted.
        """
        out = {}
        for group in GROUPS:
            entry = self._select(group)
            entry['per_class'] = {name: self._select(group, name) for name in CONTRAST_CLASSES}
            out[group] = entry
        return out

    def for_method(self, method):
        """Return :meth:`summary` seen from one method: its ``fused`` and ``ratio`` as numbers."""
        def pick(entry):
            picked = {k: v for k, v in entry.items() if k not in ('fused', 'ratio', 'per_class')}
            picked['fused'] = entry['fused'][method]
            picked['ratio'] = entry['ratio'][method]
            if 'per_class' in entry:
                picked['per_class'] = {n: pick(e) for n, e in entry['per_class'].items()}
            return picked
        return {group: pick(entry) for group, entry in self.summary().items()}

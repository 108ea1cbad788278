"""Collecting an evaluation's per-pair scores into the ``metrics.json`` result."""

import math

import numpy as np
from tarfuse_ros.core import metrics
from tarfuse_ros.core.cpus import machine_facts
from tarfuse_ros.evaluation.baselines import BASELINES
from tarfuse_ros.evaluation.contrast import CONTRAST_CLASSES, TargetContrast
from tarfuse_ros.evaluation.detection import AP_METHOD, detection_summary

__all__ = ['CONTRAST_METHODS', 'DETECTORS', 'Scores', 'conventions', 'mean_dicts', 'pixel_units']

# The methods whose detections are scored.
DETECTORS = ('model', 'model_zero_flow', 'visible_only', 'ir_only')
# The methods whose fused images are measured for target contrast.
CONTRAST_METHODS = ('model', 'unregistered_average', 'unregistered_max', 'ecc_average',
                    'model_zero_flow')


def mean_dicts(items):
    """Mean per key over the dicts; None values (not computed) are left out of the mean."""
    items = [i for i in items if i]
    if not items:
        return None
    keys = list(dict.fromkeys(k for i in items for k in i))
    out = {}
    for key in keys:
        values = [i[key] for i in items if i.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
    return out


def _finite(value):
    """Replace NaN/inf (not JSON) with None, recursively."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _boxes(detections):
    rows = [[d.x1, d.y1, d.x2, d.y2, d.score, d.class_id] for d in detections]
    return np.asarray(rows, np.float64).reshape(-1, 6)


def pixel_units(max_side):
    """Return the pixels that EPE is measured in, for ``max_side`` (None: native size)."""
    if max_side is None:
        return 'px of the stored visible images (native size)'
    return (f'px of the evaluated visible images, downscaled where larger so that their longer '
            f'side is at most {max_side} px (not pixels of the stored images)')


def conventions(aligned, conf, iou, max_side=None):
    """Return the conventions block of ``metrics.json`` (what each figure means)."""
    return {
        'fusion_reference': (
            'fused luma vs aligned IR and visible luma (0-255)' if aligned else
            'no aligned IR: only the reference-free EN, SD, SF, AG (fused luma alone); '
            'metrics comparing with the IR are None'),
        'ssim': 'mean of SSIM(F, IR) and SSIM(F, VI)',
        'mi': 'MI(F, IR) + MI(F, VI), bits',
        'vif': 'VIFp(IR, F) + VIFp(VI, F)',
        'qabf': 'Xydeas-Petrovic, constants of docs/METHOD.md, L = 1',
        'fusion_bounds': (
            'CC: mean over the pairs of the highest CC any fused image can reach with its '
            'sources, sqrt((1 + rho) / 2), rho = Pearson(aligned IR, visible luma)'
            if aligned else 'no aligned IR: None'),
        'registration': (
            f'MSE/NCC of images in [0, 1]; EPE in {pixel_units(max_side)} vs the inverse of '
            'the applied field'
            if aligned else 'no aligned IR: MSE, NCC, EPE not computed (None)'),
        'edge_alignment': (
            'Pearson correlation of the Gaussian-smoothed (sigma '
            f'{metrics.EDGE_ALIGNMENT_SIGMA_PX} px) Sobel gradient magnitudes of the '
            'registered IR and the visible luma, over the pixels the registered IR covers; '
            'no ground truth; higher is better; better_than_unregistered_fraction: pairs '
            'where the model scores above the unregistered input'),
        'landmark_error': (
            'mean |v + flow(v) - r| over landmark pairs (v visible, r IR mapped to the '
            'visible frame as the IR is resized), px of the evaluated visible image; '
            'unregistered: zero flow'),
        'detection': f'{AP_METHOD}, NMS conf {conf}, IoU {iou}',
        'target_contrast': (
            f'per labelled {"/".join(CONTRAST_CLASSES)} box: mean inside minus mean of a ring '
            'around it (half the shorter side, >= 4 px), grey levels 0-255, in the aligned IR, '
            'the visible luma and each fused luma; pooled over the boxes whose IR contrast is '
            '> 0; ratio = mean fused / mean IR contrast; day/night from pairs.tsv or MSRS '
            'names (D/N)' if aligned else 'no aligned IR: not measured'),
        'teachers': (f'COCO teachers (onnxruntime) on the same visible and aligned IR images, '
                     f'candidates >= conf {conf}, class-wise NMS IoU {iou}, scored like the '
                     'model'),
    }


class Scores:
    """Every figure of an evaluation, pair by pair; :meth:`result` makes ``metrics.json``."""

    def __init__(self, class_names):
        self.class_names = list(class_names)
        self.fusion = {name: [] for name in ('model',) + BASELINES}
        self.registration = {name: [] for name in ('model', 'unregistered') + BASELINES}
        self.predictions = {name: [] for name in DETECTORS}
        self.truths, self.dropped_boxes = [], 0
        self.times_ms, self.model_ms = [], []
        self.sources = {'dataset': 0, 'synthetic': 0, 'none': 0}
        self.ecc_failures, self.edge_wins, self.landmark_pairs = 0, [], 0
        self.per_pair = []
        self.contrast = TargetContrast(CONTRAST_METHODS)
        self.contrast_pairs = 0

    def add(self, case, model, unregistered, baselines, ecc_success, truth, dropped,
            predictions, wall_ms, model_ms, cc_bound=None):
        """Add one pair: the model's and the baselines' scores, detections and times.

        ``cc_bound``: the highest CC a fused image can reach with the pair's sources
        (:func:`~tarfuse_ros.core.metrics.cc_upper_bound`; None without an aligned IR).
        """
        self.sources[case.mode] += 1
        self.landmark_pairs += int(case.landmarks is not None)
        self.times_ms.append(wall_ms)
        self.model_ms.append(model_ms)
        self.fusion['model'].append(model['fusion'])
        self.registration['model'].append(model['registration'])
        self.registration['unregistered'].append(unregistered)
        for name, values in baselines.items():
            self.fusion[name].append(values['fusion'])
            self.registration[name].append(values['registration'])
        self.ecc_failures += int(not ecc_success)
        self.edge_wins.append(model['registration']['edge_alignment']
                              > unregistered['edge_alignment'])
        entry = {'stem': case.stem, 'deformation': case.mode, 'size': list(case.size),
                 'fusion': model['fusion'], 'registration': model['registration'],
                 'unregistered': unregistered, 'ecc_success': ecc_success,
                 'ecc_average': baselines['ecc_average']['registration'],
                 'cc_upper_bound': cc_bound}
        if truth is not None:
            self.truths.append(truth)
            self.dropped_boxes += dropped
            for name in DETECTORS:
                self.predictions[name].append(_boxes(predictions[name]))
            entry['num_gt'] = int(len(truth))
        self.per_pair.append(entry)

    def add_contrast(self, stem, group, truth, ir, vi_y, fused):
        """Measure the target contrast of the pair added last (``truth``: (M, 5) boxes).

        Args:
            stem: the pair's name; group: ``'day'``, ``'night'`` or None.
            truth: (M, 5) ``[x1, y1, x2, y2, model class]`` in the evaluated frame.
            ir: the aligned IR (H, W); vi_y: the visible luma (H, W).
            fused: ``{method: fused luma}`` for every name in :data:`CONTRAST_METHODS`.

        """
        names = [self.class_names[int(c)] for c in truth[:, 4]]
        self.contrast.add(stem, group, truth[:, :4], names, ir, vi_y, fused)
        self.contrast_pairs += 1
        wanted = np.array([n in CONTRAST_CLASSES for n in names], bool)
        pair = metrics.target_contrast_ratio(fused['model'], ir, truth[wanted, :4])
        self.per_pair[-1]['illumination'] = group
        self.per_pair[-1]['target_contrast'] = pair

    def contrast_figures(self, method):
        """``{'target_contrast_ratio': ..., 'target_contrast': {group: ...}}`` of a method."""
        if not self.contrast_pairs:
            return {'target_contrast_ratio': None, 'target_contrast': None}
        groups = self.contrast.for_method(method)
        return {'target_contrast_ratio': groups['all']['ratio'], 'target_contrast': groups}

    def detection(self, name):
        """COCO-style detection figures of one method (None without labelled pairs)."""
        if not self.truths:
            return None
        return detection_summary(self.predictions[name], self.truths,
                                 class_names=self.class_names)

    def registration_summary(self):
        """Mean registration figures of the model, the unregistered input and the ratios."""
        out = dict(mean_dicts(self.registration['model']) or {})
        out['unregistered'] = mean_dicts(self.registration['unregistered'])
        base_epe = (out['unregistered'] or {}).get('EPE')
        if base_epe is None or out.get('EPE') is None:
            out['epe_reduction'] = None
        else:
            out['epe_reduction'] = 1.0 - out['EPE'] / base_epe if base_epe > 0 else float('nan')
        out['edge_alignment_better_than_unregistered_fraction'] = (
            float(np.mean(self.edge_wins)) if self.edge_wins else None)
        out['landmark_pairs'] = self.landmark_pairs
        return out

    def result(self, *, dataset, split, weights, deform, stored_ir, seed, max_side, pairs,
               skipped, device, conf, iou, labels_dir, dropped_classes=None, teachers=None):
        """Return the ``metrics.json`` dict (NaN and infinities as None).

        ``dropped_classes``: ``{label class name: boxes}`` of the classes the model does not
        know (their boxes are left out); ``teachers``: ``{name: TeacherReference}`` whose rows
        go under ``teachers``.
        """
        import torch
        baselines = {name: {'fusion': mean_dicts(self.fusion[name]),
                            'registration': mean_dicts(self.registration[name]),
                            'detection': self.detection(name) if name in DETECTORS else None}
                     for name in BASELINES}
        for name in CONTRAST_METHODS[1:]:
            if baselines[name]['fusion'] is not None:
                baselines[name]['fusion'].update(self.contrast_figures(name))
        fusion = mean_dicts(self.fusion['model'])
        if fusion is not None:
            fusion.update(self.contrast_figures('model'))
        bounds = [entry['cc_upper_bound'] for entry in self.per_pair
                  if entry['cc_upper_bound'] is not None]
        result = {
            'dataset': dataset, 'split': split, 'weights': weights, 'deform': deform,
            'stored_ir': stored_ir, 'seed': seed, 'max_side': max_side,
            'num_pairs': len(pairs), 'pairs': list(pairs),
            'skipped_without_ground_truth': list(skipped),
            'deformation_sources': self.sources, 'class_names': self.class_names,
            'fusion': fusion,
            # What no fusion can exceed on these pairs (mean of the per-pair bounds).
            'fusion_bounds': {'CC': float(np.mean(bounds)) if bounds else None},
            'registration': self.registration_summary(),
            'detection': self.detection('model'),
            'detection_labels': {'folder': labels_dir, 'labelled_pairs': len(self.truths),
                                 'dropped_boxes_unknown_class': self.dropped_boxes,
                                 'dropped_boxes_by_class': dict(dropped_classes or {})},
            'speed': {'ms_per_pair': float(np.mean(self.times_ms)),
                      'model_ms_per_pair': float(np.mean(self.model_ms)),
                      'device': device, 'threads': torch.get_num_threads(),
                      # The machine the times were taken on, for comparing them with others.
                      'machine': machine_facts(),
                      'gpu': (torch.cuda.get_device_name(torch.device(device))
                              if str(device).startswith('cuda') else None),
                      # Every distinct evaluated size (height, width): pairs may differ.
                      'image_sizes': sorted({tuple(e['size']) for e in self.per_pair})},
            'baselines': baselines, 'ecc_failures': self.ecc_failures,
            'teachers': {name: ref.result(self.truths, self.class_names)
                         for name, ref in (teachers or {}).items()} if self.truths else {},
            'per_pair': self.per_pair,
            'conventions': conventions(stored_ir == 'aligned', conf, iou, max_side),
        }
        return _finite(result)

"""``report.md``: the Markdown report of an evaluation's ``metrics.json``."""

from tarfuse_ros.core import metrics
from tarfuse_ros.evaluation.aggregate import pixel_units

__all__ = ['GOALS', 'REPORT_TITLE', 'render_report']

REPORT_TITLE = '# TarFuse evaluation'  # the first line: tarfuse-eval knows its own report

# Goals for the shipped model (RoadScene test for registration and fusion, MSRS for detection;
# informative on other sets): the figures of the best published peer on RoadScene (IMF, in
# docs/METHOD.md) and an EPE reduction of 70 % (about what an affine ECC reaches there).
# Night target contrast: the fused image keeps at least half of the IR targets' contrast.
GOALS = {'EPE reduction': 0.70, 'NCC': 0.976, 'MSE': 0.0024, 'CC': 0.60, 'Qabf': 0.43,
         'SSIM': 0.50, 'night target contrast ratio': 0.5}
# The methods of the target-contrast table (their fused images), in order.
CONTRAST_ROWS = (('TarFuse', None), ('unregistered average', 'unregistered_average'),
                 ('unregistered max', 'unregistered_max'), ('ECC + average', 'ecc_average'),
                 ('TarFuse, zero flow', 'model_zero_flow'))


def _fmt(value, digits=4):
    if value is None:
        return 'n/a'
    return f'{value:.{digits}f}'


def _sizes(speed, shown=4):
    """Return ``', images of 240x320, ... px (height x width)'`` (``''`` in older results)."""
    sizes = [f'{height}x{width}' for height, width in speed.get('image_sizes') or ()]
    if not sizes:
        return ''
    more = f', ... ({len(sizes)} sizes in all)' if len(sizes) > shown else ''
    return f', images of {", ".join(sizes[:shown])}{more} px (height x width)'


def _fine_passes(result):
    """Return the weights line's words on ``--fine-passes`` ('' when it was not given)."""
    if result.get('fine_passes') is None:
        return ''
    if result.get('orientation_global_stage') is False:
        return (f' (--fine-passes {result["fine_passes"]} had no effect: the model has no '
                f'orientation global stage)')
    return f' with {result["global_fine_passes"]} fine passes in the global stage (--fine-passes)'


def _header(result):
    speed = result['speed']
    lines = [REPORT_TITLE, '',
             f'- data: `{result["dataset"]}` split `{result["split"]}` '
             f'({result["num_pairs"]} pairs, max side {result["max_side"] or "native"}'
             + (f'; the network on frames shrunk to a longer side of '
                f'{result["input_max_long_side"]} px' if result.get('input_max_long_side')
                else '') + ')',
             f'- weights: `{result["weights"]}`' + _fine_passes(result),
             f'- deformation: `{result["deform"]}` (per pair: {result["deformation_sources"]}), '
             f'seed {result["seed"]}',
             f'- stored IR: {result.get("stored_ir", "aligned")}',
             f'- speed: {_fmt(speed["ms_per_pair"], 1)} ms per pair '
             f'(model {_fmt(speed["model_ms_per_pair"], 1)} ms) on '
             f'{speed["device"]}, {speed["threads"]} CPU threads{_sizes(speed)}']
    if speed.get('machine'):  # not in older results
        lines.append(f'- machine: {speed["machine"]}'
                     + (f'; GPU: {speed["gpu"]}' if speed.get('gpu') else ''))
    lines.append('')
    if result['skipped_without_ground_truth']:
        lines += [f'- skipped (no ground-truth field): '
                  f'{len(result["skipped_without_ground_truth"])} pairs', '']
    if result.get('stored_ir', 'aligned') != 'aligned':
        lines += ['The stored IR is NOT aligned with the visible image (real unregistered '
                  'cameras or landmark pairs): there is no aligned IR to compare with, so EPE, '
                  'MSE, NCC and the fusion metrics that compare the fused image with the IR '
                  '(CC, Qabf, Qcv, SSIM, MI, VIF, SCD) are not computed (n/a). Registration is '
                  'scored by edge alignment with the visible image and, where the set has '
                  'them, landmark errors.', '']
    return lines


def _fusion_lines(result):
    keys = list(metrics.FUSION_METRICS)
    lines = ['## Fusion (mean over pairs; Qcv: lower is better)', '',
             '| method | ' + ' | '.join(keys) + ' |', '|---' * (len(keys) + 1) + '|']
    rows = [('TarFuse', result['fusion'])]
    rows += [(name, b['fusion']) for name, b in result['baselines'].items() if b['fusion']]
    for name, values in rows:
        lines.append(f'| {name} | ' + ' | '.join(_fmt(values.get(k), 3) for k in keys) + ' |')
    bound = (result.get('fusion_bounds') or {}).get('CC')
    if bound is not None:
        lines += ['', f'The highest CC any fused image can reach with these sources: '
                  f'{_fmt(bound, 3)} (mean over the pairs of sqrt((1 + rho) / 2), rho the '
                  'Pearson correlation of the aligned IR and the visible luma).']
    return lines


def _registration_row(name, values, with_landmarks):
    values = values or {}
    cells = [_fmt(values.get('MSE')), _fmt(values.get('NCC')), _fmt(values.get('EPE'), 2),
             _fmt(values.get('edge_alignment'))]
    if with_landmarks:
        cells.append(_fmt(values.get('landmark_error_px'), 2))
    return f'| {name} | ' + ' | '.join(cells) + ' |'


def _registration_lines(result):
    reg = result['registration']
    with_landmarks = bool(reg.get('landmark_pairs'))
    header, rule = '| method | MSE | NCC | EPE | edge alignment |', '|---|---|---|---|---|'
    if with_landmarks:
        header += ' landmark error (px) |'
        rule += '---|'
    lines = ['', '## Registration (MSE/NCC vs the aligned IR, EPE in px; edge alignment vs the '
             'visible image, higher is better)', '', header, rule,
             _registration_row('TarFuse', reg, with_landmarks),
             _registration_row('unregistered input', reg['unregistered'], with_landmarks)]
    for name in ('ecc_average', 'model_zero_flow'):
        lines.append(_registration_row(name, result['baselines'][name]['registration'],
                                       with_landmarks))
    reduction = reg['epe_reduction']
    better = reg.get('edge_alignment_better_than_unregistered_fraction')
    if reg.get('EPE') is not None:
        lines += ['', f'EPE in {pixel_units(result["max_side"])}.']
    # No EPE without an aligned IR (or with no deformation): 'n/a', not 'n/a %'.
    cut = 'n/a' if reduction is None else f'{_fmt(100 * reduction, 1)} %'
    lines += ['', f'EPE reduction vs the unregistered input: {cut}. '
              f'Edge alignment above the unregistered input on '
              f'{_fmt(None if better is None else 100 * better, 1)} % of the pairs. '
              f'ECC failures (identity kept): {result["ecc_failures"]}.']
    if with_landmarks:
        lines.append(f'Landmark errors: mean over the {reg["landmark_pairs"]} pairs with '
                     f'landmarks, in pixels of the evaluated visible image.')
    return lines + ['']


def _contrast_lines(result):
    model = result['fusion'].get('target_contrast') if result['fusion'] else None
    if not model:
        return []
    groups = [g for g in ('all', 'day', 'night') if g == 'all' or model[g]['pairs']]
    lines = ['## Target contrast (labelled person and car boxes)', '',
             'Contrast of each box to its surroundings (mean inside minus mean of a ring '
             'around it, grey levels), over the boxes whose IR contrast is positive; ratio = '
             'fused contrast / IR contrast (1 keeps the IR targets, 0 loses them, < 0 inverts '
             'them).', '',
             '| | ' + ' | '.join(groups) + ' |', '|---' * (len(groups) + 1) + '|',
             '| pairs | ' + ' | '.join(str(model[g]['pairs']) for g in groups) + ' |',
             '| boxes counted / person+car boxes | ' + ' | '.join(
                 f'{model[g]["counted_boxes"]} / {model[g]["boxes"]}' for g in groups) + ' |',
             '| IR contrast | ' + ' | '.join(_fmt(model[g]['ir'], 2) for g in groups) + ' |',
             '| visible contrast | ' + ' | '.join(
                 _fmt(model[g]['visible'], 2) for g in groups) + ' |']
    for label, name in CONTRAST_ROWS:
        fusion = result['fusion'] if name is None else result['baselines'][name]['fusion']
        values = (fusion or {}).get('target_contrast')
        if not values:
            continue
        lines.append(f'| {label}: fused contrast | ' + ' | '.join(
            _fmt(values[g]['fused'], 2) for g in groups) + ' |')
        lines.append(f'| {label}: **ratio** | ' + ' | '.join(
            _fmt(values[g]['ratio'], 3) for g in groups) + ' |')
    return lines + ['']


def _teacher_rows(result):
    rows = []
    for name, teacher in (result.get('teachers') or {}).items():
        for source in ('visible', 'ir', 'visible+ir'):
            if teacher.get(source):
                rows.append((f'teacher {name} ({source})', teacher[source]))
    return rows


def _dropped_names(labels):
    """Return ``'(truck 2, ...) '`` for the dropped boxes by class, or ``''``."""
    by_class = labels.get('dropped_boxes_by_class') or {}
    if not by_class:
        return ''
    return '(' + ', '.join(f'{name} {count}' for name, count in by_class.items()) + ') '


def _detection_lines(result):
    det = result['detection']
    if det is None:
        return ['## Detection', '', 'No labels in this split: detection not evaluated.', '']
    names = list(det['per_class'])
    labels = result['detection_labels']
    lines = ["## Detection (AP by ultralytics' validation code, visible frame)", '',
             f'{labels["labelled_pairs"]} labelled pairs, {det["num_gt"]} boxes; '
             f'{labels["dropped_boxes_unknown_class"]} boxes of classes unknown to the model '
             f'{_dropped_names(labels)}dropped.', '',
             _row(['method', 'mAP@0.5', 'mAP@0.5:0.95'] + [f'AP50 {n}' for n in names]),
             '|---|---|---|' + '---|' * len(names)]
    rows = [('TarFuse (fused)', det)] + [(name, result['baselines'][name]['detection'])
                                         for name in ('model_zero_flow', 'visible_only',
                                                      'ir_only')]
    rows += _teacher_rows(result)
    for name, d in rows:
        lines.append(_row([name, _fmt(d['map50']), _fmt(d['map50_95'])]
                          + [_fmt(d['per_class'].get(n, {}).get('ap50')) for n in names]))
    return lines + ['']


def _row(cells):
    """Return one Markdown table row of ``cells`` (as many cells as given, none empty)."""
    return '| ' + ' | '.join(cells) + ' |'


def _goal_lines(result):
    reg, fusion, det = result['registration'], result['fusion'], result['detection']
    checks = [('EPE reduction', reg['epe_reduction'], GOALS['EPE reduction'], '>='),
              ('NCC', reg['NCC'], GOALS['NCC'], '>='), ('MSE', reg['MSE'], GOALS['MSE'], '<='),
              ('CC', fusion['CC'], GOALS['CC'], '>='),
              ('Qabf', fusion['Qabf'], GOALS['Qabf'], '>='),
              ('SSIM', fusion['SSIM'], GOALS['SSIM'], '>=')]
    for key in ('Qabf', 'SSIM'):
        best = max(b['fusion'][key] for b in result['baselines'].values() if b['fusion'])
        checks.append((f'{key} above every baseline', fusion[key], best, '>'))
    contrast = (fusion or {}).get('target_contrast')
    if contrast and contrast['night']['pairs']:
        checks.append(('night target contrast ratio', contrast['night']['ratio'],
                       GOALS['night target contrast ratio'], '>='))
    if det is not None:
        for name in ('visible_only', 'ir_only'):
            other = result['baselines'][name]['detection']['map50']
            checks.append((f'mAP@0.5 above {name}', det['map50'], other, '>'))
    lines = ['## Goals (set on RoadScene test / MSRS; informative elsewhere)', '',
             '| figure | measured | goal | met |', '|---|---|---|---|']
    for name, value, goal, op in checks:
        met = None
        if value is not None and goal is not None:
            met = {'>=': value >= goal, '<=': value <= goal, '>': value > goal}[op]
        lines.append(f'| {name} | {_fmt(value)} | {op} {_fmt(goal)} | '
                     f'{"yes" if met else ("no" if met is not None else "n/a")} |')
    bound = (result.get('fusion_bounds') or {}).get('CC')
    if bound is not None and bound < GOALS['CC']:
        lines += ['', f'No fused image can meet the CC goal on these pairs: their sources '
                  f'allow at most {_fmt(bound)} (see Fusion).']
    return lines + ['']


def render_report(result):
    """Return the Markdown report of a ``metrics.json`` dict."""
    aligned = result.get('stored_ir', 'aligned') == 'aligned'
    lines = _header(result) + _fusion_lines(result) + _registration_lines(result)
    lines += _contrast_lines(result) + _detection_lines(result)
    if aligned:
        lines += _goal_lines(result)
    lines += ['## Conventions', '']
    lines += [f'- {k}: {v}' for k, v in result['conventions'].items()]
    if aligned:
        lines.append('- fused images are compared with the ALIGNED IR; baselines see the same '
                     'deformed IR; `ir_only` gets the aligned IR (nothing to register to '
                     'without a visible image).')
    lines += ['- figures: `figures/<stem>_grid.png`, `figures/<stem>_checkerboard.png`.', '']
    return '\n'.join(lines)

"""The evaluation protocol and :func:`evaluate`.

Per pair (everything in the VISIBLE frame):

1. The stored pair is the aligned IR and the visible image, prepared as the engine prepares its
   inputs (:mod:`~tarfuse_ros.evaluation.inputs`): the visible luma ``vi_y`` is the network's.
   The aligned IR may be of another size than the visible image, not of another aspect ratio:
   such pairs are refused before any work
   (:func:`~tarfuse_ros.core.data.check_aspect_ratios`), not stretched.
2. The IR is deformed: ``dataset`` uses ``synthetic_misaligned/ir_warp`` and its ground-truth
   field (``disp`` is the APPLIED field; the registration reference is its inverse,
   ``deform.invert_flow``); ``synthetic`` draws ``deform.random_deformation`` with the default
   :class:`~tarfuse_ros.core.deform.DeformConfig`, seeded per pair from ``seed`` and the stem;
   ``none`` leaves the IR aligned (zero reference flow); ``auto`` uses the data set's field where
   the pair has one and a seeded synthetic one otherwise.
3. The model (:class:`~tarfuse_ros.core.engine.FusionEngine`) fuses the deformed IR with the
   visible image.
4. Metrics (:mod:`tarfuse_ros.core.metrics`): fusion metrics of the fused luma against the
   ALIGNED IR and ``vi_y``; registration MSE/NCC of the registered IR against the aligned IR
   (images in [0, 1]) and EPE of the predicted flow against the reference; the unregistered
   input (deformed IR, zero flow) is scored the same way. Detection: AP@0.5 and
   AP@0.5:0.95 (:mod:`~tarfuse_ros.evaluation.detection`: ultralytics' validation code) of
   the detections (visible pixels) against the labels (visible frame), where the set has
   labels; label classes are matched to the checkpoint's class names by name.
5. Baselines on the same inputs (:mod:`~tarfuse_ros.evaluation.baselines`).
   Target contrast (:mod:`~tarfuse_ros.evaluation.contrast`), where the pair has labels and an
   aligned IR: each labelled person/car box's contrast to its surroundings in the aligned IR,
   the visible luma and the fused luma of the model and of the baselines that fuse; pooled
   over pairs per day/night group. Teachers (``teachers``, optional;
   :mod:`~tarfuse_ros.evaluation.teachers`): the COCO teachers' detections on the same
   visible and aligned IR images, scored like the model's.
6. Ground-truth-free registration score for the model, the unregistered input, ECC and the
   zero-flow model: :func:`~tarfuse_ros.core.metrics.edge_alignment` of the registered IR and
   ``vi_y`` over the pixels the registered IR really covers, and the fraction of pairs where the
   model beats the unregistered input on it. Where the data set has ``landmarks/<stem>.txt``
   (rows ``x_ir y_ir x_vi y_vi``, pixels), the landmark error
   :func:`~tarfuse_ros.core.metrics.landmark_error` of each flow, with IR landmarks mapped to
   the visible frame's pixel grid the way the IR is resized.

Sets WITHOUT an aligned IR (``stored_ir='unregistered'``; ``'auto'`` picks it for sets with
``landmarks/``): the stored IR IS the unregistered input (deformation ``none``; ``synthetic``
and ``dataset`` are refused: there is no reference for them; the IR may be of any size and
aspect ratio, as the engine takes it). Everything that needs the aligned IR is reported as n/a
(None): EPE, MSE, NCC, EPE reduction, and the fusion metrics that compare the fused image with
the IR (against a misaligned IR they would reward not registering). The
reference-free fusion metrics (EN, SD, SF, AG), edge alignment and landmark errors are reported.

Fusion and registration figures are means over pairs; detection is pooled over all labelled
pairs (COCO). Speed: mean wall time of ``FusionEngine.infer`` per pair after one warm-up call.
"""

from dataclasses import dataclass
import json
import logging
import os
from pathlib import Path
import shutil
import tempfile
import time

import numpy as np
from tarfuse_ros.console import InterruptedWhenComplete, interrupts_held
from tarfuse_ros.core import data, metrics
from tarfuse_ros.core.files import (lock_exclusive, output_problem, remove_stale_outputs,
                                    remove_unclaimed, write_text_atomic)
from tarfuse_ros.core.images import unit_plane
from tarfuse_ros.core.runtime import torch_settings
from tarfuse_ros.evaluation import inputs
from tarfuse_ros.evaluation.aggregate import Scores
from tarfuse_ros.evaluation.baselines import score_baselines
from tarfuse_ros.evaluation.contrast import illumination, read_illumination
from tarfuse_ros.evaluation.figures import save_pair_figures
from tarfuse_ros.evaluation.options import EvalOptions
from tarfuse_ros.evaluation.report import render_report, REPORT_TITLE
from tarfuse_ros.evaluation.scoring import fusion_scores, luma, registration_scores
from tarfuse_ros.training.datasets import resolve_dataset_dir

__all__ = ['Case', 'evaluate', 'InterruptedWhenComplete', 'make_case', 'prior_in_visible_frame']

_LOG = logging.getLogger('tarfuse-eval')


@dataclass(frozen=True)
class Case:
    """One pair as the protocol scores it (all planes in the evaluated visible frame).

    ``ir`` / ``ir_unit``: the aligned IR (``ir_unit`` None without an aligned IR);
    ``vi`` / ``vi_y``: the visible image and its luma (uint8); ``vi_y_unit`` the luma in [0, 1];
    ``deformed`` / ``deformed_unit``: the IR given to the model; ``flow_ref``: the reference flow
    (px, HxWx2); ``content``: where the deformed IR holds content; ``landmarks``: mapped
    ``(ir_points, vi_points)`` or None.
    """

    stem: str
    mode: str
    ir: np.ndarray
    ir_unit: np.ndarray
    vi: np.ndarray
    vi_y: np.ndarray
    vi_y_unit: np.ndarray
    deformed: np.ndarray
    deformed_unit: np.ndarray
    flow_ref: np.ndarray
    content: np.ndarray
    landmarks: tuple

    @property
    def size(self):
        return self.vi_y.shape[:2]


def make_case(dataset_dir, stem, mode, options, aligned, prior=None):
    """Load, prepare and deform one pair (steps 1 and 2 of the protocol).

    ``prior``: the rig's calibration prior (``--prior``); a pair whose stored IR or visible
    image has another aspect ratio than it was made for is refused (``ValueError``).
    """
    ir_raw, vi_raw = data.load_pair(dataset_dir, stem)
    if prior is not None:
        prior.homography_for(ir_raw.shape[1::-1], vi_raw.shape[1::-1])
    pair = inputs.prepare(ir_raw, vi_raw, options.max_side, name=stem)
    deformed, flow_ref, content = inputs.deform_pair(dataset_dir, stem, pair.ir, mode,
                                                     options.seed, pair.scale)
    height, width = pair.vi_y.shape
    landmarks = inputs.load_landmarks(dataset_dir, stem)
    if landmarks is not None:
        landmarks = (inputs.to_frame(landmarks[0], ir_raw.shape[1::-1], (width, height)),
                     inputs.to_frame(landmarks[1], vi_raw.shape[1::-1], (width, height)))
    return Case(stem, mode, pair.ir, unit_plane(pair.ir) if aligned else None, pair.vi,
                pair.vi_y, unit_plane(pair.vi_y), deformed, unit_plane(deformed), flow_ref,
                content, landmarks)


def _select_stems(dataset_dir, options, deform, with_disp):
    """Return ``(stems, skipped)``: the split's stems (with a field for ``dataset``).

    A split without pairs is refused, and so is a list file that names a stem twice (its pair
    would count twice).
    """
    stems = data.read_split(dataset_dir, options.split, unique=True)
    if not stems:
        # Images there, none paired: say which (IR and visible images are paired by name).
        notes = data.unpaired_notes(dataset_dir) if options.split == 'all' else []
        unpaired = (f' ({"; ".join(notes)}; an IR and a visible image pair up by their '
                    f'file name without the extension)') if notes else ''
        raise ValueError(f'split {str(options.split)!r} of {str(dataset_dir)!r} lists no pair'
                         f'{unpaired}: nothing to evaluate')
    if options.split == 'all':
        _warn_unpaired(dataset_dir)
    skipped = []
    if deform == 'dataset':
        skipped = [s for s in stems if s not in with_disp]
        stems = [s for s in stems if s in with_disp]
        if not stems:
            raise ValueError(
                f'--deform dataset: no pair of split {options.split!r} in '
                f'{str(dataset_dir)!r} has a ground-truth field (synthetic_misaligned/disp); '
                f'use --deform synthetic')
        if skipped:
            _LOG.warning('--deform dataset: skipping %d of %d pairs without a ground-truth '
                         'field', len(skipped), len(skipped) + len(stems))
    if options.max_pairs is not None:
        stems = stems[:int(options.max_pairs)]
    return stems, skipped


def _warn_unpaired(dataset_dir, shown=5):
    """Warn of the images that split ``all`` leaves out: those without a partner image."""
    for note in data.unpaired_notes(dataset_dir, shown):
        _LOG.warning('--split all: %s', note)


# Shared sets of real, unregistered camera pairs without landmarks/ (their READMEs say so):
# deforming their IR for aligned-IR metrics would score against a reference that is not one.
UNREGISTERED_SETS = ('cvc14_misaligned',)


def _stored_ir(dataset_dir, options):
    """Return ``(stored_ir, deform)`` with ``auto`` resolved; refuse impossible requests."""
    stored_ir = options.stored_ir
    if stored_ir == 'auto':
        unregistered = (dataset_dir / inputs.LANDMARKS_DIR).is_dir() \
            or dataset_dir.name in UNREGISTERED_SETS
        stored_ir = 'unregistered' if unregistered else 'aligned'
    deform = options.deform
    if stored_ir != 'aligned':
        if deform not in ('auto', 'none'):
            raise ValueError(
                f'--deform {deform}: the stored IR of {str(dataset_dir)!r} is not aligned '
                f'(--stored-ir unregistered), so a deformation of it has no reference; '
                f'use --deform none')
        deform = 'none'
    return stored_ir, deform


def _check_aligned(dataset_dir, stems, options):
    """Refuse the pairs of a set scored as aligned whose IR has another aspect ratio."""
    chosen = ('--stored-ir aligned' if options.stored_ir == 'aligned' else
              '--stored-ir auto, which takes a set without landmarks/ as aligned')
    data.check_aspect_ratios(
        [(dataset_dir, stem) for stem in stems],
        f'the set is evaluated as aligned ({chosen}): its IR image is the visible frame, at '
        f'any size, and the reference of the deformations and of the fusion, registration and '
        f'detection scores, so such a pair is not aligned as stored or not a pair, and '
        f'stretched it would be scored against a wrong reference: align its IR image to the '
        f'visible one, leave it out of the split (a list file without it), or evaluate cameras '
        f'not registered to each other with --stored-ir unregistered (no aligned-IR scores)')


def evaluate(data_dir, weights, out_dir, options=None, **settings):
    """Run the evaluation protocol (module docstring) and write the outputs.

    Args:
        data_dir: data set folder (or the name of a shared set).
        weights: checkpoint path (``.safetensors``).
        out_dir: output folder (created): ``metrics.json``, ``report.md``, ``figures/``.
        options: :class:`~tarfuse_ros.evaluation.options.EvalOptions`; or give its fields
            as keyword arguments (``split='test'``, ``deform='auto'``, ...).

    Returns:
        the metrics dict written to ``metrics.json``.

    Raises:
        ValueError: bad options, a data set not found, an output folder that cannot be made,
            nothing to evaluate, or pairs of a set evaluated as aligned whose IR and visible
            images differ in aspect ratio (:func:`~tarfuse_ros.core.data.check_aspect_ratios`).
        InterruptedWhenComplete: a ``KeyboardInterrupt`` (SIGINT, SIGTERM on the main thread)
            that came while the complete results were put in place: they all were first
            (its ``result``). One that comes earlier leaves an earlier evaluation's as they
            were.

    """
    options = options if options is not None else EvalOptions(**settings)
    with torch_settings(threads=options.threads):
        return _evaluate(data_dir, weights, Path(out_dir), options)


def _evaluate(data_dir, weights, out_dir, options):
    from tarfuse_ros.core.engine import FusionEngine
    dataset_dir = resolve_dataset_dir(data_dir)
    stored_ir, deform = _stored_ir(dataset_dir, options)
    aligned = stored_ir == 'aligned'
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f'--out {str(out_dir)!r} is a file: give a folder')
    problem = output_problem(out_dir, folder=True)  # before the slow work
    if problem:
        raise ValueError(f'--out {str(out_dir)!r} cannot be used ({problem}): give a folder')
    figures = out_dir / 'figures'
    if os.path.lexists(figures) and not figures.is_dir():  # a link to a folder is one
        kind = 'a link to nothing' if figures.is_symlink() else 'a file'
        raise ValueError(f'--out {str(out_dir)!r} holds {kind} named figures, where the '
                         f'evaluation writes its figures folder: move it, or give another --out')
    foreign = _foreign_results(out_dir)
    if foreign:  # an evaluation replaces its own results only
        raise ValueError(f'--out {str(out_dir)!r} holds {" and ".join(foreign)}, which no '
                         f'evaluation wrote and this one would replace: give another --out '
                         f'(or move them)')
    with_disp = set(data.misaligned_stems(dataset_dir)) if aligned else set()
    stems, skipped = _select_stems(dataset_dir, options, deform, with_disp)
    if aligned:
        _check_aligned(dataset_dir, stems, options)
    nms = {'conf_threshold': options.conf, 'iou_threshold': options.iou, 'max_detections': 100}
    prior = None
    if options.prior is not None:  # the rig's calibration prior (tarfuse-calibrate)
        from tarfuse_ros.core.prior import load_prior_yaml
        prior = load_prior_yaml(options.prior)
        if prior is None:
            raise ValueError(f'--prior {options.prior}: the file sets no registration.prior')
        _check_prior_sizes(dataset_dir, stems, prior, options.prior)
        # The engine is given the IR resized to the visible frame (make_case).
        nms['registration_prior'] = prior_in_visible_frame(prior)
    nms['input_max_long_side'] = options.input_max_long_side
    nms['fine_passes'] = options.fine_passes
    engine = FusionEngine(weights, device=options.device, **nms)
    # A second engine for the zero-flow ablation: CUDA graphs would replay without the hook.
    zero_engine = FusionEngine(weights, device=options.device, cuda_graph='off', **nms)
    scores = Scores(list(engine.class_names))
    lookup = inputs.class_lookup(dataset_dir, scores.class_names, options.labels_dir)
    # Label ids index the label folder's (else the set's) classes.txt; without one, the model's
    # classes. Every label file is checked now, so a bad line is refused before the first pair.
    label_classes = data.read_classes(dataset_dir, options.labels_dir)
    named = label_classes is not None
    label_classes = label_classes if named else scores.class_names
    labels = [data.load_labels(dataset_dir, stem, options.labels_dir, label_classes)
              for stem in stems]
    if not named and any(boxes is not None and len(boxes) for boxes in labels):
        # Labels of another class order would be scored as the wrong classes.
        _LOG.warning('no classes.txt names the class ids of %s: they are read as the ids of '
                     'the model (%s); if they mean other classes, write their names, one a line '
                     'in id order, to %s', str(Path(dataset_dir) / options.labels_dir),
                     ', '.join(f'{i} {name}' for i, name in enumerate(scores.class_names)),
                     str(Path(dataset_dir) / 'classes.txt'))
    unknown = _unknown_classes(labels, lookup, label_classes)
    if unknown:
        _LOG.warning('the model does not know the label classes %s: those %d boxes are left out '
                     'of the detection scores (%s)',
                     ', '.join(f'{name} ({count} box{"es" if count > 1 else ""})'
                               for name, count in unknown.items()),
                     sum(unknown.values()),
                     f'its classes: {", ".join(scores.class_names)}' if scores.class_names
                     else 'it has no detection head: it detects no class')
    if options.teachers and all(boxes is None for boxes in labels):
        # Its rows score detections against the labels: without any, none would be written.
        raise ValueError(f'--teacher: none of the {len(stems)} pairs has a label file in '
                         f'{str(Path(dataset_dir) / options.labels_dir)!r}, so no teacher '
                         f'can be scored; leave out --teacher or evaluate labelled pairs '
                         f'(--labels names another label folder)')
    teachers = _load_teachers(options, scores.class_names)
    day_night = read_illumination(dataset_dir)
    created = [folder for folder in (out_dir, out_dir / 'figures') if not folder.exists()]
    try:  # only now: a request refused above leaves no output folder behind
        (out_dir / 'figures').mkdir(parents=True, exist_ok=True)
        remove_unclaimed(out_dir.glob(_NEW_FIGURES))  # left by killed runs
        for name in ('metrics.json', 'report.md'):  # so are those of their writes
            remove_stale_outputs(out_dir / name)
        # This run's figures wait here: an earlier evaluation's results stay whole until this
        # one has its own (a failed or interrupted rerun deleted them at its start).
        new_figures, claim = _new_figures_folder(out_dir)
    except OSError as exc:
        where = f'{exc.filename}: ' if exc.filename and Path(exc.filename) != out_dir else ''
        raise ValueError(f'--out {str(out_dir)!r} cannot be created ({where}{exc.strerror}): '
                         f'give a folder') from None
    iterator, stops = stems, []
    if options.progress:
        from tqdm import tqdm
        iterator = tqdm(stems, desc='tarfuse-eval', unit='pair')
    try:
        for index, stem in enumerate(iterator):
            mode = deform if deform != 'auto' else \
                ('dataset' if stem in with_disp else 'synthetic')
            case = make_case(dataset_dir, stem, mode, options, aligned, prior)
            # As the engine refuses it, but naming this tool's option (EvalOptions' too).
            engine.check_network_size(case.vi.shape[:2], '--input-max-long-side')
            _score_pair(case, engine, zero_engine, scores, index, options, dataset_dir, lookup,
                        new_figures, teachers, illumination(stem, day_night))
        result = scores.result(
            dataset=str(dataset_dir), split=str(options.split), weights=str(weights),
            deform=deform, stored_ir=stored_ir, seed=int(options.seed),
            max_side=options.max_side, pairs=stems, skipped=skipped, device=engine.device,
            conf=options.conf, iou=options.iou, labels_dir=options.labels_dir,
            dropped_classes=unknown, teachers=teachers)
        result['input_max_long_side'] = options.input_max_long_side
        # --fine-passes as given (None: the checkpoint's own), the passes the global stage ran.
        result['fine_passes'] = options.fine_passes
        result['global_fine_passes'] = engine.fine_passes
        # Without the stage (the medical model) --fine-passes 0 acts on nothing (as reported).
        result['orientation_global_stage'] = bool(engine.scale_candidates)
        report = render_report(result)
        # All of this run's results or none of them: an interrupt while its figures were moved
        # in left some of the earlier evaluation's figures, some of this one's, and the earlier
        # metrics.json. It now waits until they are all in place (as does one while the files
        # are written, each whole or not at all).
        with interrupts_held(stops):
            _replace_figures(out_dir / 'figures', new_figures)
            write_text_atomic(out_dir / 'metrics.json', json.dumps(result, indent=2) + '\n')
            write_text_atomic(out_dir / 'report.md', report)
    except BaseException:
        # A pair refused (e.g. a --prior for another aspect ratio), an interrupt (also while
        # the results are gathered), figures that cannot be moved into figures/: drop this
        # run's figures, keep an earlier evaluation's results, and remove the folders this run
        # created while they are still empty.
        shutil.rmtree(new_figures, ignore_errors=True)
        for folder in reversed(created):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    finally:
        if claim is not None:
            os.close(claim)
    if stops:
        raise InterruptedWhenComplete(result, 'interrupted once the results were complete')
    return result


# This run's figures folder until they are done, in --out: a run killed (SIGKILL, the machine
# off) leaves it behind, and the next run into that --out removes it.
_NEW_FIGURES = '.figures.*.tmp'


def _new_figures_folder(out_dir):
    """Create this run's temporary figures folder in ``out_dir``; return it and its claim.

    The claim (:func:`_claim_figures`) lasts until it is closed, or the process ends: a folder
    of :data:`_NEW_FIGURES` that no one claims was left by a killed run. The folder gets its
    name once claimed, so that another run never finds it unclaimed. The claim is None on a
    file system without ``flock``.
    """
    unclaimed = Path(tempfile.mkdtemp(prefix='.figures.', suffix='.new', dir=out_dir))
    claim = None
    try:
        claim = _claim_figures(unclaimed, os.open(unclaimed, os.O_RDONLY | os.O_DIRECTORY))
        folder = unclaimed.with_suffix('.tmp')
        unclaimed.rename(folder)
    except OSError:
        if claim is not None:
            os.close(claim)
        unclaimed.rmdir()
        raise
    return folder, claim


def _claim_figures(folder, descriptor):
    """Return ``descriptor`` (of ``folder``) once it holds an exclusive ``flock``, else None.

    On a file system without ``flock`` (some network and overlay mounts) the descriptor is
    closed and the run goes on unclaimed, with a warning: there no run can tell a killed run's
    leftover folder from a running one's, so none is removed (:func:`remove_unclaimed` needs
    the lock too) and the user removes them.

    Raises:
        OSError: another process holds the lock (the folder is another run's).

    """
    def no_flock(reason):
        _LOG.warning('--out %s: its file system cannot lock files (flock: %s); the evaluation '
                     'goes on without the lock, but folders %s that killed runs leave there '
                     'are not removed: delete them when no evaluation runs into this --out',
                     str(folder.parent), reason, _NEW_FIGURES)

    return lock_exclusive(descriptor, no_flock=no_flock)


def _replace_figures(figures, new_figures):
    """Replace an earlier evaluation's figures in ``figures`` by this run's (``new_figures``).

    Only the evaluation's own PNGs are removed (the user's other files there stay); the
    temporary folder ``new_figures`` is emptied into ``figures`` and removed.
    """
    for old in (*figures.glob('*_grid.png'), *figures.glob('*_checkerboard.png')):
        old.unlink(missing_ok=True)
    for path in sorted(new_figures.iterdir()):
        # figures/ may be a link to another file system (os.replace: 'Invalid cross-device
        # link' after the whole run, no metrics.json written); shutil.move copies there.
        shutil.move(path, figures / path.name)
    new_figures.rmdir()


def _foreign_results(out_dir):
    """Return the names of ``metrics.json`` / ``report.md`` in ``out_dir`` no evaluation wrote.

    An earlier evaluation's are replaced; a user's own (``--out .`` in a folder holding a
    ``report.md``) were deleted without a word, and a folder of that name raised
    IsADirectoryError once the model had run.
    """
    foreign = []
    metrics_path, report_path = out_dir / 'metrics.json', out_dir / 'report.md'
    if metrics_path.exists() or metrics_path.is_symlink():
        try:
            metrics_json = json.loads(metrics_path.read_text(encoding='utf-8'))
        except (OSError, UnicodeDecodeError, ValueError):
            metrics_json = None
        keys = metrics_json.keys() if isinstance(metrics_json, dict) else ()
        if not {'num_pairs', 'registration'} <= set(keys):
            foreign.append(metrics_path.name)
    if report_path.exists() or report_path.is_symlink():
        try:
            with open(report_path, encoding='utf-8') as stream:
                first = stream.readline().rstrip('\n')
        except (OSError, UnicodeDecodeError):
            first = None
        if first != REPORT_TITLE:
            foreign.append(report_path.name)
    return foreign


def _check_prior_sizes(dataset_dir, stems, prior, path, shown=5):
    """Refuse, before the model runs, the pairs of another aspect ratio than ``prior``'s.

    A rig's prior fits the image sizes it was made for (at any scale); each pair was checked
    as it came (make_case), so a set of mixed sizes ran until its first such pair.
    """
    refused = []
    for stem in stems:
        ir_wh, vi_wh = (data.stored_size(file) for file in data.pair_files(dataset_dir, stem))
        if ir_wh is None or vi_wh is None:
            continue  # unreadable: the loader names it
        try:
            prior.homography_for(ir_wh, vi_wh)
        except ValueError:
            refused.append(f'{stem} (IR {ir_wh[0]}x{ir_wh[1]}, visible {vi_wh[0]}x{vi_wh[1]})')
    if refused:
        more = f', and {len(refused) - shown} more' if len(refused) > shown else ''
        made = (f'IR {prior.ir_size[0]}x{prior.ir_size[1]}, visible '
                f'{prior.visible_size[0]}x{prior.visible_size[1]}')
        raise ValueError(
            f'--prior {path} was made for images of {made}, and {len(refused)} of the '
            f'{len(stems)} pairs {"has" if len(refused) == 1 else "have"} another aspect ratio: '
            f'{", ".join(refused[:shown])}{more}; '
            f'a prior fits one camera pair: evaluate only the pairs of that rig (a list file), or '
            f'run tarfuse-calibrate for them')


def prior_in_visible_frame(prior):
    """Return the prior for an IR image already resized to the visible frame.

    The protocol resizes the stored IR to the visible frame before the engine sees it; the
    engine would then check and scale the prior for an IR of the visible image's size, so a
    prior made for an IR of another aspect ratio (a 640x512 thermal camera beside a 640x480
    visible one) was refused. This prior maps the resized IR's pixels as the given one maps
    the stored IR's (:func:`~tarfuse_ros.core.prior.resize_matrix`).
    """
    from tarfuse_ros.core.prior import make_prior, resize_matrix
    matrix = prior.homography @ np.linalg.inv(resize_matrix(prior.ir_size, prior.visible_size))
    return make_prior(matrix / matrix[2, 2], prior.visible_size, prior.visible_size)


def _unknown_classes(labels, lookup, names):
    """Return ``{class name: boxes}`` of the label classes the model does not know.

    ``labels``: the pairs' YOLO labels (None: unlabelled); ``lookup``: label id -> model id (-1:
    unknown; None: label ids are model ids); ``names``: the label classes.
    """
    counts = {}
    if lookup is None:
        return counts
    for rows in labels:
        for class_id in (() if rows is None else rows[:, 0].astype(np.int64)):
            if lookup[class_id] < 0:
                counts[names[class_id]] = counts.get(names[class_id], 0) + 1
    return counts


def _load_teachers(options, class_names):
    """Return ``{name: TeacherReference}`` for ``options.teachers`` (empty without)."""
    if not options.teachers:
        return {}
    from tarfuse_ros.evaluation.teachers import load_teacher, TeacherReference
    threads = int(options.threads) if options.threads is not None else 1
    out = {}
    for spec in options.teachers:
        teacher = load_teacher(spec, threads=threads)
        name = spec if spec not in out else f'{spec}_{len(out)}'
        out[name] = TeacherReference(teacher, class_names, options.conf, options.iou)
    return out


def _score_pair(case, engine, zero_engine, scores, index, options, dataset_dir, lookup, figures,
                teachers, group):
    """Run the model, the baselines and the teachers on one pair; add every figure."""
    if index == 0:
        engine.infer(case.deformed, case.vi)  # warm-up (allocations, lazy initialisation)
    start = time.perf_counter()
    result = engine.infer(case.deformed, case.vi)
    wall_ms = (time.perf_counter() - start) * 1e3
    model = {'fusion': fusion_scores(luma(result.fused), case.ir_unit, case.vi_y_unit),
             'registration': registration_scores(case, result.registered_ir, result.flow_px)}
    unregistered = registration_scores(case, case.deformed_unit, np.zeros_like(case.flow_ref))
    baselines, ecc, zero_result, fused = score_baselines(case, unregistered, zero_engine)
    labels = data.load_labels(dataset_dir, case.stem, options.labels_dir)
    truth, dropped, predictions = None, 0, None
    if labels is not None:
        height, width = case.size
        truth, dropped = inputs.targets(labels, lookup, width, height)
        predictions = {
            'model': result.detections, 'model_zero_flow': zero_result.detections,
            'visible_only': engine.infer(np.zeros_like(case.deformed), case.vi).detections,
            'ir_only': engine.infer(case.ir, np.zeros(case.size, np.uint8)).detections}
    scores.add(case, model, unregistered, baselines, ecc.success, truth, dropped, predictions,
               wall_ms, result.timings_ms.get('model', float('nan')),
               cc_bound=(metrics.cc_upper_bound(case.ir_unit, case.vi_y_unit)
                         if case.ir_unit is not None else None))
    if truth is not None and case.ir_unit is not None:
        fused['model'] = luma(result.fused)
        scores.add_contrast(case.stem, group, truth, case.ir, case.vi_y, fused)
    if truth is not None:
        for reference in teachers.values():
            reference.add(case.ir if case.ir_unit is not None else None, case.vi)
    if index < options.figures:
        save_pair_figures(figures, case.stem, case, result, ecc.registered, truth)

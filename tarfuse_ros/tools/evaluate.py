"""``tarfuse-eval``: evaluate a TarFuse checkpoint (the library: tarfuse_ros.evaluation).

``tarfuse-eval --data DIR [--split NAME|FILE] --weights FILE --out DIR [--deform auto|none|
synthetic|dataset] [--stored-ir auto|aligned|unregistered] [--seed N] [--device D]
[--max-pairs N] [--max-side PX] [--input-max-long-side PX] [--fine-passes N]
[--teacher yolov8n|yolox|FILE.onnx ...]`` writes
``metrics.json``, ``report.md`` and PNG figures into ``--out``; the protocol is
:mod:`tarfuse_ros.evaluation.protocol`'s. ``--teacher`` (repeatable) adds a COCO teacher's own
detection accuracy on the same images as reference rows (needs onnxruntime and labelled pairs:
refused, exit status 2, where no evaluated pair has a label file). ``--labels DIR``
names the label sub-folder, which must exist and hold label files (exit status 2 otherwise:
an image folder named by mistake gave no detection metrics, without a word); without it
``labels/`` is used where the set has one, and a set without labels gets no detection metrics.
The label
folder's own ``classes.txt`` names its class ids, else the set's ``classes.txt``. A set
evaluated as aligned (``--stored-ir aligned``, or ``auto`` on a set without ``landmarks/``)
whose pairs include an IR image of another aspect ratio than its visible image is refused
before any work (exit status 2, naming them); ``--stored-ir unregistered`` takes any sizes.
"""

import argparse
import logging
from pathlib import Path
import sys

from tarfuse_ros.console import terminate_as_interrupt
from tarfuse_ros.core.fine_passes import fine_passes_option
from tarfuse_ros.core.runtime import DeviceUnavailableError
from tarfuse_ros.evaluation.options import DEFORM_MODES, EvalOptions, STORED_IR_MODES

__all__ = ['build_parser', 'main']


def build_parser():
    """Return the ``tarfuse-eval`` argument parser."""
    parser = argparse.ArgumentParser(
        prog='tarfuse-eval',
        description='Evaluate a TarFuse checkpoint (fusion, registration, detection, baselines).')
    parser.add_argument('--data', required=True,
                        help='data set folder (ir/, vi/, labels/, list files) or a shared name')
    parser.add_argument('--split', default='test',
                        help="split name or list file ('all' for every pair, with a warning "
                             'naming the images without a partner; default test)')
    parser.add_argument('--weights', default=None,
                        help='checkpoint (.safetensors; default: the shipped weights)')
    parser.add_argument('--out', required=True,
                        help='output folder (an earlier evaluation there is replaced: its '
                             'metrics.json, report.md and figures, once this one is complete; '
                             'a failed or interrupted run keeps them; a metrics.json or '
                             'report.md that no evaluation wrote is refused)')
    parser.add_argument('--deform', default='auto', choices=DEFORM_MODES,
                        help="IR deformation: the data set's ground truth where present "
                             "('auto'), 'dataset' only, seeded 'synthetic', or 'none'")
    parser.add_argument('--prior', default=None,
                        help='node parameters file with a calibration prior (registration.prior, '
                             'from tarfuse-calibrate) that the model runs with')
    parser.add_argument('--stored-ir', default='auto', choices=STORED_IR_MODES,
                        help='whether the stored IR is aligned with the visible image (the '
                             'ground truth; a pair whose IR has another aspect ratio is '
                             "refused) or 'unregistered' (real unregistered cameras, IR of any "
                             'size: no aligned-IR metrics, --deform none); auto: unregistered '
                             'for sets with landmarks/ and for cvc14_misaligned, else aligned')
    parser.add_argument('--seed', type=int, default=0, help='seed of synthetic deformations')
    parser.add_argument('--device', default='cpu', help='cpu | cuda | cuda:N')
    parser.add_argument('--max-pairs', type=int, default=None, help='only the first N pairs')
    parser.add_argument('--max-side', type=int, default=None,
                        help='downscale so the longer side is at most this many pixels')
    parser.add_argument('--input-max-long-side', type=int, default=0,
                        help='run the network on frames shrunk so their longer side is at most '
                             "this many pixels, outputs brought back to the frame (the engines' "
                             "input_max_long_side; metrics at the pairs' size); 0: never")
    parser.add_argument('--fine-passes', type=fine_passes_option, default=None, metavar='N',
                        help="fine passes of the model's global stage, 0-8 (the engines' "
                             "fine_passes; -1 or left out: the checkpoint's own count; "
                             'recorded in metrics.json and report.md), to measure what fewer '
                             'passes cost')
    parser.add_argument('--labels', default=None,
                        help='label sub-folder (e.g. labels_vi), which must exist and hold '
                             'label files; default labels/ where the set has it (else no '
                             'detection metrics)')
    parser.add_argument('--figures', type=int, default=8, help='pairs that get figures')
    parser.add_argument('--conf', type=float, default=0.001, help='NMS confidence threshold')
    parser.add_argument('--iou', type=float, default=0.6, help='NMS IoU threshold')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    parser.add_argument('--teacher', action='append', default=[],
                        help='reference detector scored on the same images: yolov8n | yolox '
                             '(shared/teachers) | FILE.onnx; repeatable')
    return parser


def _fmt(value, digits=4):
    return 'n/a' if value is None else f'{value:.{digits}f}'


def summary_line(result):
    """Return the one-line summary ``tarfuse-eval`` prints."""
    reg, fusion = result['registration'], result['fusion']
    at = f' at max side {result["max_side"]}' if result['max_side'] else ''
    line = (f'pairs {result["num_pairs"]}  EPE {_fmt(reg["EPE"], 2)} px{at} '
            f'(unregistered {_fmt(reg["unregistered"]["EPE"], 2)})  NCC {_fmt(reg["NCC"])}  '
            f'MSE {_fmt(reg["MSE"])}  edge alignment {_fmt(reg["edge_alignment"])} '
            f'(unregistered {_fmt(reg["unregistered"]["edge_alignment"])})  '
            f'CC {_fmt(fusion["CC"], 3)}  Qabf {_fmt(fusion["Qabf"], 3)}  '
            f'SSIM {_fmt(fusion["SSIM"], 3)}')
    if reg.get('landmark_pairs'):
        line += (f'  landmark error {_fmt(reg["landmark_error_px"], 2)} px '
                 f'(unregistered {_fmt(reg["unregistered"]["landmark_error_px"], 2)})')
    contrast = fusion.get('target_contrast')
    if contrast:
        line += f'  target contrast ratio {_fmt(contrast["all"]["ratio"], 3)}'
        if contrast['night']['pairs']:
            line += f' (night {_fmt(contrast["night"]["ratio"], 3)})'
    if result['detection']:
        line += f'  mAP50 {_fmt(result["detection"]["map50"], 3)}'
    return line


def _check_labels(data_arg, labels):
    """Raise ``ValueError`` unless ``--labels`` names a folder that holds label files."""
    from tarfuse_ros.training.datasets import resolve_dataset_dir
    folder = resolve_dataset_dir(data_arg) / labels
    if not folder.is_dir():
        state = 'is not a folder' if folder.exists() else 'does not exist'
        raise ValueError(f'--labels {labels!r}: {str(folder)!r} {state}; name a label folder of '
                         f'the data set (e.g. labels_vi) or leave --labels out')
    # A folder without a label file (the set's ir/, say) gave no detection metrics, exit 0.
    entries = [path for path in folder.iterdir() if path.name != 'classes.txt']
    if not any(path.suffix == '.txt' for path in entries):
        from tarfuse_ros.core.layout import IMAGE_EXTENSIONS
        images = sum(path.suffix.lower() in IMAGE_EXTENSIONS for path in entries)
        held = f'{images} images and no' if images else 'no'
        raise ValueError(f'--labels {labels!r}: {str(folder)!r} holds {held} label file '
                         f'(<stem>.txt); name a label folder of the data set (e.g. labels_vi) '
                         f'or leave --labels out')


def main(argv=None):
    """Entry point of ``tarfuse-eval``; returns the exit status (2: bad request, 130: Ctrl-C)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')
    weights = args.weights
    if weights is None:
        from tarfuse_ros.core.paths import default_weights_path
        weights = default_weights_path()
    # SIGTERM (timeout, kill, a job scheduler) stops it as Ctrl-C does: this run's figures are
    # removed and an earlier evaluation's results in --out are kept (it killed the process).
    with terminate_as_interrupt():
        return _evaluate(args, weights)


def _evaluate(args, weights):
    """Run the evaluation ``args`` ask for; return the exit status."""
    try:
        if args.labels is not None:  # named: it must exist (a set may lack the default)
            _check_labels(args.data, args.labels)
        from tarfuse_ros.evaluation.protocol import evaluate
        options = EvalOptions(
            split=args.split, deform=args.deform, seed=args.seed, device=args.device,
            max_pairs=args.max_pairs, max_side=args.max_side,
            labels_dir='labels' if args.labels is None else args.labels,
            figures=args.figures, conf=args.conf, iou=args.iou, threads=args.threads,
            progress=not args.no_progress, stored_ir=args.stored_ir,
            teachers=tuple(args.teacher), prior=args.prior,
            input_max_long_side=args.input_max_long_side, fine_passes=args.fine_passes)
        result = evaluate(args.data, weights, args.out, options)
    except ValueError as exc:  # bad input: one line, no traceback
        print(f'tarfuse-eval: error: {exc}', file=sys.stderr)
        return 2
    except DeviceUnavailableError as exc:
        print(f'tarfuse-eval: error: {exc}; use --device cpu', file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C: one line, no traceback
        done = getattr(stop, 'result', None)  # protocol.InterruptedWhenComplete
        if done is not None:  # while its results were put in place: they all were
            print(summary_line(done))
            print(f'tarfuse-eval: interrupted once the evaluation was complete: wrote '
                  f'{Path(args.out) / "metrics.json"}, report.md and the figures',
                  file=sys.stderr)
            return 130
        print('tarfuse-eval: interrupted; the evaluation is incomplete: no metrics.json or '
              "report.md written (an earlier evaluation's results in --out are kept)",
              file=sys.stderr)
        return 130
    print(summary_line(result))
    print(f'wrote {Path(args.out) / "metrics.json"} and report.md')
    return 0


if __name__ == '__main__':
    sys.exit(main())

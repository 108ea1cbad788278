"""``tarfuse-export``: a TarFuse checkpoint -> an ONNX file (onnxruntime, TensorRT, Isaac ROS).

Example::

    tarfuse-export models/tarfuse_default.safetensors --out /tmp/tarfuse.onnx
    ros2 run tarfuse_ros fuse_node --ros-args -p backend:=onnxruntime -p weights:=/tmp/tarfuse.onnx

The graph, its inputs, outputs and metadata: :mod:`tarfuse_ros.core.export`. Exit status 0 on
success, 1 when the export or its check against PyTorch fails, 2 for usage errors (a missing or
invalid checkpoint, a bad option, an ``--out`` that is a folder, cannot be written, is the
checkpoint itself, ends in ``.safetensors`` or is an existing file not named ``.onnx``, such as a
TensorRT engine: checked before the export), 130 after Ctrl-C or SIGTERM (a ``timeout``, kill,
a job scheduler), with one line saying that no ONNX file was written: ``--out`` is left as it
was (the file is written whole at the end, or not at all).
"""

import argparse
from pathlib import Path
import shlex
import signal
import sys
import threading

from tarfuse_ros.console import InterruptedWhenComplete, StopRequest
from tarfuse_ros.core.fine_passes import check_fine_passes, fine_passes_option, OPTION_OWN
from tarfuse_ros.core.onnx_output import check_onnx_output

PROG = 'tarfuse-export'


def build_parser():
    """Return the command-line parser of ``tarfuse-export``."""
    parser = argparse.ArgumentParser(
        prog=PROG, description='Export a TarFuse .safetensors checkpoint to ONNX (dynamic '
                               'batch, height and width; config and class names in the '
                               'metadata), checked against PyTorch with onnxruntime.')
    parser.add_argument('weights', type=Path, help='checkpoint (.safetensors)')
    parser.add_argument('--out', required=True, help='ONNX file to write')
    parser.add_argument('--half', action='store_true',
                        help='float16 inside (float32 inputs/outputs); for TensorRT prefer the '
                             'float32 file and trtexec --fp16')
    parser.add_argument('--opset', type=int, default=17,
                        help='ONNX opset, >= 17 and at most what torch.onnx.export writes (23 '
                             'with torch 2.14; default 17)')
    parser.add_argument('--no-verify', action='store_true',
                        help='skip the onnxruntime-vs-PyTorch check at another input size')
    parser.add_argument('--no-scale-search', action='store_true',
                        help='the global stage fits the 1.0 IR / visible scale only (rigs with '
                             'matching fields of view): a graph less than half the size')
    parser.add_argument('--fine-passes', type=fine_passes_option, default=None, metavar='N',
                        help='fine passes of the global stage in the graph, 0-8 (0: none; -1 '
                             "or left out: the checkpoint's own count), as the node's "
                             'registration.fine_passes with backend torch')
    parser.add_argument('--threads', type=int, default=None,
                        help='CPU threads for tracing and the check (default: torch default)')
    return parser


def main(argv=None):
    """Entry point of ``tarfuse-export``; returns the exit status (0, 1, 2 usage, 130 stopped).

    SIGTERM stops it as Ctrl-C does (it killed the export, exit status -15), and only the
    first of these signals stops it: one line says so, with exit status 130, and ``--out`` is
    as before (:func:`~tarfuse_ros.core.export.export_onnx` puts the file in place whole). A
    stop that a library swallowed meanwhile (caught the ``KeyboardInterrupt``) stops it too:
    the stop is remembered (``StopRequest.requested``) and asked for before the file goes in
    place.
    """
    args = build_parser().parse_args(argv)
    previous = {}
    stop = StopRequest(once=True)
    if threading.current_thread() is threading.main_thread():  # else signals are not ours
        previous = stop.install((signal.SIGINT, signal.SIGTERM))
    try:
        return _main(args, stop)
    except InterruptedWhenComplete:
        print(f'{PROG}: interrupted once {args.out} was written whole; the summary was not '
              f'printed', file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f'{PROG}: interrupted: the export was not finished and no ONNX file was written '
              f'({args.out} is as it was)', file=sys.stderr)
        return 130
    finally:
        stop.restore(previous)


def _main(args, stop):
    """Run ``tarfuse-export`` with the parsed ``args``; return the exit status.

    ``stop``: the :class:`~tarfuse_ros.console.StopRequest` of :func:`main`.
    """
    if args.threads is not None and args.threads < 1:
        print(f'{PROG}: error: --threads must be >= 1, got {args.threads}', file=sys.stderr)
        return 2
    try:  # checked now, before torch: the export takes minutes
        check_fine_passes(args.fine_passes, '--fine-passes', OPTION_OWN)
        check_onnx_output(args.out, args.weights, '--out')
    except ValueError as exc:
        print(f'{PROG}: error: {exc}', file=sys.stderr)
        return 2
    args.out = Path(args.out)
    # Imported here so that usage errors are reported before torch is loaded.
    from tarfuse_ros.core.checkpoint import CheckpointError
    from tarfuse_ros.core.export import export_onnx, ExportError
    import torch
    if args.threads is not None:  # a program sets the process-wide thread count
        torch.set_num_threads(args.threads)
    try:
        report = export_onnx(args.weights, args.out, half=args.half, opset=args.opset,
                             verify=not args.no_verify, scale_search=not args.no_scale_search,
                             fine_passes=args.fine_passes,
                             interrupted=lambda: stop.requested)
    except (CheckpointError, ValueError, ExportError, OSError) as exc:
        if stop.requested:
            # A library turned the stop into an error of its own: a SIGTERM while onnxruntime
            # was imported was reported as 'needs the onnxruntime package ... (initialization
            # failed)', exit 2.
            raise KeyboardInterrupt from None
        print(f'{PROG}: error: {exc}', file=sys.stderr)
        return 1 if isinstance(exc, (ExportError, OSError)) else 2
    try:  # the file is in place, whole: a stop now must not say that none was written
        _print_summary(args, report)
    except KeyboardInterrupt:
        raise InterruptedWhenComplete(report, f'interrupted once {report.path} was written'
                                      ) from None
    return 0


def _print_summary(args, report):
    """Print what was written (read back from the file) and how to run it."""
    size_mib = report.path.stat().st_size / 2**20
    inputs, outputs = _graph_names(report.path)
    print(f'wrote {report.path} ({size_mib:.1f} MiB, opset {report.opset}, {report.precision}; '
          f'inputs {", ".join(inputs)}; outputs {", ".join(outputs)})')
    print('inputs: ir, vi (B, 1, H, W) float32 in [0, 1], H and W multiples of 32'
          + ('; valid_size (2,) int64, their (h, w) before padding at the bottom/right'
             if 'valid_size' in inputs else ''))
    if report.scale_candidates:
        searched = len(report.scale_candidates) > 1
        print(f'global stage scales: {list(report.scale_candidates)}'
              + (' (the scale search; --no-scale-search leaves it out)' if searched else ''))
    if args.no_scale_search and not report.scale_candidates:
        print('--no-scale-search had no effect: this checkpoint has no orientation global stage')
    if report.scale_candidates:
        print(f'global stage fine passes: {report.fine_passes}'
              + (' (--fine-passes)' if args.fine_passes is not None else ''))
    elif args.fine_passes is not None:  # 0: refused for any other count without the stage
        print('--fine-passes had no effect: this checkpoint has no orientation global stage')
    if report.max_abs_diff:
        diffs = ', '.join(f'{name} {value:.2g}' for name, value in report.max_abs_diff.items())
        print(f'checked against PyTorch at {report.verify_shape}: max abs difference {diffs}')
    # Quoted: a path with a space printed as it is split the command a user copies.
    # A command to copy: 'fuse_node with -p ...' ran the torch backend, -p without --ros-args.
    print(f'run it: fuse_node --ros-args -p backend:=onnxruntime -p '
          f'{shlex.quote(f"weights:={report.path}")} (ros2 launch tarfuse_ros fuse.launch.py '
          f'backend:=onnxruntime {shlex.quote(f"weights:={report.path}")}); TensorRT: trtexec '
          f'{shlex.quote(f"--onnx={report.path}")} --minShapes=ir:1x1x256x320,vi:1x1x256x320 '
          f'--optShapes=ir:1x1x512x640,vi:1x1x512x640 '
          f'--maxShapes=ir:1x1x1024x1280,vi:1x1x1024x1280 --fp16 --saveEngine=tarfuse.engine')


def _graph_names(path):
    """Return the written graph's ``(input names, output names)``, read once.

    No ``valid_size`` input without the orientation global stage, no ``det`` output without a
    detection head.
    """
    import onnx
    graph = onnx.load(str(path), load_external_data=False).graph
    return [item.name for item in graph.input], [item.name for item in graph.output]


if __name__ == '__main__':
    sys.exit(main())

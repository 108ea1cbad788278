"""Export a TarFuse checkpoint to ONNX (for onnxruntime, TensorRT, Isaac ROS).

The graph is the network of :meth:`TarFuse.predict_raw` with BatchNorm folded (as the torch
engine runs it), traced by ``torch.onnx.export``'s TorchScript exporter:

- inputs ``ir`` and ``vi``: ``(B, 1, H, W)`` float32 in [0, 1] (the IR resized to the visible
  frame, the visible luma; :func:`~tarfuse_ros.core.images.prepare_pair`), batch, height and width
  dynamic; H and W must be multiples of 32 and at least the ``min_side`` in the metadata (the
  engines pad at the bottom/right); ``valid_size``: ``(2,)`` int64, the ``(h, w)`` of the images
  before that padding (``(H, W)`` when none), read by the orientation global stage (format
  version 2; a model without that stage ignores it);
- outputs (:data:`~tarfuse_ros.core.onnx_backend.ONNX_OUTPUTS`): ``fused`` (B, 1, H, W),
  ``flow`` (B, 2, H, W) in pixels, ``registered_ir`` (B, 1, H, W), ``det`` (B, 4 + nc, anchors)
  in ultralytics' layout (before NMS; absent for a checkpoint without detection head,
  ``TarFuseConfig.detect`` false: the outputs are then
  :data:`~tarfuse_ros.core.onnx_backend.FUSION_OUTPUTS`);
- ``metadata_props``: ``tarfuse_config`` (the checkpoint's JSON header: model config with class
  names, input conventions, provenance, format version), ``tarfuse_onnx`` (this export: format
  version, min side, precision, opset, outputs, source) and ``class_names`` (a JSON list).

``half=True`` converts the traced graph to float16 with onnxruntime's converter, inputs and
outputs kept float32, ``GridSample`` and ``Range`` kept float32, and the orientation global
stage kept float32 whole (as the torch engine runs it; :func:`_to_float16`). For TensorRT,
prefer the float32 file and ``trtexec --fp16`` (TensorRT chooses the precision per layer).

The file is checked before it is written: the exported graph runs in onnxruntime at another
batch, height and width than the traced ones and must match PyTorch (a size frozen into the
graph by the tracer fails here, not on the robot).
"""

import copy
from dataclasses import dataclass, field
import importlib
import io
import json
from pathlib import Path
import warnings

import numpy as np
from tarfuse_ros.console import InterruptedWhenComplete, interrupts_held
from tarfuse_ros.core.checkpoint import load_checkpoint
from tarfuse_ros.core.files import atomic_output
from tarfuse_ros.core.model.yolo import anchors_every_call
from tarfuse_ros.core.onnx_backend import CONFIG_KEY, FUSION_OUTPUTS, MIN_OPSET
from tarfuse_ros.core.onnx_backend import ONNX_FORMAT_VERSION
from tarfuse_ros.core.onnx_backend import ONNX_INPUT_MEANINGS, ONNX_INPUTS, ONNX_KEY, ONNX_OUTPUTS
from tarfuse_ros.core.onnx_output import check_onnx_output
import torch
from torch import nn
import torch.nn.functional as F

__all__ = ['ExportError', 'ExportReport', 'VERIFY_TOLERANCES', 'export_onnx']

# Largest max-abs difference onnxruntime vs PyTorch accepted by the check, per output and
# precision (det holds box coordinates in pixels and probabilities). float16, measured with
# --half on the shipped models (default --no-scale-search / medical): fused 0.067 / 0.016, flow
# 0.72 / 0.16 px, registered_ir 0.38 / 0.15 and det 11.8 px (2.2 px on anchors scoring above
# 0.05): the largest at a few pixels near the borders, where a flow a fraction of a pixel off
# samples across the frame's edge. With the global stage kept float32 (session 38) the default
# model, scale search included, gives fused 0.07, flow 0.025 px, registered_ir 0.055 and det
# 1.1 px. A size frozen into the graph gives errors of the whole range.
VERIFY_TOLERANCES = {
    'float32': {'fused': 1e-3, 'registered_ir': 1e-3, 'flow': 1e-2, 'det': 5e-2},
    'float16': {'fused': 0.1, 'registered_ir': 0.5, 'flow': 1.5, 'det': 16.0},
}


class ExportError(RuntimeError):
    """The graph could not be exported, or the exported graph does not match PyTorch."""


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote, and how it was checked.

    ``path``, ``opset``, ``precision`` (``'float32'``/``'float16'``); ``verify_shape`` the
    ``(B, 1, H, W)`` input of the check and ``max_abs_diff`` the max abs differences
    onnxruntime vs PyTorch there, per output (both empty when not verified);
    ``scale_candidates`` the IR / visible scales the graph's global stage tries (``()``
    without the orientation global stage); ``fine_passes`` how many fine passes it runs (0:
    none, or no orientation global stage).
    """

    path: Path
    opset: int
    precision: str
    verify_shape: tuple = ()
    max_abs_diff: dict = field(default_factory=dict)
    scale_candidates: tuple = ()
    fine_passes: int = 0


class _ExportGraph(nn.Module):
    """``(ir, vi, valid_size) -> (fused, flow, registered_ir[, det])`` of ``predict_raw``."""

    def __init__(self, model, names):
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, ir, vi, valid_size):
        out = self.model.predict_raw(ir, vi, valid_size)
        return tuple(out[name] for name in self.names)


def _sizes(min_side):
    """Trace and check sizes: (1, H, W) then (2, W', H') with other H, W and aspect."""
    side = -(-max(int(min_side), 64) // 32) * 32
    trace = (1, max(128, side), max(160, side + 32))
    check = (2, trace[2] + 32, trace[1])
    return trace, check


# Where the traced graph puts the orientation global stage's nodes (torch.onnx names them by
# module scope): the float16 export keeps them float32.
_GLOBAL_STAGE_SCOPES = ('/global_matcher/', '/registration/global_matcher/')


def _to_float16(proto, global_stage):
    """Return ``proto`` with float16 computation inside; inputs and outputs stay float32.

    onnxruntime's converter converts the graph; ``GridSample`` and ``Range`` stay float32
    (sampling coordinates: float16 has 0.5 px steps beyond 1024 px). With ``global_stage``
    (the model has the orientation global stage), that stage and every node it reads stay
    float32 as well, as the torch engine runs it whatever its precision
    (``OrientationMatcher.forward``): its normal equations sum squared pixel coordinates over
    thousands of cells. Converted with the rest, the maps drifted by 1.2-1.6 px of flow on
    average on CVC-14 pairs (0.13-0.38 px on RoadScene and MSRS pairs) from the float32
    graph's; kept float32, 0.01-0.07 px (shipped model, 2026-12-06). The converter's own
    ``node_block_list`` takes hours on the stage's ~80,000 nodes (it scans every value for
    each blocked node), so the graph is split: the float32 part (the stage and its inputs)
    and the rest, converted alone with the tensors it reads from the float32 part as float32
    inputs, then joined again.

    Raises:
        ExportError: ``global_stage`` but no node in :data:`_GLOBAL_STAGE_SCOPES` (the
            exporter named its scopes otherwise: the stage would silently become float16).
    """
    import onnx
    from onnx import helper
    from onnxruntime.transformers.float16 import convert_float_to_float16, DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.onnx_model import OnnxModel

    def convert(model):
        converted = OnnxModel(convert_float_to_float16(
            model, keep_io_types=True,
            op_block_list=list(DEFAULT_OP_BLOCK_LIST) + ['GridSample']))
        converted.topological_sort()  # the converter appends its input casts last
        return converted.model

    if not global_stage:
        return convert(proto)
    graph = proto.graph
    stage = [node for node in graph.node if node.name.startswith(_GLOBAL_STAGE_SCOPES)]
    if not stage:
        raise ExportError(f'--half: no node of the global stage found (scopes '
                          f'{_GLOBAL_STAGE_SCOPES}); it would run in float16')
    # The float32 part: the stage's nodes and every node they read, transitively.
    producer = {output: node for node in graph.node for output in node.output}
    kept, pending = set(), [name for node in stage for name in node.output]
    while pending:
        node = producer.get(pending.pop())
        if node is not None and id(node) not in kept:
            kept.add(id(node))
            pending.extend(node.input)
    float32_nodes = [node for node in graph.node if id(node) in kept]
    rest_nodes = [node for node in graph.node if id(node) not in kept]
    made = {name for node in float32_nodes for name in node.output}
    read = {name for node in rest_nodes for name in node.input}
    read_by_float32 = {name for node in float32_nodes for name in node.input}
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    if any(name in read_by_float32 for name in initializers if name in read):
        raise ExportError('--half: an initializer is read by the global stage and the rest')
    shapes = onnx.shape_inference.infer_shapes(proto).graph
    known = {value.name: value for value in list(shapes.value_info) + list(shapes.input)}
    rest_inputs = ([value for value in graph.input if value.name in read]
                   + [known[name] for name in sorted(made & read)])

    def model(nodes, inputs, tensors):  # a graph of proto's name, outputs and opsets
        result = helper.make_model(
            helper.make_graph(nodes, graph.name, inputs, list(graph.output), initializer=tensors),
            opset_imports=proto.opset_import)
        result.ir_version = proto.ir_version
        return result

    rest = convert(model(rest_nodes, rest_inputs,
                         [initializers[name] for name in initializers if name in read]))
    joined = OnnxModel(model(float32_nodes + list(rest.graph.node), list(graph.input),
                             [initializers[name] for name in initializers
                              if name in read_by_float32] + list(rest.graph.initializer)))
    joined.topological_sort()
    return joined.model


def _verify(blob, graph, shape, precision, threads):
    """Run ``blob`` in onnxruntime and ``graph`` in PyTorch on one random scene; max diffs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(blob, options, providers=['CPUExecutionProvider'])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own error types
        raise ExportError(f'onnxruntime cannot load the exported graph: {error}') from None
    # A smooth random scene (noise on a grid 8x coarser, upsampled) and its inverted, shifted
    # copy as the visible image: matching then has one clear answer (on white noise the
    # global stage's best match is a tie that rounding may break either way).
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(shape[0], 1, shape[2] // 8 + 1, shape[3] // 8 + 1, generator=generator)
    ir = F.interpolate(coarse, size=shape[2:], mode='bilinear', align_corners=False)
    vi = 1.0 - torch.roll(ir, shifts=(3, -5), dims=(2, 3))
    # As if the last rows and columns were padding (exercises the global stage's crop).
    valid = torch.tensor([shape[2] - 5, shape[3] - 7], dtype=torch.int64)
    with torch.inference_mode():
        expected = graph(ir, vi, valid)
    try:
        feeds = {'ir': ir.numpy(), 'vi': vi.numpy(), 'valid_size': valid.numpy()}
        got = session.run(list(graph.names),
                          {arg.name: feeds[arg.name] for arg in session.get_inputs()})
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own error types
        raise ExportError(
            f'the exported graph fails at input {tuple(shape)} (another size than the traced '
            f'one: a size was frozen into the graph?): {str(error)[:400]}') from None
    diffs = {}
    for name, ours, theirs in zip(graph.names, got, expected):
        if ours.shape != tuple(theirs.shape):
            raise ExportError(f'output {name} has shape {ours.shape} in onnxruntime but '
                              f'{tuple(theirs.shape)} in PyTorch at input {tuple(shape)}')
        diffs[name] = float(np.abs(ours.astype(np.float32) - theirs.numpy()).max())
    bad = {name: value for name, value in diffs.items()
           if not value <= VERIFY_TOLERANCES[precision][name]}
    tolerances = {name: VERIFY_TOLERANCES[precision][name] for name in graph.names}
    if bad:
        raise ExportError(f'the exported graph differs from PyTorch at input {tuple(shape)}: '
                          f'max abs differences {bad} exceed {tolerances}')
    return diffs


def _stop_if(interrupted):
    """Raise ``KeyboardInterrupt`` where ``interrupted`` (None or a callable) says so."""
    if interrupted is not None and interrupted():
        raise KeyboardInterrupt


def export_onnx(weights, output, half=False, opset=MIN_OPSET, verify=True, scale_search=True,
                fine_passes=None, interrupted=None):
    """Export a ``.safetensors`` checkpoint to an ONNX file (see the module docstring).

    Args:
        weights: path of a TarFuse checkpoint (``save_checkpoint`` / ``tarfuse-train``).
        output: path of the ``.onnx`` file to write (replaced atomically, modes as
            :func:`~tarfuse_ros.core.files.atomic_output` gives them; folders created).
        half: float16 computation inside, float32 inputs and outputs.
        opset: ONNX opset, ``>= 17`` (GridSample needs 16; TensorRT 8.6+ and 10 parse 17)
            and at most what ``torch.onnx.export`` writes (23 with torch 2.14).
        verify: run the exported graph in onnxruntime at another batch and size than the
            traced one and compare with PyTorch (:data:`VERIFY_TOLERANCES`).
        scale_search: False: a checkpoint saved with several scale candidates fits the 1.0
            IR / visible scale only, as ``FusionEngine(scale_search=False)``; the metadata's
            config then records ``global_scale_candidates`` [1.0]. For rigs with matching
            fields of view: with the shipped model's three scales, the graph has 37,126
            nodes instead of 85,095 (2-core VM, 1 thread: an onnxruntime session with its
            default graph rewrites, as
            :class:`~tarfuse_ros.core.onnx_backend.OnnxFusionEngine` opens it, starts in
            6.3-6.5 s instead of 19.9 s; 3.2-3.5 s instead of 9.6 s with the basic rewrites
            only). No effect on a checkpoint with one candidate or without the orientation
            global stage (``report.scale_candidates`` says what the graph runs).
        fine_passes: how many fine passes the graph's orientation global stage runs, as
            ``FusionEngine(fine_passes=...)`` (:func:`~tarfuse_ros.core.engine.set_fine_passes`):
            None: the checkpoint's own; 0: none (the metadata's config then records
            ``global_fine_cell`` 0 and ``global_fine_check`` false); 1-8: that many (it records
            ``global_fine_passes``). ``report.fine_passes`` says what the graph runs.
        interrupted: None, or a callable that says whether a stop (SIGINT, SIGTERM) reached the
            process (``StopRequest.requested``): one that a library swallowed (caught the
            ``KeyboardInterrupt`` raised in it) stops the export all the same, before the
            slow work and before the file is put in place (``KeyboardInterrupt``).

    Returns:
        :class:`ExportReport`.

    Raises:
        CheckpointError: missing or invalid checkpoint.
        ExportError: tracing failed or the graph does not match PyTorch.
        KeyboardInterrupt: Ctrl-C (or a SIGTERM a program turned into one) before the file
            was put in place, or ``interrupted()`` true then: ``output`` is as it was.
        InterruptedWhenComplete: (a ``KeyboardInterrupt``) SIGINT or SIGTERM on the main
            thread while the file was put in place: it was written whole first; ``result``
            is the :class:`ExportReport`.
        ValueError: onnx not installed (onnxruntime too, to verify or for ``half``);
            ``output`` a folder, not writable, the checkpoint or a ``.safetensors`` path
            (:func:`~tarfuse_ros.core.onnx_output.check_onnx_output`, before the checkpoint
            loads);
            ``opset`` below 17 or above what ``torch.onnx.export`` writes;
            ``half``, ``verify`` or ``scale_search`` not a bool; ``fine_passes`` not None or
            0-8, or 1-8 for a checkpoint without a fine stage.

    """
    # Optional packages (README, Deployment): a missing one was a ModuleNotFoundError
    # traceback, the onnxruntime one after minutes of tracing.
    checked = 'the check against PyTorch (--no-verify skips it)'
    for module, needed_for in (('onnx', 'tarfuse-export'),
                               ('onnxruntime', checked if verify else '--half' if half else None)):
        if needed_for is None:
            continue
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(f'{needed_for} needs the {module} package, which cannot be '
                             f'imported ({error}): pip install {module} in this Python '
                             f'environment') from None
    _stop_if(interrupted)  # a stop swallowed in an import: before minutes of tracing
    import onnx
    from tarfuse_ros.core.engine import _min_input_side, fine_passes_of, fuse_conv_bn
    from tarfuse_ros.core.engine import scale_search_off, set_fine_passes
    from tarfuse_ros.core.fine_passes import check_fine_passes

    # The newest opset torch.onnx.export writes: it refuses a newer one only after tracing
    # (minutes). A private constant: a torch without it leaves that check to the exporter.
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET as max_opset
    except ImportError:
        max_opset = None
    if (isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET
            or (max_opset is not None and opset > max_opset)):
        raise ValueError(f'opset must be an integer >= {MIN_OPSET} and <= {max_opset} (the '
                         f'newest torch.onnx.export writes), got {opset!r}')
    for name, value in (('half', half), ('verify', verify), ('scale_search', scale_search)):
        if not isinstance(value, (bool, np.bool_)):  # 'no' would count as true
            raise ValueError(f'{name} must be True or False, got {value!r}')
    check_fine_passes(fine_passes)  # before loading the checkpoint
    check_onnx_output(output, weights)  # an OSError when writing, after minutes of tracing
    weights, output = Path(weights), Path(output)
    model = load_checkpoint(weights, map_location='cpu').eval()
    config = copy.deepcopy(model.checkpoint_config)
    if not scale_search and scale_search_off(model):
        # The model leaves out the wide scales with the search (set_global_scale_candidates).
        config['model']['global_scale_candidates'] = [1.0]
        config['model']['global_wide_scales'] = list(model.config.global_wide_scales)
    if set_fine_passes(model, fine_passes):
        # The metadata says what the graph runs (the fields set_fine_passes changed).
        for key in ('global_fine_cell', 'global_fine_check', 'global_fine_passes'):
            config['model'][key] = getattr(model.config, key)
    fuse_conv_bn(model)
    if model.detect is not None:
        anchors_every_call(model.detect)
        names = tuple(ONNX_OUTPUTS)
    else:  # no detection head: no det output
        names = FUSION_OUTPUTS
    graph = _ExportGraph(model, names).eval()
    min_side = _min_input_side(model.config)
    # Frames whose shorter side (of the valid region: the check marks up to 7 px as padding)
    # is below the global stage's min_side are enlarged for its fit in PyTorch, not in the
    # graph (OrientationMatcher): trace and check above it, where both compute the same.
    matcher = getattr(model.registration, 'global_matcher', None)
    enlarged_below = 0 if matcher is None else int(matcher.min_side)
    trace_shape, check_shape = _sizes(max(min_side, enlarged_below + 8 if enlarged_below else 0))
    dims = {0: 'batch', 2: 'height', 3: 'width'}
    buffer = io.BytesIO()
    example = (torch.rand(trace_shape[0], 1, *trace_shape[1:]),
               torch.rand(trace_shape[0], 1, *trace_shape[1:]),
               torch.tensor(trace_shape[1:], dtype=torch.int64))
    try:
        with warnings.catch_warnings():
            # The tracer warns about every Python-level shape check it freezes; the check
            # below runs the graph at other sizes instead.
            warnings.simplefilter('ignore')
            torch.onnx.export(graph, example, buffer, dynamo=False, opset_version=opset,
                              input_names=list(ONNX_INPUTS), output_names=list(names),
                              dynamic_axes={name: dims for name in ONNX_INPUTS[:2]},
                              do_constant_folding=True)
    except Exception as error:  # noqa: BLE001 - the exporter raises many error types
        raise ExportError(f'torch.onnx.export failed for {weights}: {error}') from error
    proto = onnx.load_from_string(buffer.getvalue())
    precision = 'float16' if half else 'float32'
    if half:
        proto = _to_float16(proto, matcher is not None)
    description = {
        'format_version': ONNX_FORMAT_VERSION,
        # A model without the orientation global stage does not read valid_size: the
        # exporter drops the unused input.
        'inputs': {arg.name: ONNX_INPUT_MEANINGS[arg.name] for arg in proto.graph.input},
        'outputs': {name: ONNX_OUTPUTS[name] for name in names},
        'size_multiple': 32,
        'min_side': int(min_side),
        'precision': precision,
        'opset': int(opset),
        'source': weights.name,
        'torch': torch.__version__,
    }
    for key, value in ((CONFIG_KEY, config), (ONNX_KEY, description),
                       ('class_names', list(model.config.class_names))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value, sort_keys=True)
    proto.producer_name = 'tarfuse_ros'
    onnx.checker.check_model(proto)
    blob = proto.SerializeToString()
    report = ExportReport(output, int(opset), precision,
                          scale_candidates=tuple(model.scale_candidates),
                          fine_passes=fine_passes_of(model))
    if verify:
        report.verify_shape = (check_shape[0], 1) + check_shape[1:]
        report.max_abs_diff = _verify(blob, graph, report.verify_shape, precision,
                                      torch.get_num_threads())
    _stop_if(interrupted)  # swallowed while loading, tracing or checking: output as it was
    stops = []
    # A stop while the file is put in place waits for it: the file is then whole, and the
    # caller is told so (it could not tell a stop just after os.replace from one before).
    with interrupts_held(stops):
        with atomic_output(output) as temporary:
            temporary.write_bytes(blob)
    if stops:
        raise InterruptedWhenComplete(report, f'interrupted once {output} was written')
    return report

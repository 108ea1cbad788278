"""ONNX export (tarfuse-export) and the onnxruntime backend against the torch engine.

Parity is measured on the five real sample pairs of ``samples/`` with the synthetically
misaligned IR (flows up to ~49 px), shipped model (exported without the scale search since
session 14, against ``FusionEngine(scale_search=False)``), onnxruntime 1.32 on the CPU.
Measured with the orientation global stage (max abs over the five pairs, before session 14:
with the search): fused 1 grey level, registered IR
3 grey levels (resampling at edges), flow 0.015 px (the IRLS fit, float32), the same
detections (count and classes) with boxes within 4.3e-3 px, scores within 1.8e-4. (With the
previous learnt global stage: fused 1, registered 1, flow 6.5e-5 px.)
"""

import contextlib
import json
import logging
from pathlib import Path
import subprocess
import sys
import zipfile

import cv2
import numpy as np
import onnx
import pytest
from tarfuse_ros.core.checkpoint import read_checkpoint_config, save_checkpoint
from tarfuse_ros.core.engine import FusionEngine
from tarfuse_ros.core.export import export_onnx, VERIFY_TOLERANCES
from tarfuse_ros.core.fine_passes import BuiltInFinePassesError, NoFineStageError
from tarfuse_ros.core.model import yolo
from tarfuse_ros.core.model.tarfuse import build_model
from tarfuse_ros.core.onnx_backend import CONFIG_KEY, nms_rows, ONNX_KEY, ONNX_OUTPUTS
from tarfuse_ros.core.onnx_backend import OnnxFusionEngine, OnnxModelError, read_onnx_metadata
from tarfuse_ros.core.onnx_output import check_onnx_output
from tarfuse_ros.core.paths import default_weights_path, share_dir, shared_datasets_dir
from tarfuse_ros.tools import export as export_tool
import torch

SAMPLES = Path(__file__).resolve().parents[2] / 'samples'
STEMS = SAMPLES.joinpath('list.txt').read_text().split()


@pytest.fixture(scope='module')
def shipped_onnx(shipped_onnx_file):
    """Return the shipped model's export without the scale search (test/conftest.py).

    One export of the shipped model costs minutes; the tool and its check run on other models
    below (and the engines' parity on real pairs checks this export against
    ``FusionEngine(scale_search=False)``).
    """
    return shipped_onnx_file


@pytest.fixture(scope='module')
def match_checkpoint(tmp_path_factory):
    """Save a randomly initialised model of the default architecture (registration match)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('match') / 'match.safetensors'
    save_checkpoint(path, build_model().eval(), provenance={'note': 'random init, ONNX test'})
    return path


def _pairs():
    for stem in STEMS:
        ir = cv2.imread(str(SAMPLES / 'synthetic_misaligned' / 'ir_warp' / f'{stem}.png'),
                        cv2.IMREAD_UNCHANGED)
        vi = cv2.imread(str(SAMPLES / 'vi' / f'{stem}.jpg'), cv2.IMREAD_COLOR)
        assert ir is not None and vi is not None, stem
        yield stem, ir, vi


def _msrs_pair(stem):
    """Return a real 640x480 msrs_det pair (IR uint8 HxW, visible BGR) from the shared sets."""
    base = shared_datasets_dir()
    folder = None if base is None else Path(base) / 'msrs_det'
    if folder is None or not (folder / 'ir' / f'{stem}.png').is_file():
        pytest.skip('the shared msrs_det set is absent (set TARFUSE_SHARED to the folder holding '
                    'datasets/msrs_det)')
    return (cv2.imread(str(folder / 'ir' / f'{stem}.png'), cv2.IMREAD_GRAYSCALE),
            cv2.imread(str(folder / 'vi' / f'{stem}.png'), cv2.IMREAD_COLOR))


def test_shipped_model_exports_with_dynamic_sizes_and_the_checkpoint_config(shipped_onnx):
    model = onnx.load(str(shipped_onnx))
    assert max(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')) >= 17
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in model.graph.input}
    assert inputs == {'ir': ['batch', 1, 'height', 'width'],
                      'vi': ['batch', 1, 'height', 'width'], 'valid_size': [2]}
    assert [o.name for o in model.graph.output] == list(ONNX_OUTPUTS)
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    config = read_checkpoint_config(default_weights_path())
    # Exported without the scale search: the metadata says so; nothing else differs.
    assert len(config['model']['global_scale_candidates']) == 3
    assert meta[CONFIG_KEY]['model'].pop('global_scale_candidates') == [1.0]
    config['model'].pop('global_scale_candidates')
    # Nor the wide scales, which the search runs (the graph runs none).
    assert len(config['model'].pop('global_wide_scales')) == 2
    assert meta[CONFIG_KEY]['model'].pop('global_wide_scales') == []
    assert meta[CONFIG_KEY] == config
    assert meta['class_names'] == config['model']['class_names']
    assert meta[ONNX_KEY]['precision'] == 'float32' and meta[ONNX_KEY]['size_multiple'] == 32
    assert meta[ONNX_KEY]['min_side'] >= 32 and meta[ONNX_KEY]['opset'] == 17


def test_match_model_exports_and_matches_pytorch_at_another_batch_and_size(
        match_checkpoint, tmp_path):
    report = export_onnx(match_checkpoint, tmp_path / 'match.onnx')
    assert read_checkpoint_config(match_checkpoint)['model']['registration'] == 'match'
    # Traced at (1, 1, 128, 160); checked at batch 2, portrait.
    assert report.verify_shape == (2, 1, 192, 128)
    assert set(report.max_abs_diff) == set(ONNX_OUTPUTS)
    for name, value in report.max_abs_diff.items():
        assert value <= VERIFY_TOLERANCES['float32'][name], (name, value)
    engine = OnnxFusionEngine(tmp_path / 'match.onnx', threads=1)
    assert engine.config['registration'] == 'match' and engine.half is False


def test_orientation_global_stage_exports_and_matches_pytorch_on_real_pairs(tmp_path):
    from dataclasses import replace
    from tarfuse_ros.core.model.tarfuse import TarFuseConfig
    torch.manual_seed(0)
    path = tmp_path / 'orientation.safetensors'
    # A coarse side of 320 px: the export's own check takes the direct start, the real pairs
    # below (wider than 320 px) the halved one, both from one traced graph. A min side of
    # 160 px (the shipped one): PyTorch enlarges smaller frames for the fit, the graph does
    # not, so the export traces and checks where the valid region's sides are above it (a
    # check at 192x128 failed with the shipped model).
    model = build_model(replace(TarFuseConfig(), global_features='orientation',
                                global_coarse_side=320, global_min_side=160)).eval()
    save_checkpoint(path, model, provenance={'note': 'random init, ONNX test'})
    report = export_onnx(path, tmp_path / 'orientation.onnx')
    assert report.verify_shape == (2, 1, 256, 192)  # valid region 251x185 (7 px or less cut)
    for name, value in report.max_abs_diff.items():
        assert value <= VERIFY_TOLERANCES['float32'][name], (name, value)
    import onnxruntime as ort
    session = ort.InferenceSession(str(tmp_path / 'orientation.onnx'),
                                   providers=['CPUExecutionProvider'])
    names = [output.name for output in session.get_outputs()]
    matcher = model.registration.global_matcher
    starts_differ = []
    for _, ir, vi in list(_pairs())[:2]:
        height, width = (s // 32 * 32 for s in vi.shape[:2])
        ir_t = torch.from_numpy(ir[:height, :width].astype(np.float32) / 255.0)[None, None]
        vi_y = cv2.cvtColor(vi, cv2.COLOR_BGR2GRAY)[:height, :width]
        vi_t = torch.from_numpy(vi_y.astype(np.float32) / 255.0)[None, None]
        # The last rows and columns taken as padding: the crop runs the same in onnxruntime.
        valid = (height - 9, width - 13)
        with torch.no_grad():
            expected = model(ir_t, vi_t, valid_size=valid)
        got = dict(zip(names, session.run(None, {'ir': ir_t.numpy(), 'vi': vi_t.numpy(),
                                                 'valid_size': np.array(valid, np.int64)})))
        # The descriptor matching (best two offsets, gather, IRLS) runs the same in onnxruntime.
        assert np.abs(got['flow'] - expected['flow'].numpy()).max() < 0.05
        assert np.abs(got['fused'] - expected['fused'].numpy()).max() < 1e-3
        with torch.no_grad():
            crop_ir, crop_vi = ir_t[:, :, :valid[0], :valid[1]], vi_t[:, :, :valid[0], :valid[1]]
            starts_differ.append(float((matcher._match_from_half(crop_ir, crop_vi)
                                        - matcher._match_once(crop_ir, crop_vi)).abs().max()))
    # The two starts give other maps here, so the match above is the halved branch's.
    assert max(starts_differ) > 1e-3, starts_differ


def test_scale_search_exports_and_the_tool_can_leave_it_out(tmp_path, capsys):
    # The shipped model's scale search and support mask (its export in this file leaves the
    # search out), on one start (no halved frame) to keep the graph small.
    from dataclasses import replace
    from tarfuse_ros.core.model.tarfuse import TarFuseConfig
    torch.manual_seed(0)
    path = tmp_path / 'scales.safetensors'
    # Wide scales as the shipped model's, without its wide search (global_wide_below 0): the
    # metadata must say what --no-scale-search leaves of them (none) and the graph stays small.
    model = build_model(replace(TarFuseConfig(), global_features='orientation',
                                global_scale_candidates=(0.8, 1.0, 1.25),
                                global_wide_scales=(0.64, 1.5625),
                                global_support_mask=True)).eval()
    save_checkpoint(path, model, provenance={'note': 'random init, ONNX test'})
    report = export_onnx(path, tmp_path / 'scales.onnx')
    assert report.scale_candidates == (0.8, 1.0, 1.25)
    for name, value in report.max_abs_diff.items():
        assert value <= VERIFY_TOLERANCES['float32'][name], (name, value)
    # tarfuse-export --no-scale-search: one scale in the graph and in its metadata.
    # (Its parity with FusionEngine(scale_search=False) is checked on the shipped model.)
    assert export_tool.main([str(path), '--out', str(tmp_path / 'one.onnx'), '--no-scale-search',
                             '--no-verify', '--threads', '1']) == 0
    assert 'global stage scales: [1.0]\n' in capsys.readouterr().out
    graphs = {name: onnx.load(str(tmp_path / name)) for name in ('scales.onnx', 'one.onnx')}
    scales = {name: json.loads({p.key: p.value for p in graph.metadata_props}[CONFIG_KEY])[
        'model']['global_scale_candidates'] for name, graph in graphs.items()}
    assert scales == {'scales.onnx': [0.8, 1.0, 1.25], 'one.onnx': [1.0]}
    # The wide scales too: the model clears them with the search (set_global_scale_candidates),
    # and the metadata kept the checkpoint's [0.64, 1.5625], which the graph does not run.
    wide = {name: json.loads({p.key: p.value for p in graph.metadata_props}[CONFIG_KEY])[
        'model']['global_wide_scales'] for name, graph in graphs.items()}
    assert wide == {'scales.onnx': [0.64, 1.5625], 'one.onnx': []}
    assert len(graphs['one.onnx'].graph.node) < 0.6 * len(graphs['scales.onnx'].graph.node)


def test_fine_passes_export_and_are_recorded_in_the_metadata(match_checkpoint, tmp_path,
                                                             capsys):
    # The shipped model's fine stage (4 passes within 4 cells, checked, 0.25 px tolerance) on
    # one start and one scale, to keep the graph small.
    from dataclasses import replace
    from tarfuse_ros.core.model.tarfuse import TarFuseConfig
    torch.manual_seed(0)
    path = tmp_path / 'fine.safetensors'
    save_checkpoint(path, build_model(replace(
        TarFuseConfig(), global_features='orientation', global_fine_cell=4,
        global_fine_passes=4, global_fine_radius=4, global_fine_check=True,
        global_fine_tolerance=0.25)).eval(), provenance={'note': 'random init, ONNX test'})
    # One pass: the graph matches PyTorch run with one pass (export_onnx's own check).
    report = export_onnx(path, tmp_path / 'one.onnx', fine_passes=1)
    assert report.fine_passes == 1
    for name, value in report.max_abs_diff.items():
        assert value <= VERIFY_TOLERANCES['float32'][name], (name, value)
    # tarfuse-export --fine-passes 0: no fine stage in the graph, nor in its metadata.
    assert export_tool.main([str(path), '--out', str(tmp_path / 'none.onnx'), '--fine-passes',
                             '0', '--no-verify', '--threads', '1']) == 0
    assert 'global stage fine passes: 0 (--fine-passes)\n' in capsys.readouterr().out
    graphs = {name: onnx.load(str(tmp_path / name)) for name in ('one.onnx', 'none.onnx')}
    fields = ('global_fine_cell', 'global_fine_passes', 'global_fine_check')
    recorded = {}
    for name, graph in graphs.items():
        model = json.loads({p.key: p.value for p in graph.metadata_props}[CONFIG_KEY])['model']
        recorded[name] = tuple(model[field] for field in fields)
    assert recorded == {'one.onnx': (4, 1, True), 'none.onnx': (0, 4, False)}
    assert len(graphs['none.onnx'].graph.node) < len(graphs['one.onnx'].graph.node)
    # The onnxruntime engine reads the count from the metadata: its own is taken (it was
    # refused as any count), another refused with the graph's count and the export to make.
    for name, own in (('one.onnx', 1), ('none.onnx', 0)):
        for asked in (None, own):
            assert OnnxFusionEngine(tmp_path / name, fine_passes=asked).fine_passes == own
    with pytest.raises(BuiltInFinePassesError) as raised:
        OnnxFusionEngine(tmp_path / 'one.onnx', fine_passes=3)
    assert raised.value.built_in == 1 and (
        f'3 fine passes asked for, but the ONNX graph {tmp_path / "one.onnx"} runs the 1 fine '
        f'passes it was exported with, built in: export one with 3 (tarfuse-export '
        f'WEIGHTS.safetensors --out MODEL.onnx --fine-passes 3)') in str(raised.value)
    # Out of range, and passes for a checkpoint without a fine stage: usage errors.
    assert export_tool.main([str(path), '--out', str(tmp_path / 'bad.onnx'), '--fine-passes',
                             '9']) == 2
    assert '--fine-passes must be an integer in [0, 8]' in capsys.readouterr().err
    assert export_tool.main([str(match_checkpoint), '--out', str(tmp_path / 'bad.onnx'),
                             '--fine-passes', '2', '--no-verify', '--threads', '1']) == 2
    assert '2 fine passes asked for, but this checkpoint has no fine stage' in (
        capsys.readouterr().err)
    assert not (tmp_path / 'bad.onnx').exists()


def test_a_graph_whose_metadata_lacks_its_fine_passes_takes_only_its_own(shipped_onnx,
                                                                         tmp_path):
    # The metadata's count was read as the checkpoint loader's default (1) while the graph
    # runs another (the shipped model's 4): fine_passes 1 was taken as the graph's own.
    proto = onnx.load(str(shipped_onnx))
    entry, = (entry for entry in proto.metadata_props if entry.key == CONFIG_KEY)
    config = json.loads(entry.value)
    assert config['model'].pop('global_fine_passes') == 4
    entry.value = json.dumps(config)
    path = tmp_path / 'unrecorded.onnx'
    onnx.save(proto, str(path))
    assert OnnxFusionEngine(path).fine_passes is None
    for asked in (0, 1, 4):
        with pytest.raises(BuiltInFinePassesError) as raised:
            OnnxFusionEngine(path, fine_passes=asked)
        assert raised.value.built_in is None and (
            f'{asked} fine passes asked for, but the metadata of the ONNX graph {path} does not '
            f'record how many it runs (no global_fine_passes): only its own count applies '
            f'(None); export it again with tarfuse-export') in str(raised.value), (
            str(raised.value))


def test_fine_passes_asked_of_a_graph_without_a_global_stage_say_none_apply(match_checkpoint,
                                                                            tmp_path):
    # The default architecture has no orientation global stage, hence no fine passes: the
    # refusal said 'export one with 2 (... --fine-passes 2)', which tarfuse-export refuses for
    # this checkpoint. As the torch engine: NoFineStageError, 0 or the model's own apply.
    path = tmp_path / 'match.onnx'
    export_onnx(match_checkpoint, path, verify=False)
    assert OnnxFusionEngine(path, fine_passes=0).fine_passes == 0
    with pytest.raises(NoFineStageError) as raised:
        OnnxFusionEngine(path, fine_passes=2)
    message = str(raised.value)
    assert '2 fine passes asked for, but the ONNX graph' in message
    assert 'has no fine stage (no orientation global stage' in message
    assert "only 0 or the graph's own count apply" in message
    assert '--fine-passes' not in message, message


def _foreign_onnx(tmp_path):
    """Write a valid ONNX model that tarfuse-export did not write (one Identity node)."""
    identity = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node('Identity', ['x'], ['y'])], 'other',
        [onnx.helper.make_tensor_value_info('x', onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info('y', onnx.TensorProto.FLOAT, [1])]),
        opset_imports=[onnx.helper.make_opsetid('', 17)],
        ir_version=8)  # onnx's own default (14 in onnx 1.23) is newer than older runtimes load
    foreign = tmp_path / 'foreign.onnx'
    onnx.save(identity, str(foreign))
    return foreign


def test_the_onnx_engine_refuses_fine_passes_out_of_range_before_reading_the_file(tmp_path):
    # The graph has its fine passes built in, as its scales: a count is compared with the
    # graph's own once the file is read (test_fine_passes_export_...), one out of range first.
    foreign = _foreign_onnx(tmp_path)
    for passes in (9, -1, True):
        with pytest.raises(ValueError, match=r'fine_passes must be an integer in \[0, 8\]'):
            OnnxFusionEngine(foreign, fine_passes=passes)
    for passes in (None, 2):  # the file is then read
        with pytest.raises(OnnxModelError):
            OnnxFusionEngine(foreign, fine_passes=passes)


def test_the_onnx_engine_takes_numpy_integer_threads(tmp_path):
    # np.int64(2) was refused: 'threads must be None or an integer >= 1, got np.int64(2)'.
    foreign = _foreign_onnx(tmp_path)
    for threads in (np.int64(2), np.int32(1)):
        with pytest.raises(OnnxModelError, match='not written by tarfuse-export'):
            OnnxFusionEngine(foreign, threads=threads)  # the file is read: threads taken
    for bad in (0, 1.0, np.float32(2), True):
        with pytest.raises(ValueError, match='threads must be None or an integer >= 1'):
            OnnxFusionEngine(foreign, threads=bad)


def test_a_missing_onnx_package_is_named_with_how_to_install_it(
        tmp_path, capsys, monkeypatch):
    # The engine, and tarfuse-export without onnx, stopped with a ModuleNotFoundError traceback
    # (the export without onnxruntime after tracing); the packages are optional (README).
    foreign = _foreign_onnx(tmp_path)
    medical = str(share_dir() / 'models' / 'tarfuse_medical.safetensors')
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # as if it were not installed
    for load in (OnnxFusionEngine, read_onnx_metadata):
        with pytest.raises(ValueError, match='the onnxruntime backend needs the onnxruntime '
                                             'package, which cannot be imported .*pip install '
                                             'onnxruntime'):
            load(foreign)
    assert export_tool.main([medical, '--out', str(tmp_path / 'a.onnx'), '--threads', '1']) == 2
    assert ('the check against PyTorch (--no-verify skips it) needs the onnxruntime package'
            in capsys.readouterr().err)
    monkeypatch.setitem(sys.modules, 'onnx', None)
    assert export_tool.main([medical, '--out', str(tmp_path / 'b.onnx'), '--no-verify']) == 2
    assert 'tarfuse-export needs the onnx package, which cannot be imported' in (
        capsys.readouterr().err)
    assert [path.name for path in tmp_path.glob('*.onnx*')] == ['foreign.onnx']


def test_the_onnx_engine_refuses_settings_of_another_type_by_name(tmp_path):
    # half='no' and allow_cpu_fallback='no' were taken as true, ir_low None raised a TypeError.
    foreign = _foreign_onnx(tmp_path)
    for kwargs, words in (({'half': 'no'}, "half must be True or False, got 'no'"),
                          ({'allow_cpu_fallback': 'no'}, 'allow_cpu_fallback must be True or'),
                          ({'scale_search': 'yes'}, 'scale_search must be True or False'),
                          ({'ir_low': None}, 'ir_low and ir_high must be numbers')):
        with pytest.raises(ValueError, match=words):
            OnnxFusionEngine(foreign, **kwargs)


def test_half_export_keeps_float32_inputs_and_outputs(match_checkpoint, tmp_path, caplog):
    report = export_onnx(match_checkpoint, tmp_path / 'half.onnx', half=True)
    assert report.precision == 'float16' and report.max_abs_diff
    model = onnx.load(str(tmp_path / 'half.onnx'))
    float32 = onnx.TensorProto.FLOAT
    assert all(v.type.tensor_type.elem_type == float32
               for v in list(model.graph.input) + list(model.graph.output))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    with caplog.at_level(logging.WARNING, logger='tarfuse_ros.core.onnx_backend'):
        assert OnnxFusionEngine(tmp_path / 'half.onnx', threads=1).half is True
    # On the CPU it is no faster than float32, and less exact: it was run without a word.
    assert [record.getMessage() for record in caplog.records] == [
        f"{tmp_path / 'half.onnx'} is a float16 export (tarfuse-export --half) run on the CPU, "
        f'where onnxruntime runs it no faster than a float32 export and less exactly; for '
        f'the CPU, export without --half']


def test_half_export_keeps_the_orientation_global_stage_float32(tmp_path):
    # As the torch engine runs it (its normal equations need float32): converted with the
    # rest, the shipped model's maps drifted by 1.2-1.6 px of flow on CVC-14 pairs.
    from dataclasses import replace
    from tarfuse_ros.core.model.tarfuse import TarFuseConfig
    torch.manual_seed(0)
    path = tmp_path / 'orientation.safetensors'
    save_checkpoint(path, build_model(replace(TarFuseConfig(), global_features='orientation',
                                              global_min_side=160)).eval(),
                    provenance={'note': 'random init, ONNX test'})
    report = export_onnx(path, tmp_path / 'half.onnx', half=True)
    for name, value in report.max_abs_diff.items():
        assert value <= VERIFY_TOLERANCES['float16'][name], (name, value)
    model = onnx.load(str(tmp_path / 'half.onnx'))
    float32 = onnx.TensorProto.FLOAT
    assert [v.type.tensor_type.elem_type for v in list(model.graph.input)
            + list(model.graph.output)] == [float32] * 2 + [onnx.TensorProto.INT64] + [float32] * 4
    # The global stage computes in float32, the learnt layers in float16: the types of
    # every tensor the graph makes, by the part of the graph that makes it.
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.value_info}
    made = {}
    for node in model.graph.node:
        stage = node.name.startswith(('/global_matcher/', '/registration/global_matcher/'))
        for name in node.output:
            made.setdefault(stage, set()).add(types.get(name))
    float16 = onnx.TensorProto.FLOAT16
    assert float32 in made[True] and float16 not in made[True]
    assert float16 in made[False]


def test_half_export_of_a_shipped_model_passes_its_own_check(tmp_path, capsys):
    # tarfuse-export --half failed its check (exit 1) for both shipped models: the float16
    # tolerances were set for the first models; registered_ir differed by 0.15 (medical) and
    # 0.38 (default, with det 11.8 px) at a few pixels near the borders, where a flow that
    # differs by a fraction of a pixel samples across the frame's edge.
    out = tmp_path / 'medical_half.onnx'
    code = export_tool.main([str(share_dir() / 'models' / 'tarfuse_medical.safetensors'),
                             '--out', str(out), '--half', '--threads', '1'])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert 'float16' in captured.out and 'checked against PyTorch' in captured.out
    assert OnnxFusionEngine(out, threads=1).half is True


def test_export_tool_usage_errors(tmp_path, capsys):
    weights = str(default_weights_path())
    assert export_tool.main([weights, '--out', str(tmp_path / 'a.onnx'), '--opset', '16']) == 2
    assert 'opset must be an integer >= 17' in capsys.readouterr().err
    # An opset above the exporter's: refused at once (it traced, minutes for the shipped model,
    # then failed with exit 1).
    medical = str(share_dir() / 'models' / 'tarfuse_medical.safetensors')
    assert export_tool.main([medical, '--out', str(tmp_path / 'a.onnx'), '--opset', '24',
                             '--no-verify', '--no-scale-search', '--threads', '1']) == 2
    assert ('opset must be an integer >= 17 and <= 23 (the newest torch.onnx.export writes), '
            'got 24') in capsys.readouterr().err
    assert export_tool.main([str(tmp_path / 'absent.safetensors'), '--out',
                             str(tmp_path / 'b.onnx')]) == 2
    assert 'does not exist' in capsys.readouterr().err
    assert not list(tmp_path.glob('*.onnx'))
    # --out a folder: refused before the export (it failed renaming a temporary file after it).
    assert export_tool.main([weights, '--out', str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--out '{tmp_path}' is a folder" in err and '.tmp' not in err
    # A folder named with a trailing separator that does not exist yet (a file was written
    # under the folder's name).
    assert export_tool.main([weights, '--out', str(tmp_path / 'new') + '/']) == 2
    assert f"--out '{tmp_path / 'new'}' names a folder" in capsys.readouterr().err
    assert not (tmp_path / 'new').exists()
    # The library's flags are bools: a string such as 'no' counted as true (a float16 graph).
    for flag in ('half', 'verify', 'scale_search'):
        with pytest.raises(ValueError, match=f"{flag} must be True or False, got 'no'"):
            export_onnx(weights, tmp_path / 'c.onnx', **{flag: 'no'})
    assert not list(tmp_path.glob('*.onnx'))


def _export_medical(out):
    """Run ``tarfuse-export`` on the medical model (small, quick) to ``out``; return its status."""
    return export_tool.main([str(share_dir() / 'models' / 'tarfuse_medical.safetensors'),
                             '--out', str(out), '--no-verify', '--threads', '1',
                             '--no-scale-search'])


def _assert_stopped_once_written_whole(code, captured, out):
    """Assert the export stopped (130) with its one line, once ``out`` was written whole."""
    assert code == 130 and not captured.out, captured
    assert captured.err == (f'tarfuse-export: interrupted once {out} was written whole; the '
                            f'summary was not printed\n')
    assert [o.name for o in onnx.load(str(out)).graph.output] == [
        'fused', 'flow', 'registered_ir']


def test_export_tool_refuses_an_out_it_cannot_write_before_exporting(tmp_path, capsys):
    # It ran the whole export (minutes for the shipped model), then failed writing (exit 1).
    (tmp_path / 'file').write_text('not a folder')
    out = tmp_path / 'file' / 'onnx' / 'medical.onnx'
    code = _export_medical(out)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err == (f"tarfuse-export: error: --out '{out}' cannot be written "
                            f"({tmp_path / 'file'} is a file, not a folder); give a path in a "
                            f'folder you can write to\n')
    assert not captured.out and list(tmp_path.iterdir()) == [tmp_path / 'file']


def test_export_tool_never_replaces_a_file_that_is_not_named_onnx(tmp_path, capsys):
    # --out tarfuse.engine (the TensorRT engine built from an earlier export, minutes of
    # trtexec on a Jetson) was replaced by the ONNX file without a word.
    engine = tmp_path / 'tarfuse.engine'
    engine.write_bytes(b'a TensorRT engine')
    weights = str(default_weights_path())
    assert export_tool.main([weights, '--out', str(engine)]) == 2
    captured = capsys.readouterr()
    assert captured.err == (f"tarfuse-export: error: --out '{engine}' is a file that is not "
                            f'named .onnx; tarfuse-export would replace it with an ONNX model: '
                            f"give a path ending in .onnx (e.g. '{tmp_path / 'tarfuse.onnx'}'), "
                            f'or remove the file first\n')
    assert engine.read_bytes() == b'a TensorRT engine'
    with pytest.raises(ValueError, match='is a file that is not named .onnx'):
        export_onnx(weights, engine)
    # A new file of any name, and an earlier export (.onnx, any case), may be written.
    check_onnx_output(tmp_path / 'model', weights)
    (tmp_path / 'old.ONNX').write_bytes(b'an earlier export')
    check_onnx_output(tmp_path / 'old.ONNX', weights)


def test_export_onnx_refuses_an_output_it_cannot_write_before_tracing(tmp_path):
    # The Python function traced the model and failed on writing ('IsADirectoryError') only.
    medical = share_dir() / 'models' / 'tarfuse_medical.safetensors'
    copy = tmp_path / 'medical.safetensors'
    copy.write_bytes(medical.read_bytes())
    for output, words in (
            (tmp_path, f"output '{tmp_path}' is a folder; give the ONNX file to write (e.g. "
                       f"'{tmp_path / 'tarfuse.onnx'}')"),
            # A folder to be, named as such: a file was written under its name.
            (f'{tmp_path}/new/', f"output '{tmp_path / 'new'}' names a folder (trailing /)"),
            ('/proc/tarfuse.onnx', "output '/proc/tarfuse.onnx' cannot be written (folder "
                                   '/proc is not writable); give a path in a folder you can '
                                   'write to'),
            # The checkpoint itself was replaced by the ONNX file.
            (copy, f"output '{copy}' is the checkpoint being exported; the ONNX file would "
                   f"replace it: give another path (e.g. '{tmp_path / 'medical.onnx'}')"),
            (tmp_path / 'other.safetensors', f"output '{tmp_path / 'other.safetensors'}' names "
                                             f'a .safetensors file, but an ONNX file is '
                                             f'written there')):
        with pytest.raises(ValueError) as raised:
            export_onnx(copy, output, verify=False)
        assert str(raised.value).startswith(words), raised.value
    assert copy.read_bytes() == medical.read_bytes()
    assert sorted(tmp_path.iterdir()) == [copy]


def test_export_tool_and_function_say_the_same_of_an_output(tmp_path, capsys):
    # Each checked --out with its own wording ('is a folder, not a file; give the path of an
    # .onnx file ...' from the function, 'is a folder; give the ONNX file to write ...' from
    # the tool), and only the tool refused a path ending in '/'.
    weights = tmp_path / 'medical.safetensors'
    weights.write_bytes((share_dir() / 'models' / 'tarfuse_medical.safetensors').read_bytes())
    (tmp_path / 'file').write_text('not a folder')
    for out in (str(tmp_path), f'{tmp_path}/new/', str(weights),
                str(tmp_path / 'a.safetensors'), str(tmp_path / 'file' / 'a.onnx')):
        assert export_tool.main([str(weights), '--out', out, '--no-verify']) == 2
        printed = capsys.readouterr().err
        with pytest.raises(ValueError) as raised:
            export_onnx(weights, out, verify=False)
        said = str(raised.value)
        assert said.startswith('output ') and printed == (
            f'tarfuse-export: error: --out {said[len("output "):]}\n'), (printed, said)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['file', 'medical.safetensors']


def test_export_tool_refuses_an_out_before_loading_torch(tmp_path):
    # The --out checks run before torch loads (seconds), in the tool's own process.
    code = ('import sys; from tarfuse_ros.console import export; status = export(); '
            "print('torch loaded' if 'torch' in sys.modules else 'no torch'); sys.exit(status)")
    weights = str(share_dir() / 'models' / 'tarfuse_medical.safetensors')
    for out in (str(tmp_path), str(tmp_path / 'a.safetensors'), '/proc/a.onnx'):
        done = subprocess.run([sys.executable, '-c', code, weights, '--out', out],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stdout == 'no torch\n', (done.stdout, done.stderr)
        assert done.stderr.startswith(f"tarfuse-export: error: --out '{out}' "), done.stderr


def test_export_tool_refuses_to_overwrite_its_checkpoint(tmp_path, capsys):
    # --out the input itself replaced the checkpoint by the ONNX file (exit 0), and any
    # --out X.safetensors wrote an ONNX file that the node refuses as a checkpoint.
    weights = tmp_path / 'medical.safetensors'
    weights.write_bytes((share_dir() / 'models' / 'tarfuse_medical.safetensors').read_bytes())
    before = weights.read_bytes()
    (tmp_path / 'link.safetensors').symlink_to(weights)
    for out, words in ((weights, 'is the checkpoint being exported'),
                       (tmp_path / 'link.safetensors', 'is the checkpoint being exported'),
                       (tmp_path / 'other.SAFETENSORS', 'names a .safetensors file')):
        code = export_tool.main([str(weights), '--out', str(out), '--no-verify', '--threads',
                                 '1', '--no-scale-search'])
        captured = capsys.readouterr()
        assert code == 2, captured
        assert words in captured.err and '.onnx' in captured.err, captured.err
        assert not captured.out
    assert weights.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['link.safetensors',
                                                          'medical.safetensors']


def test_export_tool_names_the_outputs_it_wrote(tmp_path, capsys):
    # The medical model has no detection head: no det output, and the tool must not claim one.
    out = tmp_path / 'my models' / 'medical.onnx'
    code = _export_medical(out)
    printed = capsys.readouterr().out
    assert code == 0, printed
    # No orientation global stage: nothing to leave out, and the tool says so.
    assert '--no-scale-search had no effect' in printed and 'scales:' not in printed
    assert [o.name for o in onnx.load(str(out)).graph.output] == [
        'fused', 'flow', 'registered_ir']
    assert 'outputs fused, flow, registered_ir)' in printed  # it printed '..., det)'
    # A path with a space: the commands it prints are quoted for a shell (they were not).
    assert f"trtexec '--onnx={out}' " in printed, printed
    # A command a user copies: 'fuse_node with -p ...' (no --ros-args) started the torch backend.
    assert (f"run it: fuse_node --ros-args -p backend:=onnxruntime -p 'weights:={out}' "
            f"(ros2 launch tarfuse_ros fuse.launch.py backend:=onnxruntime 'weights:={out}');"
            in printed), printed


@pytest.mark.parametrize('moment', ['importing onnxruntime', 'tracing'])
def test_sigterm_mid_export_stops_as_ctrl_c_does_and_writes_nothing(tmp_path, moment):
    # SIGTERM (timeout, a job scheduler) killed the export at once (exit status -15), where
    # every other tool stops as on Ctrl-C: exit 130 and one line saying what was left undone.
    # Once stopped so, a SIGTERM while onnxruntime was imported (it turns the interrupt into
    # an ImportError) was reported as 'needs the onnxruntime package', exit 2.
    import signal
    medical = share_dir() / 'models' / 'tarfuse_medical.safetensors'
    out = tmp_path / 'medical.onnx'
    out.write_bytes(b'an earlier export')  # left as it was
    process = subprocess.Popen(
        [sys.executable, '-m', 'tarfuse_ros.tools.export', str(medical), '--out', str(out),
         '--threads', '1', '--no-scale-search'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def mapped(name):
        try:
            return name in Path(f'/proc/{process.pid}/maps').read_text()
        except OSError:  # it has exited
            return False

    # export_onnx imports onnxruntime (for its check), then maps the checkpoint while it loads
    # it, then traces: polled without a pause, the first marker lands inside the import.
    marks = [(True, 'onnxruntime')] + (
        [(True, medical.name), (False, medical.name)] if moment == 'tracing' else [])
    for present, name in marks:
        while process.poll() is None and mapped(name) != present:
            pass
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert not stdout and stderr == (
        f'tarfuse-export: interrupted: the export was not finished and no ONNX file was '
        f'written ({out} is as it was)\n')
    assert out.read_bytes() == b'an earlier export'
    assert sorted(tmp_path.iterdir()) == [out]  # no temporary left beside it


def test_a_stop_while_the_onnx_file_is_put_in_place_waits_for_it(
        tmp_path, capsys, monkeypatch):
    # A SIGTERM in the last instant (the file replaced, the summary not yet printed) said 'no
    # ONNX file was written' of a file that was: the write is whole, and the tool says so.
    import os
    import signal
    from tarfuse_ros.core import export as export_module
    real_output = export_module.atomic_output

    @contextlib.contextmanager
    def signalled_output(path):
        with real_output(path) as temporary:
            yield temporary
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, as the file goes in place

    monkeypatch.setattr(export_module, 'atomic_output', signalled_output)
    out = tmp_path / 'medical.onnx'
    _assert_stopped_once_written_whole(_export_medical(out), capsys.readouterr(), out)
    assert sorted(tmp_path.iterdir()) == [out]


def test_a_stop_a_library_swallows_mid_export_still_stops_it(tmp_path, capsys, monkeypatch):
    # A library that catches the KeyboardInterrupt a SIGTERM raised in it (a bare except
    # around an optional import) let the export run on: the file was replaced and the tool
    # printed its summary, exit status 0.
    import os
    import signal
    from tarfuse_ros.core import export as export_module
    real_load = export_module.load_checkpoint
    swallowed = []

    def load_swallowing_a_stop(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, as the checkpoint loads
        except KeyboardInterrupt:
            swallowed.append(True)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(export_module, 'load_checkpoint', load_swallowing_a_stop)
    out = tmp_path / 'medical.onnx'
    out.write_bytes(b'an earlier export')  # left as it was
    code = _export_medical(out)
    captured = capsys.readouterr()
    assert swallowed == [True]
    assert code == 130 and not captured.out, captured
    assert captured.err == (f'tarfuse-export: interrupted: the export was not finished and no '
                            f'ONNX file was written ({out} is as it was)\n')
    assert out.read_bytes() == b'an earlier export'
    assert sorted(tmp_path.iterdir()) == [out]  # no temporary left beside it


def test_a_stop_after_the_file_was_written_says_it_was(tmp_path, capsys, monkeypatch):
    # A SIGTERM while the tool read the written file back for its summary said 'the export
    # was not finished and no ONNX file was written' of a file that was.
    import os
    import signal
    real_names = export_tool._graph_names

    def names_then_a_stop(path):
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal, as the file is read back
        return real_names(path)

    monkeypatch.setattr(export_tool, '_graph_names', names_then_a_stop)
    out = tmp_path / 'medical.onnx'
    _assert_stopped_once_written_whole(_export_medical(out), capsys.readouterr(), out)


@pytest.fixture(scope='module')
def engines(shipped_onnx):
    torch.set_num_threads(1)
    return (FusionEngine(default_weights_path(), device='cpu', scale_search=False),
            OnnxFusionEngine(shipped_onnx, device='cpu', threads=1))


def _box(det):
    return np.array([det.x1, det.y1, det.x2, det.y2])


def test_onnxruntime_backend_matches_the_torch_engine_on_real_pairs(engines):
    torch_engine, onnx_engine = engines
    assert onnx_engine.class_names == torch_engine.class_names
    worst = {'fused': 0, 'fused_over_1': 0.0, 'registered': 0, 'flow': 0.0, 'box': 0.0,
             'score': 0.0}
    detections = 0
    for stem, ir, vi in _pairs():
        expected, got = torch_engine.infer(ir, vi), onnx_engine.infer(ir, vi)
        assert got.fused.shape == expected.fused.shape == vi.shape, stem
        assert got.flow_px.shape == expected.flow_px.shape and got.flow_px.dtype == np.float32
        fused_diff = np.abs(got.fused.astype(int) - expected.fused)
        worst['fused'] = max(worst['fused'], int(fused_diff.max()))
        worst['fused_over_1'] = max(worst['fused_over_1'], float((fused_diff > 1).mean()))
        worst['registered'] = max(worst['registered'], int(np.abs(
            got.registered_ir.astype(int) - expected.registered_ir).max()))
        worst['flow'] = max(worst['flow'], float(np.abs(got.flow_px - expected.flow_px).max()))
        assert [d.class_id for d in got.detections] == [
            d.class_id for d in expected.detections], stem
        for ours, theirs in zip(got.detections, expected.detections):
            assert ours.class_name == theirs.class_name
            worst['box'] = max(worst['box'], float(np.abs(_box(ours) - _box(theirs)).max()))
            worst['score'] = max(worst['score'], abs(ours.score - theirs.score))
        detections += len(expected.detections)
        assert set(got.timings_ms) == {'preprocess', 'model', 'postprocess', 'total'}
    assert detections >= 5, 'the comparison needs detections to compare'
    # The registered IR is the IR resampled at the flow: on an edge of ~200 grey levels per
    # pixel, the flows' 0.015 px difference is 3 levels. The issue's parity goal is on the
    # fused image and the flow: within 1 grey level, but for a few edge pixels (the target-aware
    # default of match_v5 puts IR edges into the fused image: 2 levels on < 0.01 % of pixels).
    assert worst['fused'] <= 2 and worst['fused_over_1'] <= 1e-3, worst
    assert worst['registered'] <= 4, worst
    assert worst['flow'] <= 0.05, worst
    assert worst['box'] <= 1e-2 and worst['score'] <= 1e-3, worst


@pytest.mark.parametrize('size', [(641, 481), (1000, 260)])
def test_onnxruntime_backend_matches_the_torch_engine_at_odd_sizes_of_a_misaligned_pair(
        engines, size):
    """A real CVC-14 pair resized to a frame the engines pad (``size``: width, height in px).

    The 641x481 frame's matching is close to a tie, so the two backends' float rounding moves
    its map by a few tenths of a pixel, by how much depending on the CPU's kernels: on the VM of
    session 36 flow 0.06 px and 0.006 % of the fused pixels more than 1 grey level off (0.42 px
    and 2.2 % with onnxruntime's basic graph rewrites only), on the AVX-512 VM of session 37
    0.28 px and 1.1 % (0.21 px and 0.7 % with the basic rewrites or none). The bounds hold for
    both and catch what a size frozen into the graph or wrong padding would do (pixels).
    """
    torch_engine, onnx_engine = engines
    folder = Path(__file__).resolve().parents[1] / 'data' / 'datasets' / 'cvc14_misaligned'
    ir = cv2.resize(cv2.imread(str(folder / 'ir' / 'cvc14_01.png'), cv2.IMREAD_UNCHANGED), size)
    vi = cv2.resize(cv2.imread(str(folder / 'vi' / 'cvc14_01.png'), cv2.IMREAD_UNCHANGED), size)
    expected, got = torch_engine.infer(ir, vi), onnx_engine.infer(ir, vi)
    fused_diff = np.abs(got.fused.astype(int) - expected.fused)
    assert (fused_diff > 1).mean() <= 0.03, int(fused_diff.max())
    flow_diff = np.abs(got.flow_px - expected.flow_px)
    assert flow_diff.max() <= 0.6 and flow_diff.mean() <= 0.1, (flow_diff.max(), flow_diff.mean())


def test_onnxruntime_backend_batches_mixed_sizes_and_applies_thresholds(engines):
    _, engine = engines
    (_, ir_a, vi_a), (_, ir_b, vi_b) = list(_pairs())[:2]
    grey = cv2.cvtColor(vi_b, cv2.COLOR_BGR2GRAY)
    batch = engine.infer_batch([ir_a, ir_b, ir_a], [vi_a, grey, vi_a])
    single = engine.infer(ir_b, grey)
    assert batch[1].fused.shape == grey.shape
    assert np.abs(batch[1].fused.astype(int) - single.fused).max() <= 1
    assert np.array_equal(batch[0].fused, batch[2].fused)
    engine.set_thresholds(conf_threshold=0.99)
    try:
        assert engine.infer(ir_a, vi_a).detections == []
        with pytest.raises(ValueError, match='conf_threshold'):
            engine.set_thresholds(conf_threshold=1.5)
        assert engine.thresholds[0] == 0.99
    finally:
        engine.set_thresholds(conf_threshold=0.25)


def test_onnxruntime_backend_warns_once_on_frames_below_the_global_min_side(
        engines, shipped_onnx, caplog):
    """Said once per engine, naming settings that exist and a value that works.

    The two backends' maps differ there by tens of pixels (README); nothing said so. Then it
    said 'use backend torch, or input_min_long_side to enlarge them', and a node user found no
    input_min_long_side parameter: it is a model field of the checkpoint. (One test: the
    module's engine says it once, and a fresh engine's onnxruntime session costs 6 s.)
    """
    from tarfuse_ros.core.model.tarfuse import TarFuseConfig
    from tarfuse_ros.core.sizes import enlarged_size
    _, onnx_engine = engines
    _, ir, vi = next(_pairs())
    small = [cv2.resize(image, (100, 74), interpolation=cv2.INTER_AREA) for image in (ir, vi)]
    with caplog.at_level(logging.WARNING, logger='tarfuse_ros.core.onnx_backend'):
        onnx_engine.infer(ir, vi)
        assert not caplog.records  # 512x346 (the sample's size) is above 160 px
        onnx_engine.infer(*small)
        onnx_engine.infer(*small)
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "100x74 frame is below the global stage's min side (160 px)" in message, message
    assert ('use backend torch (node parameters backend:=torch and '
            'weights:=CHECKPOINT.safetensors; in the tools, the .safetensors checkpoint), '
            "or have such frames enlarged for the graph: set the checkpoint's model field "
            'input_min_long_side (not a node parameter) to 216 or more, e.g. python '
            'benchmarks/set_inference_fields.py CHECKPOINT OUT --set input_min_long_side=216, '
            'and export OUT again with tarfuse-export') in message, message
    assert 'input_min_long_side' in TarFuseConfig.__dataclass_fields__
    set_fields = (Path(__file__).resolve().parents[2] / 'benchmarks'
                  / 'set_inference_fields.py').read_text()
    assert "'input_min_long_side'" in set_fields
    # 216 is the least value that lifts the 74 px side to 160 px: with it nothing is said.
    assert min(enlarged_size(74, 100, 215)) < 160 <= min(enlarged_size(74, 100, 216))
    enlarged = OnnxFusionEngine(shipped_onnx, device='cpu', threads=1, input_min_long_side=216)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='tarfuse_ros.core.onnx_backend'):
        enlarged.infer(*small)
    assert not caplog.records, caplog.text
    # Last: the node's parameters (skipped where ROS is absent).
    params = pytest.importorskip('tarfuse_ros.ros.params')
    node_parameters = {spec.name for spec in params.PARAMETER_SPECS}
    assert {'backend', 'weights'} <= node_parameters
    assert 'input_min_long_side' not in node_parameters


def test_onnxruntime_backend_runs_no_torch_operation(engines, roadscene_pair):
    from torch.overrides import TorchFunctionMode

    calls = []

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            calls.append(getattr(func, '__name__', str(func)))
            return func(*args, **(kwargs or {}))

    _, engine = engines
    with Recorder():
        result = engine.infer(*roadscene_pair)
    assert result.fused.shape == roadscene_pair[1].shape
    assert calls == []


def test_onnxruntime_backend_does_not_import_torch(shipped_onnx):
    # It checked the export's model config with TarFuseConfig and parsed its device with
    # core.runtime, both in torch modules: the node with backend onnxruntime loaded torch
    # (about 650 MB RSS, over a second of CPU at start) for no torch operation.
    code = ('import sys; import cv2; from tarfuse_ros.core.onnx_backend import OnnxFusionEngine; '
            "engine = OnnxFusionEngine(sys.argv[1], device='cpu', threads=1); "
            'result = engine.infer(cv2.imread(sys.argv[2], cv2.IMREAD_GRAYSCALE), '
            'cv2.imread(sys.argv[3], cv2.IMREAD_COLOR)); '
            "print(result.fused.shape, 'torch loaded' if 'torch' in sys.modules else 'no torch')")
    pair = [str(SAMPLES / kind / 'FLIR_00122.jpg') for kind in ('ir', 'vi')]
    done = subprocess.run([sys.executable, '-c', code, str(shipped_onnx), *pair],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split('\n')[-2].endswith(' no torch'), (done.stdout, done.stderr)


@pytest.mark.parametrize('classes', [None, (2,), (0, 1)])
def test_opencv_nms_equals_ultralytics_nms(classes):
    rng = np.random.default_rng(3)
    anchors, num_classes = 400, 3
    centre = rng.uniform(20, 300, (2, anchors))
    size = rng.uniform(10, 80, (2, anchors))
    # Clusters of overlapping boxes: many suppressions, several classes.
    centre[:, ::4] = centre[:, 1::4] + rng.uniform(-5, 5, (2, anchors // 4))
    probs = rng.uniform(0, 1, (num_classes, anchors)) ** 3
    det = np.concatenate((centre, size, probs)).astype(np.float32)
    for conf, iou, max_det in ((0.25, 0.45, 100), (0.1, 0.7, 30), (0.5, 0.3, 300)):
        ours = nms_rows(det, conf, iou, max_det, classes)
        theirs = yolo.non_max_suppression(torch.from_numpy(det)[None], conf, iou, classes,
                                          max_det, num_classes)[0].numpy()
        assert ours.shape == theirs.shape and len(ours) > 0, (conf, iou, max_det)
        assert np.allclose(ours, theirs, atol=1e-4), (conf, iou, max_det)


def test_a_bad_onnx_file_is_refused_with_one_clear_error(tmp_path):
    corrupt = tmp_path / 'corrupt.onnx'
    corrupt.write_bytes(b'\x08\x07 not a protobuf at all' * 50)
    foreign = _foreign_onnx(tmp_path)
    pytorch = tmp_path / 'model.pt'  # torch.save writes a zip; never loaded back
    torch.save({'weight': torch.zeros(2)}, pytorch)
    archive = tmp_path / 'model.zip'  # it was called a PyTorch pickle/zip checkpoint
    with zipfile.ZipFile(archive, 'w') as handle:
        handle.write(foreign, 'model.onnx')
    with pytest.raises(OnnxModelError) as raised:
        OnnxFusionEngine(archive)
    assert str(raised.value) == (f'{archive} is a zip archive (holding model.onnx), not an ONNX '
                                 f'model: extract the .onnx file from it and pass that')
    cases = {corrupt: 'is not a loadable ONNX model', foreign: 'not written by tarfuse-export',
             tmp_path / 'absent.onnx': 'does not exist',
             tmp_path: 'is a folder, not an ONNX file',  # it said 'does not exist'
             pytorch: 'is a PyTorch pickle/zip checkpoint, not an ONNX model'}
    for path, words in cases.items():
        with pytest.raises(OnnxModelError) as raised:
            OnnxFusionEngine(path)
        message = str(raised.value)
        assert words in message and 'tarfuse-export' in message, message
        assert '\n' not in message
    # The graph has its scales built in: the torch engine's scale_search=False is refused.
    with pytest.raises(ValueError, match='scale_search=False needs the torch engine') as raised:
        OnnxFusionEngine(foreign, scale_search=False)
    assert 'tarfuse-export WEIGHTS --out MODEL.onnx --no-scale-search' in str(raised.value)


@pytest.mark.parametrize('stamp', ['ir_version', 'opset'])
def test_an_onnx_file_too_new_for_this_onnxruntime_says_so_and_what_to_do(tmp_path, stamp):
    # An export of --opset 23 on a workstation, run on a robot's older onnxruntime: the
    # reason, after the C++ signature onnxruntime names, was cut off at 300 characters
    # ('... model.cc:256 onnxruntime::Model::Model(onnx::ModelProto&&, const ...'), and the
    # advice was to export a file, which it was.
    import onnxruntime
    proto = onnx.load(str(_foreign_onnx(tmp_path)))
    if stamp == 'ir_version':
        proto.ir_version, words = 99, 'Unsupported model IR version: 99'
    else:
        proto.opset_import[0].version, words = 99, 'ONNX Runtime only *guarantees* support'
    path = tmp_path / 'newer.onnx'
    onnx.save(proto, str(path))
    for load in (OnnxFusionEngine, read_onnx_metadata):
        with pytest.raises(OnnxModelError) as raised:
            load(path)
        message = str(raised.value)
        assert message.startswith(f'{path} was written for a newer onnxruntime than this one '
                                  f'({onnxruntime.__version__}): {words}'), message
        assert message.endswith('; export it again with an opset this onnxruntime loads '
                                '(tarfuse-export WEIGHTS.safetensors --out MODEL.onnx, opset '
                                '17 by default), or install a newer onnxruntime'), message
        assert 'onnxruntime_src' not in message and '\n' not in message
        assert '99' in message and 'is not a loadable' not in message, message


def _with_metadata(source, path, model=None, export=None):
    """Write ``source`` (an export's ModelProto, left as it is) to ``path``, metadata updated."""
    proto = onnx.ModelProto()
    proto.CopyFrom(source)
    for entry in proto.metadata_props:
        changes = {CONFIG_KEY: model, ONNX_KEY: export}.get(entry.key)
        if changes:
            value = json.loads(entry.value)
            (value['model'] if entry.key == CONFIG_KEY else value).update(changes)
            entry.value = json.dumps(value)
    onnx.save(proto, str(path))
    return path


def test_edited_onnx_metadata_is_refused_by_name(shipped_onnx, tmp_path, roadscene_pair):
    # The metadata's config was read unchecked: two class names for the graph's three gave
    # detections named '2', size_multiple 0 a ZeroDivisionError, min_side 'x' "invalid
    # literal for int()", and num_classes 1 an IndexError in the middle of infer.
    cases = [({'class_names': ['a', 'b']}, None,
              'num_classes (3) must be >= 1 and equal len(class_names) (2'),
             ({'input_min_long_side': -4}, None, 'input_min_long_side must be an integer >= 0'),
             (None, {'size_multiple': 0}, 'size_multiple 0 and min_side 64, not 32'),
             (None, {'min_side': 'x'}, "min_side 'x', not 32 and an integer >= 0"),
             # It was read raw: any other value ran the file as float32 (engine.half false).
             (None, {'precision': 'fp16'}, "precision 'fp16', not one of ('float32', "
                                           "'float16')"),
             # Every frame failed ('its det output holds 3 classes but its metadata names 0').
             ({'detect': False}, None, 'its metadata says detect false but its graph has a '
                                       'det output')]
    source = onnx.load(str(shipped_onnx))
    for index, (model, export, words) in enumerate(cases):
        path = _with_metadata(source, tmp_path / f'edited{index}.onnx', model, export)
        with pytest.raises(OnnxModelError) as raised:
            read_onnx_metadata(path)
        message = str(raised.value)
        assert words in message and 're-export the checkpoint with tarfuse-export' in message
    # Consistent in itself, but not the graph's: refused when the det output shows it.
    path = _with_metadata(source, tmp_path / 'one_class.onnx',
                          {'class_names': ['person'], 'num_classes': 1})
    engine = OnnxFusionEngine(path, threads=1)
    ir, vi = (cv2.resize(image, (224, 160)) for image in roadscene_pair)
    with pytest.raises(OnnxModelError, match='its det output holds 3 classes but its metadata '
                                             'names 1 '):
        engine.infer(ir, vi)


def test_absent_metadata_fields_take_the_checkpoint_loaders_defaults(
        shipped_onnx, tmp_path, roadscene_pair, caplog):
    # The engine read class names, global_stage, global_min_side and input_min_long_side raw
    # from the metadata: without class_names and num_classes (the checkpoint loader's
    # defaults: person, bicycle, car) every frame failed as 'the metadata was edited', and
    # without global_stage (default true) frames below global_min_side ran unwarned.
    from tarfuse_ros.core.model_config import TarFuseConfig
    proto = onnx.load(str(shipped_onnx))
    entry = next(entry for entry in proto.metadata_props if entry.key == CONFIG_KEY)
    header = json.loads(entry.value)
    for key in ('class_names', 'num_classes', 'global_stage'):
        del header['model'][key]
    entry.value = json.dumps(header)
    path = tmp_path / 'absent_fields.onnx'
    onnx.save(proto, str(path))
    engine = OnnxFusionEngine(path, threads=1)
    assert engine.class_names == ('person', 'bicycle', 'car')
    assert engine.config == TarFuseConfig.from_dict(header['model']).to_dict()
    assert engine.config['global_min_side'] == 160 and engine.config['global_stage'] is True
    assert engine.checkpoint_config == header  # the metadata as written
    ir, vi = roadscene_pair
    result = engine.infer(ir, vi)
    assert result.detections and {d.class_name for d in result.detections} <= {
        'person', 'bicycle', 'car'}
    small = [cv2.resize(image, (100, 74), interpolation=cv2.INTER_AREA) for image in (ir, vi)]
    with caplog.at_level(logging.WARNING, logger='tarfuse_ros.core.onnx_backend'):
        engine.infer(*small)
    assert "100x74 frame is below the global stage's min side (160 px)" in caplog.text


def test_an_onnx_file_with_damaged_weights_is_refused_instead_of_giving_nan(
        shipped_onnx, tmp_path, roadscene_pair):
    # 1000 bytes of 0xff written into the middle of an export loaded, and every pair came out
    # with an all-NaN flow (published as it was), without an error.
    proto = onnx.load(str(shipped_onnx))
    weight = next(tensor for tensor in proto.graph.initializer
                  if tensor.data_type == onnx.TensorProto.FLOAT and 'registration' in tensor.name
                  and np.prod(tensor.dims) >= 100)
    values = onnx.numpy_helper.to_array(weight).copy()
    values.flat[:50] = np.nan
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    damaged = tmp_path / 'damaged.onnx'
    onnx.save(proto, str(damaged))
    engine = OnnxFusionEngine(damaged, threads=1)
    ir, vi = (cv2.resize(image, (224, 160)) for image in roadscene_pair)
    with pytest.raises(OnnxModelError) as raised:
        engine.infer(ir, vi)
    message = str(raised.value)
    # One check for both engines: it said 'the graph gave', the torch engine 'the network gave'.
    assert message.startswith(f'{damaged}: the network gave NaN or infinite '), message
    assert 'flow' in message, message
    assert 'weights are damaged' in message and 'tarfuse-export' in message, message


@pytest.mark.parametrize('name', ['medical.onnx', 'medical'])
def test_a_checkpoint_given_to_the_onnxruntime_backend_is_named_as_such(tmp_path, name):
    # It was reported as "not a loadable ONNX model (... Protobuf parsing failed)".
    path = tmp_path / name
    path.write_bytes((share_dir() / 'models' / 'tarfuse_medical.safetensors').read_bytes())
    for load in (OnnxFusionEngine, read_onnx_metadata):
        with pytest.raises(OnnxModelError) as raised:
            load(path)
        message = str(raised.value)
        assert message.startswith(f'{path} is a .safetensors checkpoint, not an ONNX model: '
                                  f'run it with the torch backend, or export it with '
                                  f'tarfuse-export {path} --out MODEL.onnx'), message
        assert 'Protobuf' not in message and '\n' not in message


def test_both_backends_enlarge_small_frames_alike(tmp_path):
    """input_min_long_side in the checkpoint: both engines run an 80x120 frame at 128x192.

    No padding at 128x192: padded rows and columns give many anchors the same features and
    scores, whose NMS order is arbitrary.
    """
    from dataclasses import replace
    torch.manual_seed(0)
    model = build_model().eval()
    model.config = replace(model.config, input_min_long_side=192)
    with torch.no_grad():  # random class scores and boxes: distinct, so one NMS order
        for head in (*model.detect.cv2, *model.detect.cv3):
            head[-1].weight.normal_(0.0, 0.3)
            head[-1].bias.normal_(0.0, 1.0)
    checkpoint = tmp_path / 'enlarging.safetensors'
    save_checkpoint(checkpoint, model, provenance={'note': 'random init, ONNX test'})
    export_onnx(checkpoint, tmp_path / 'enlarging.onnx')
    torch.set_num_threads(1)
    torch_engine = FusionEngine(checkpoint, conf_threshold=0.05, max_detections=10)
    onnx_engine = OnnxFusionEngine(tmp_path / 'enlarging.onnx', threads=1,
                                   conf_threshold=0.05, max_detections=10)
    assert torch_engine.input_min_long_side == onnx_engine.input_min_long_side == 192
    off = OnnxFusionEngine(tmp_path / 'enlarging.onnx', threads=1, input_min_long_side=0)
    assert off.input_min_long_side == 0
    with pytest.raises(ValueError, match='input_min_long_side'):
        OnnxFusionEngine(tmp_path / 'enlarging.onnx', input_min_long_side=-1)
    _, ir, vi = next(_pairs())
    ir = cv2.resize(ir, (120, 80), interpolation=cv2.INTER_AREA)
    vi = cv2.resize(vi, (120, 80), interpolation=cv2.INTER_AREA)
    expected, got = torch_engine.infer(ir, vi), onnx_engine.infer(ir, vi)
    assert got.fused.shape == expected.fused.shape == (80, 120, 3)
    assert got.flow_px.shape == expected.flow_px.shape == (80, 120, 2)
    assert np.abs(got.fused.astype(int) - expected.fused).max() <= 2
    assert np.abs(got.flow_px - expected.flow_px).max() <= 0.05
    # (An untrained head scores many anchors alike, so NMS may order them differently: the
    # boxes are compared with the shipped model below.)
    assert got.detections and expected.detections


def test_both_backends_bring_boxes_back_from_an_enlarged_frame(shipped_onnx):
    """The shipped model run at 640 px on a 512x346 sample: the same boxes in both backends."""
    torch.set_num_threads(1)
    torch_engine = FusionEngine(default_weights_path(), scale_search=False,
                                input_min_long_side=640)
    onnx_engine = OnnxFusionEngine(shipped_onnx, threads=1, input_min_long_side=640)
    _, ir, vi = next(_pairs())
    expected, got = torch_engine.infer(ir, vi), onnx_engine.infer(ir, vi)
    assert got.fused.shape == expected.fused.shape == vi.shape
    assert np.abs(got.flow_px - expected.flow_px).max() <= 0.05
    assert len(got.detections) == len(expected.detections) > 0
    height, width = vi.shape[:2]
    for ours, theirs in zip(got.detections, expected.detections):
        assert ours.class_id == theirs.class_id
        assert np.abs(_box(ours) - _box(theirs)).max() <= 1e-2
        assert 0 <= ours.x1 < ours.x2 <= width and 0 <= ours.y1 < ours.y2 <= height


def test_both_backends_shrink_large_frames_alike(shipped_onnx):
    """input_max_long_side 320 on a 512x346 sample: the same outputs at the frame's size."""
    torch.set_num_threads(1)
    torch_engine = FusionEngine(default_weights_path(), scale_search=False,
                                input_max_long_side=320)
    onnx_engine = OnnxFusionEngine(shipped_onnx, threads=1, input_max_long_side=320)
    assert onnx_engine.network_size(346, 512) == torch_engine.network_size(346, 512) == (216, 320)
    _, ir, vi = next(_pairs())
    expected, got = torch_engine.infer(ir, vi), onnx_engine.infer(ir, vi)
    assert got.fused.shape == expected.fused.shape == vi.shape
    assert got.registered_ir.shape == expected.registered_ir.shape == vi.shape[:2]
    assert np.abs(got.flow_px - expected.flow_px).max() <= 0.05
    # The registered IR is the frame's IR resampled at the flow, so at its sharpest edges flows
    # 0.01 px apart differ by a few grey levels; the detail band takes the source with more
    # detail per pixel, and where the two are about equal it can take the other one. Measured
    # on this pair: at most 8 (fused) with the Sobel filters of kornia 0.9 in the graph, 10 with
    # our fixed-weight ones (1e-6 apart); 4-26 on the other sample pairs; a few pixels in 1e5.
    for ours, theirs in ((got.fused, expected.fused), (got.registered_ir, expected.registered_ir)):
        diff = np.abs(ours.astype(int) - theirs.astype(int))
        assert (diff > 1).mean() < 1e-3 and diff.max() <= 16, ((diff > 1).mean(), diff.max())
    assert len(got.detections) == len(expected.detections)
    for ours, theirs in zip(got.detections, expected.detections):
        assert ours.class_id == theirs.class_id
        assert np.abs(_box(ours) - _box(theirs)).max() <= 1e-2


def test_a_graph_of_fixed_size_names_the_size_it_takes(shipped_onnx, tmp_path):
    # The shipped export with its input sizes fixed at 512x640 afterwards (as for a TensorRT
    # profile): a 480x640 pair failed inside onnxruntime with 'Got invalid dimensions for
    # input: vi ... Please fix either the inputs/outputs or the model', naming no fix.
    model = onnx.load(str(shipped_onnx))
    for graph_input in model.graph.input[:2]:
        dims = graph_input.type.tensor_type.shape.dim
        dims[0].dim_value, dims[2].dim_value, dims[3].dim_value = 1, 512, 640
    fixed = tmp_path / 'fixed.onnx'
    onnx.save(model, str(fixed))
    engine = OnnxFusionEngine(fixed, threads=1)
    ir, vi = _msrs_pair('00004N')
    assert vi.shape == (480, 640, 3)
    with pytest.raises(ValueError) as raised:
        engine.infer(ir, vi)
    message = str(raised.value)
    assert 'fixed shape 1x1x512x640' in message and 'needs 1x1x480x640' in message, message
    assert 'tarfuse-export WEIGHTS.safetensors --out MODEL.onnx' in message, message
    # Frames of the size it was fixed at still run.
    result = engine.infer(cv2.resize(ir, (640, 512)), cv2.resize(vi, (640, 512)))
    assert result.fused.shape == (512, 640, 3)


def test_detect_min_long_side_exports_with_dynamic_sizes(tmp_path):
    """The features' enlargement before the neck stays dynamic in the graph (tensor sizes)."""
    from dataclasses import replace
    torch.manual_seed(0)
    model = build_model().eval()
    model.config = replace(model.config, detect_min_long_side=256)
    checkpoint = tmp_path / 'detect_enlarging.safetensors'
    save_checkpoint(checkpoint, model, provenance={'note': 'random init, ONNX test'})
    report = export_onnx(checkpoint, tmp_path / 'detect_enlarging.onnx')
    for name, value in report.max_abs_diff.items():  # checked at another size than traced
        assert value <= VERIFY_TOLERANCES['float32'][name], (name, value)
    import onnxruntime as ort
    session = ort.InferenceSession(str(tmp_path / 'detect_enlarging.onnx'))
    names = [o.name for o in session.get_outputs()]
    for height, width in ((64, 96), (128, 256), (256, 320)):
        ir, vi = torch.rand(1, 1, height, width), torch.rand(1, 1, height, width)
        feeds = {'ir': ir.numpy(), 'vi': vi.numpy(),
                 'valid_size': np.array([height, width], np.int64)}
        got = dict(zip(names, session.run(None, {
            arg.name: feeds[arg.name] for arg in session.get_inputs()})))
        want = model.predict_raw(ir, vi)
        assert got['det'].shape == tuple(want['det'].shape), (height, width)
        np.testing.assert_allclose(got['det'], want['det'].numpy(), atol=2e-3, rtol=1e-3)


def test_onnxruntime_backend_applies_the_prior_like_the_torch_engine(shipped_onnx_file,
                                                                     engines):
    # The rig of test_calibration.py's small pair (a real pair at 256x192, the IR seen through
    # it); here, not there, so that the shipped export (tarfuse-export in the background from
    # the start of the session) is ready when the first test needs it. The reference and the
    # run without the prior on the module's engines (the torch one given the prior for this
    # test): a fresh onnxruntime session of the shipped export costs 6 s.
    from tarfuse_ros.core.prior import make_prior
    from test_calibration import camera_ir, real_pairs, rig_homography

    torch_engine, plain = engines
    _, aligned_ir, vi = real_pairs(1, (256, 192))[0]
    homography = rig_homography(shift_px=(7.0, -4.0), perspective=(4e-5, -2e-5))
    ir = camera_ir(aligned_ir, homography, (256, 192))
    prior = make_prior(homography, (256, 192), (256, 192))
    onnx_engine = OnnxFusionEngine(shipped_onnx_file, threads=1, registration_prior=prior)
    assert onnx_engine.registration_prior is prior
    got = onnx_engine.infer(ir, vi)
    assert torch_engine.registration_prior is None
    torch_engine.set_registration_prior(prior)
    try:
        expected = torch_engine.infer(ir, vi)
    finally:
        torch_engine.set_registration_prior(None)
    assert np.abs(got.flow_px - expected.flow_px).max() <= 0.05
    # The registered IR is resampled at the flow: within 0.05 px of each other, sharp edges
    # still differ by a few grey levels.
    assert np.abs(got.registered_ir.astype(int) - expected.registered_ir).max() <= 8
    assert np.abs(got.fused.astype(int) - expected.fused).max() <= 1
    assert plain.registration_prior is None
    without = plain.infer(ir, vi)
    # The prior acted: an ignored prior gives the same flow as no prior (the same backend:
    # difference 0); the network alone registers most of this rig, so the flows differ by ~1
    # px on average with the match_v5 default, ~0.47 px with reg_v5 and ~0.18 px with only
    # its finest learnt level (session 28; the 0.1 px bound is twice the parity one).
    assert np.abs(without.flow_px - got.flow_px).mean() > 0.1

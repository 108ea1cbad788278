"""Node parameters: descriptors, defaults, validation, run-time changes, YAML coverage."""

from dataclasses import fields, replace
from pathlib import Path
import re
import textwrap

from node_harness import random_domain_id
import pytest
from rcl_interfaces.msg import ParameterType, SetParametersResult
import rclpy
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from tarfuse_ros.core.paths import default_weights_path
from tarfuse_ros.ros.params import _rcl_type, command_line_type_errors
from tarfuse_ros.ros.params import apply_updates, canonical_parameters, decimal_numbers
from tarfuse_ros.ros.params import declare_node_parameters, declared_descriptor
from tarfuse_ros.ros.params import descriptor_for, graph_fine_passes_problem
from tarfuse_ros.ros.params import NodeParams, parameter_source, PARAMETER_SPECS
from tarfuse_ros.ros.params import ParameterValueError
from tarfuse_ros.ros.params import params_files_for_other_nodes, params_from_values
from tarfuse_ros.ros.params import reported_descriptor, UNRECORDED_FINE_PASSES
from tarfuse_ros.ros.params import validate_params, wrong_type_reason
import yaml

ROOT = Path(__file__).resolve().parents[2]
YAML_FILE = ROOT / 'config' / 'tarfuse.yaml'


def _defaults():
    return params_from_values({})


def _flatten(tree, prefix=''):
    out = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            out.update(_flatten(value, name + '.'))
        else:
            out[name] = value
    return out


def test_defaults_use_the_shipped_weights_and_sensor_data_qos():
    params = _defaults()
    assert params.weights == str(default_weights_path())
    assert params.qos_reliability == 'best_effort'
    assert params.publish_debug is False and params.publish_fused is True
    assert params.sync_approximate is True and params.classes == ()


def test_every_dataclass_field_has_exactly_one_parameter():
    assert sorted(s.field for s in PARAMETER_SPECS) == sorted(f.name for f in fields(NodeParams))


def test_descriptors_carry_description_ranges_and_allowed_values():
    by_name = {spec.name: descriptor_for(spec) for spec in PARAMETER_SPECS}
    assert all(d.description for d in by_name.values())
    conf = by_name['confidence_threshold'].floating_point_range[0]
    assert (conf.from_value, conf.to_value) == (0.0, 1.0)
    max_det = by_name['max_detections'].integer_range[0]
    assert (max_det.from_value, max_det.to_value, max_det.step) == (1, 1000, 1)
    assert 'best_effort' in by_name['qos.reliability'].additional_constraints
    assert 'reliable' in by_name['qos.reliability'].additional_constraints
    # Dynamically typed: `ros2 param set NODE classes "[]"` sends an empty bool list.
    assert by_name['classes'].dynamic_typing
    assert by_name['classes'].type == ParameterType.PARAMETER_NOT_SET
    assert by_name['max_detections'].type == ParameterType.PARAMETER_INTEGER


def test_yaml_sets_every_parameter_except_the_optional_class_filter_and_comments_each_key():
    tree = yaml.safe_load(YAML_FILE.read_text())
    values = _flatten(tree['/**']['ros__parameters'])
    names = {spec.name for spec in PARAMETER_SPECS}
    # Optional, commented out in the file: the class filter and the calibration prior.
    assert set(values) == names - {'classes', 'registration.prior', 'registration.prior_ir_size',
                                   'registration.prior_visible_size'}
    params = params_from_values(values)
    assert params == _defaults()
    lines = YAML_FILE.read_text().splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped and not stripped.startswith('#') and index > 0 and ':' in stripped and \
                not stripped.startswith(('/**', 'ros__parameters')):
            assert lines[index - 1].strip().startswith('#'), f'key without comment: {line}'


# A stream setting of the global stage, and the values of others it is refused with.
PARTNERS = {'registration.global_every': 2, 'registration.global_window': 2,
            'registration.global_track': 5, 'registration.fine_passes': 0,
            'registration.online_refinement.enabled': True, 'backend': 'onnxruntime'}


@pytest.mark.parametrize('name, value', [('registration.global_every', 5),
                                         ('registration.global_window', 9),
                                         ('registration.global_track', 10)])
def test_a_stream_setting_describes_every_parameter_it_is_refused_with(name, value):
    """What ros2 param describe said left out fine_passes 0, global_track, online refinement."""
    spec = next(spec for spec in PARAMETER_SPECS if spec.name == name)
    description = descriptor_for(spec).description
    refused = []
    for partner, partner_value in PARTNERS.items():
        values = {name: value, partner: partner_value}
        if partner == 'backend':
            values['weights'] = 'm.onnx'
        try:
            params_from_values(values)
        except ValueError:
            refused.append(partner)
    assert 'registration.fine_passes' in refused or name != 'registration.global_track'
    assert [partner for partner in refused
            if partner.replace('registration.', '').lower() not in description.lower()] == []


@pytest.mark.parametrize('values, message', [
    ({'qos.reliability': 'sometimes'}, 'best_effort, reliable'),
    ({'device': 'gpu0'}, 'cuda:N'),
    ({'half': True, 'device': 'cpu'}, 'CUDA'),
    ({'confidence_threshold': 1.5}, 'outside [0.0, 1.0]'),
    ({'sync.queue_size': 0}, 'sync.queue_size'),
    ({'classes': 'person'}, 'list of strings'),
    ({'no_such': 1}, 'unknown parameters'),
    ({'registration.scale_search': 'no'}, 'registration.scale_search must be a bool'),
    ({'registration.scale_search': False, 'backend': 'onnxruntime', 'weights': 'm.onnx'},
     'registration.scale_search=false needs backend torch'),
    ({'registration.fine_passes': 9}, 'registration.fine_passes=9 is outside [-1, 8]'),
    ({'registration.fine_passes': -2}, 'registration.fine_passes=-2 is outside [-1, 8]'),
    ({'registration.fine_passes': 1.5}, 'registration.fine_passes must be an integer'),
    ({'registration.fine_passes': True}, 'registration.fine_passes must be a number'),
    ({'registration.global_every': 0},
     'registration.global_every must be an integer in [1, 10000], got 0'),
    ({'registration.global_window': 1.5}, 'registration.global_window must be'),
    ({'registration.global_window': 9, 'backend': 'onnxruntime', 'weights': 'm.onnx'},
     'registration.global_window above 1 need backend torch'),
    ({'registration.global_every': 5, 'registration.online_refinement.enabled': True},
     'enable one of them'),
    ({'registration.global_track': -1},
     'registration.global_track must be an integer in [0, 10000]'),
    ({'registration.global_track': 2.5}, 'registration.global_track must be an integer'),
    ({'registration.global_track': 10, 'backend': 'onnxruntime', 'weights': 'm.onnx'},
     'registration.global_track=10 needs backend torch'),
    ({'registration.global_track': 10, 'registration.global_window': 9},
     'registration.global_track=10 tracks the map pair by pair.*use one of the two'),
    ({'registration.global_track': 10, 'registration.fine_passes': 0},
     'registration.global_track=10 runs the fine passes alone.*registration.fine_passes=0'),
    ({'registration.global_track': 10, 'registration.online_refinement.enabled': True},
     'registration.global_track=10 and registration.online_refinement.enabled.*enable one'),
    ({'input_max_long_side': 100}, 'input_max_long_side=100 is not valid: 0 .never shrink. '
     'or 256-16384 px'),
    ({'input_max_long_side': 20000}, 'input_max_long_side=20000 is outside [0, 16384]'),
    ({'sync.infrared_time_offset': 1.5}, 'sync.infrared_time_offset=1.5 is outside [-1.0, 1.0]'),
    ({'sync.infrared_time_offset': float('nan')}, 'sync.infrared_time_offset must be finite'),
    ({'max_rate': -2.0}, 'max_rate=-2.0 is outside [0.0, 1000.0]'),
    ({'visible.transport': 'compressedDepth'},
     "visible.transport='compressedDepth' is not allowed: compressedDepth carries one-channel "
     "16-bit or float depth-like images .*a visible camera's image is no such image; use "
     "'raw' or 'compressed'"),
    ({'infrared.transport': 'compresseddepth'},
     "infrared.transport='compresseddepth' is not allowed; use one of: raw, compressed, "
     'compressedDepth'),
])
def test_invalid_start_up_values_raise_value_error_naming_them(values, message):
    with pytest.raises(ValueError, match=message.replace('[', r'\[').replace(']', r'\]')):
        params_from_values(values)


def test_run_time_changes_are_applied_and_fixed_ones_refused_with_the_reason():
    params = _defaults()
    new = apply_updates(params, {'confidence_threshold': 0.6, 'publish.debug': True,
                                 'classes': ['car', ' person '], 'use_sim_time': True})
    assert (new.confidence_threshold, new.publish_debug, new.classes) == (
        0.6, True, ('car', 'person'))
    assert params.confidence_threshold == 0.25  # the old snapshot is untouched (frozen)
    for name, value in [('weights', '/tmp/other.safetensors'), ('device', 'cuda:0'),
                        ('sync.slop', 0.2), ('sync.approximate', False),
                        ('sync.infrared_time_offset', -0.06),
                        ('qos.reliability', 'reliable'), ('registration.fine_passes', 2)]:
        with pytest.raises(ValueError, match=f'{name} cannot change while the node runs.*'
                                             f'restart'):
            apply_updates(params, {name: value})
    # Setting a fixed parameter to its current value is not a change.
    assert apply_updates(params, {'weights': params.weights, 'sync.slop': 0.05}) == params
    with pytest.raises(ValueError, match='iou_threshold'):
        apply_updates(params, {'iou_threshold': -0.1})


def test_run_time_changes_an_onnx_graph_cannot_honour_are_refused_with_the_export_to_make():
    # Break test (backend onnxruntime): the graph has its global stage built in. A run-time
    # change must not be accepted (nothing would change) nor answered 'restart the node with
    # -p ...' (the restart would fail): the refusal names the export or backend to use.
    params = params_from_values({'backend': 'onnxruntime', 'weights': '/tmp/model.onnx'})
    for name, value, words in (
            ('registration.fine_passes', 2, 'the ONNX graph /tmp/model.onnx runs the 4 fine '
                                            'passes it was exported with, built in; export one '
                                            'with 2 (tarfuse-export WEIGHTS.safetensors --out '
                                            'MODEL.onnx --fine-passes 2) and run it, or set '
                                            'registration.fine_passes to 4 or -1'),
            ('registration.global_track', 5, 'use backend torch, or leave it 0'),
            ('registration.global_every', 3, 'use backend torch, or leave both at 1'),
            ('registration.scale_search', False, '--no-scale-search) and leave this parameter')):
        with pytest.raises(ValueError) as raised:
            apply_updates(params, {name: value}, graph_fine_passes=4)
        message = str(raised.value)
        assert message.startswith(f'{name} cannot change while the node runs, and ') and (
            'would be refused at start-up too' in message and words in message
            and ' -p ' not in message), message
    # The graph's own count (and -1) a restart takes: said so.
    for passes in (4, -1):
        with pytest.raises(ValueError, match='restart the node with -p '
                                             f'registration.fine_passes:={passes} instead'):
            apply_updates(replace(params, registration_fine_passes=4 if passes == -1 else -1),
                          {'registration.fine_passes': passes}, graph_fine_passes=4)


def test_fine_passes_with_backend_onnxruntime_are_checked_against_the_graphs_own():
    # The graph's own count is only known once its metadata is read (the node's start-up): a
    # count was refused with onnxruntime whatever the graph ran.
    params = params_from_values({'backend': 'onnxruntime', 'weights': '/tmp/model.onnx',
                                 'registration.fine_passes': 2})
    assert validate_params(params, graph_fine_passes=2) == params
    with pytest.raises(ValueError, match='registration.fine_passes 2: the ONNX graph '
                                         '/tmp/model.onnx runs the 0 fine passes'):
        validate_params(params, graph_fine_passes=0)
    assert graph_fine_passes_problem(replace(params, registration_fine_passes=-1), 0) is None
    assert graph_fine_passes_problem(replace(params, backend='torch'), 0) is None
    # A graph without an orientation global stage: no export runs passes, none apply.
    problem = graph_fine_passes_problem(params, 0, fine_stage=False)
    assert 'has no fine stage (no orientation global stage), so no fine passes apply' in (
        problem) and '--fine-passes' not in problem, problem
    assert graph_fine_passes_problem(replace(params, registration_fine_passes=0), 0,
                                     fine_stage=False) is None
    # A graph whose metadata does not record its count: -1 only, and why.
    for passes in (0, 2):
        problem = graph_fine_passes_problem(replace(params, registration_fine_passes=passes),
                                            UNRECORDED_FINE_PASSES)
        assert problem.startswith(f'registration.fine_passes {passes}: the metadata of the ONNX '
                                  'graph /tmp/model.onnx does not record how many fine passes '
                                  "it runs (no global_fine_passes), so only -1 (the graph's "
                                  'own) applies'), problem
    assert graph_fine_passes_problem(replace(params, registration_fine_passes=-1),
                                     UNRECORDED_FINE_PASSES) is None
    # A checkpoint without one (backend torch): said alike, whatever the graph count (none).
    torch = replace(params, backend='torch', weights='/tmp/medical.safetensors')
    with pytest.raises(ValueError, match='registration.fine_passes 2: the model '
                                         '/tmp/medical.safetensors has no fine stage'):
        validate_params(torch, fine_stage=False)
    assert validate_params(replace(torch, registration_fine_passes=0), fine_stage=False)


def test_max_rate_changes_at_run_time_and_a_negative_one_is_refused():
    params = _defaults()
    assert params.max_rate == 0.0 and params.sync_infrared_time_offset == 0.0
    assert apply_updates(params, {'max_rate': 2}).max_rate == 2.0
    with pytest.raises(ValueError, match=r'max_rate=-1.0 is outside \[0.0, 1000.0\]'):
        apply_updates(params, {'max_rate': -1.0})


def test_declaring_on_a_real_node_takes_overrides_and_rejects_bad_ones():
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=random_domain_id(),
               signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = rclpy.create_node(
            'params_probe', context=context, parameter_overrides=[
                Parameter('classes', value=['person']), Parameter('sync.slop', value=0.1),
                Parameter('publish.debug', value=True)])
        params = declare_node_parameters(node)
        assert params.classes == ('person',) and params.sync_slop == 0.1 and params.publish_debug
        # Declared without its range, which rclpy would check in its own words before the
        # node's callback could (TarFuseNode refuses it); reported with it.
        declared = node.describe_parameter('iou_threshold')
        assert not declared.floating_point_range
        reported = reported_descriptor('iou_threshold', declared)
        assert reported.floating_point_range[0].to_value == 1.0 and not reported.read_only
        assert reported_descriptor('sync.slop', node.describe_parameter('sync.slop')).read_only
        node.destroy_node()

        bad = rclpy.create_node('params_probe_bad', context=context, parameter_overrides=[
            Parameter('qos.reliability', value='fast')])
        with pytest.raises(ValueError, match='qos.reliability'):
            declare_node_parameters(bad)
        bad.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_the_parameter_store_holds_the_values_the_node_uses():
    # `-p device:=' cpu'` or `ros2 param set ... device ' cpu'`: the node ran on 'cpu' but
    # `ros2 param get` showed ' cpu' (a fixed parameter's whitespace variant, accepted as no
    # change, was stored verbatim), and an empty weights showed '' instead of the file in use.
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=random_domain_id(),
               signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = rclpy.create_node('params_store', context=context, parameter_overrides=[
            Parameter('device', value=' cpu '), Parameter('weights', value=''),
            Parameter('classes', value=[' person', ' ', 'car'])])
        params = declare_node_parameters(node)
        assert (params.device, params.classes) == ('cpu', ('person', 'car'))
        stored = {name: node.get_parameter(name).value
                  for name in ('device', 'weights', 'classes')}
        assert stored == {'device': 'cpu', 'weights': str(default_weights_path()),
                          'classes': ['person', 'car']}
        node.add_pre_set_parameters_callback(canonical_parameters)
        node.add_on_set_parameters_callback(
            lambda changes: SetParametersResult(successful=True))
        assert node.set_parameters([Parameter('device', value='cpu\t')])[0].successful
        assert node.get_parameter('device').value == 'cpu'
        assert node.set_parameters([Parameter('classes', value=['car ', ''])])[0].successful
        assert node.get_parameter('classes').value == ['car']
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_canonical_parameters_keeps_other_parameters_and_wrong_types_as_they_are():
    numbers = Parameter('sync.slop', value=0.1)
    wrong_type = Parameter('device', value=3)
    unknown = Parameter('use_sim_time', value=True)
    already = Parameter('backend', value='torch')
    deleted = Parameter('classes', Parameter.Type.NOT_SET, None)  # ros2 param delete
    given = [numbers, wrong_type, unknown, already, deleted,
             Parameter('backend', value=' onnxruntime')]
    result = canonical_parameters(given)
    assert all(a is b for a, b in zip(result[:5], given[:5]))
    assert (result[5].type_, result[5].value) == (Parameter.Type.STRING, 'onnxruntime')


def test_an_integer_for_a_decimal_parameter_becomes_that_decimal_an_integer_one_stays():
    # `ros2 param set /tarfuse max_rate 2` sends an integer: refused by rclpy, naming nothing.
    given = [Parameter('max_rate', value=2), Parameter('max_detections', value=5),
             Parameter('max_rate', value=2.5)]
    result = canonical_parameters(given)
    assert (result[0].type_, result[0].value) == (Parameter.Type.DOUBLE, 2.0)
    assert result[1] is given[1] and result[2] is given[2]


def _declared_by_rcl(argv):
    """Return ``{name: (type, value)}`` of max_rate and sync.slop, declared from ``argv``."""
    context = rclpy.Context()
    rclpy.init(args=argv, context=context, domain_id=random_domain_id(),
               signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = rclpy.create_node('tarfuse', context=context)
        declare_node_parameters(node)
        declared = {name: (node.get_parameter(name).type_, node.get_parameter(name).value)
                    for name in ('max_rate', 'sync.slop', 'max_detections')}
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    return declared


@pytest.mark.parametrize('sources, expected', [
    # 'max_rate=2 is an integer where a double is expected: write 2.0' at start-up, where
    # `ros2 param set /tarfuse max_rate 2` was taken.
    ([('file', 'max_rate: 2\nsync:\n  slop: 1\nmax_detections: 7')], (2.0, 1.0, 7)),
    ([('p', 'max_rate:=2'), ('p', 'tarfuse:sync.slop:=0x1')], (2.0, 1.0, 100)),
    # After an integer rcl dropped a later double: max_rate: 2, then -p max_rate:=3.5 ran at 2
    # (once the integer was taken).
    ([('file', 'max_rate: 2'), ('p', 'max_rate:=3.5')], (3.5, 0.05, 100)),
    ([('p', 'max_rate:=3'), ('file', 'max_rate: 1.5')], (1.5, 0.05, 100))],
    ids=['params_file', 'command_line', 'a_double_after_an_integer', 'a_file_after_a_p'])
def test_an_integer_for_a_decimal_parameter_is_taken_at_start_up(tmp_path, sources, expected):
    """An integer for a decimal is declared as that decimal, a double in the store.

    As the node's main gives rclpy.init its arguments (:func:`decimal_numbers`).
    """
    given = ['fuse_node', '--ros-args']
    for index, (kind, text) in enumerate(sources):
        if kind == 'file':
            path = tmp_path / f'{index}.yaml'
            path.write_text(f'/**:\n  ros__parameters:\n{textwrap.indent(text, "    ")}\n')
            given += ['--params-file', str(path)]
        else:
            given += ['-p', text]
    argv, notes = decimal_numbers(given, tmp_path)
    assert notes == []  # taken without a word, as at run time
    declared = _declared_by_rcl(argv)
    assert declared == {
        'max_rate': (Parameter.Type.DOUBLE, expected[0]),
        'sync.slop': (Parameter.Type.DOUBLE, expected[1]),
        'max_detections': (Parameter.Type.INTEGER, expected[2])}, declared
    assert command_line_type_errors(argv, 'tarfuse') == []


def test_a_string_or_a_bool_for_a_decimal_parameter_is_still_refused(tmp_path):
    path = tmp_path / 'bool.yaml'
    path.write_text('/**:\n  ros__parameters:\n    max_rate: true\n')
    argv, _ = decimal_numbers(['fuse_node', '--ros-args', '--params-file', str(path)], tmp_path)
    assert argv[3] == str(path)  # given as it is
    with pytest.raises(ValueError, match='max_rate=True is a bool where a double is expected'):
        _declared_by_rcl(argv)
    argv, _ = decimal_numbers(['fuse_node', '--ros-args', '-p', 'max_rate:=abc'], tmp_path)
    assert command_line_type_errors(argv, 'tarfuse') == [
        '-p max_rate:=abc: a string where a double is expected']


def test_a_value_of_another_type_is_said_with_its_parameter_and_the_fix():
    # rclpy's own refusal named neither: "Wrong parameter type, expected 'Type.INTEGER' got
    # 'Type.DOUBLE'" for `ros2 param set /tarfuse max_detections 2.0`.
    said = wrong_type_reason(canonical_parameters([
        Parameter('max_rate', value=2), Parameter('use_sim_time', value=1),
        Parameter('registration.prior', value=[1, 0, 0, 0, 1, 0, 0, 0, 1]),
        Parameter('classes', value=[True])]))
    assert said is None  # rclpy's own, and the dynamically typed lists, are left as they are
    for parameter, words in (
            (Parameter('max_detections', value=2.0),
             'max_detections=2.0 is a double where an integer is expected: write 2'),
            (Parameter('max_detections', value=2.5),
             'max_detections=2.5 is a double where an integer is expected'),
            (Parameter('device', value=0), 'device=0 is an integer where a string is expected'),
            (Parameter('half', Parameter.Type.NOT_SET, None), 'half cannot be deleted')):
        said = wrong_type_reason([Parameter('max_rate', value=1.0), parameter])
        assert said is not None and said.startswith(words), said
    assert 'write' not in wrong_type_reason([Parameter('max_detections', value=2.5)])


@pytest.mark.parametrize('name, value', [('max_rate', float('nan')), ('sync.slop', float('inf')),
                                         ('half', 1), ('device', 0), ('max_detections', 2.5),
                                         ('classes', [1]), ('registration.prior', ['a'])])
def test_a_value_the_node_cannot_use_names_its_parameter(name, value):
    # The start-up message names where a parameter was given (parameter_source) only for a
    # ParameterValueError: `-p max_rate:=.nan` was told 'fix it in the params file or on the
    # command line'.
    with pytest.raises(ParameterValueError) as info:
        params_from_values({name: value})
    assert info.value.name == name and str(info.value).startswith(name)


def test_lists_of_another_element_type_are_stored_and_described_as_the_node_reads_them():
    # `ros2 param set /tarfuse classes "[]"` sends a bool list: stored as one, and described as
    # one (rclpy writes a dynamically typed parameter's descriptor type at every set, a refused
    # one too), though the node reads a name list; a prior of integers stayed integers.
    T = Parameter.Type
    given = [Parameter('classes', T.BOOL_ARRAY, []),
             Parameter('registration.prior', value=[1, 0, 0, 0, 1, 0, 0, 0, 1]),
             Parameter('registration.prior', T.BOOL_ARRAY, []), Parameter('classes', value=[1]),
             Parameter('registration.prior_ir_size', T.BOOL_ARRAY, [])]
    result = canonical_parameters(given)
    assert (result[4].type_, list(result[4].value)) == (T.INTEGER_ARRAY, [])
    assert (result[0].type_, list(result[0].value)) == (T.STRING_ARRAY, [])
    assert (result[1].type_, list(result[1].value)) == (T.DOUBLE_ARRAY, [1.0, 0.0, 0.0, 0.0,
                                                                         1.0, 0.0, 0.0, 0.0, 1.0])
    assert (result[2].type_, list(result[2].value)) == (T.DOUBLE_ARRAY, [])
    assert result[3] is given[3]  # refused by the set callback
    for name, kind in (('classes', ParameterType.PARAMETER_STRING_ARRAY),
                       ('registration.prior', ParameterType.PARAMETER_DOUBLE_ARRAY)):
        spec, = [spec for spec in PARAMETER_SPECS if spec.name == name]
        declared = declared_descriptor(spec)
        declared.type = ParameterType.PARAMETER_INTEGER_ARRAY  # as rclpy left it
        assert reported_descriptor(name, declared).type == kind


RCL_VALUES = ['abc', 'y', 'N', 'yes', 'Off', 'TRUE', 'true', '1', '-7', '0x1F', '010', '08',
              '1_000', '0b11', '12:30', '1e-1', '-2.5', '.5', '5.', '.inf', '-.Inf', '.nan',
              'nan', 'inf', '9223372036854775808', '"1.0"', "'true'", '[]', '[a, b]',
              '[1, 2]', '[1.0, 2.5]', '[true, n]', '[person]', '["1", "2"]']


@pytest.mark.parametrize('text', RCL_VALUES)
def test_command_line_values_are_typed_as_rcl_types_them(text):
    # rcl itself parses the value, in a context of its own (no node talks to anyone).
    context = rclpy.Context()
    rclpy.init(args=['--ros-args', '-p', f'x:={text}'], context=context,
               signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = rclpy.create_node('probe', context=context)
        overrides = node._parameter_overrides
        expected = overrides['x'].type_ if 'x' in overrides else Parameter.Type.NOT_SET
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    assert _rcl_type(text) == expected, text


def test_mistyped_command_line_values_are_named_and_fitting_ones_pass():
    argv = ['fuse_node', '--ros-args', '--params-file', 'f.yaml',
            '-p', 'confidence_threshold:=abc', '-p', 'max_detections:=1_000',
            '--param', 'publish.debug:=y', '-p', 'weights:="1.0"', '-p', 'classes:=[]',
            '-p', 'registration.prior:=[1, 0, 0, 0, 1, 0, 0, 0, 1]', '-p', 'qos.depth:=0x10',
            '-p', 'other_node:sync.slop:=abc', '-p', 'tarfuse:sync.slop:=[0.1]',
            '-p', 'iou_threshold:=1', '--', '-p', 'sync.slop:=abc']
    assert command_line_type_errors(argv, 'tarfuse') == [
        '-p confidence_threshold:=abc: a string where a double is expected',
        '-p max_detections:=1_000: a string where an integer is expected',
        '-p tarfuse:sync.slop:=[0.1]: a double list where a double is expected',
        '-p iou_threshold:=1: an integer where a double is expected',
    ]


SECTIONS = ['/**', '**', '/tarfuse', 'tarfuse', '/front/tarfuse', 'front/tarfuse', '/*/tarfuse',
            '/**/tarfuse', '/front/*', '/front/**', '*', 'fuse_node', '/rear/tarfuse',
            '/front/**/tarfuse', '/front', 'front:\n  tarfuse', '/**:\n  tarfuse',
            'rear:\n  tarfuse']


@pytest.mark.parametrize('namespace', ['/', '/front', '/robot/front'])
def test_a_params_file_for_other_nodes_is_told_as_rcl_reads_it(tmp_path, namespace):
    # A file keyed by another node (the executable fuse_node, a ros2 param dump of the node in
    # another namespace) set nothing, silently: the node ran on its defaults. The verdict
    # must be rcl's own (here: what rcl gives a node of that namespace from each file).
    for index, section in enumerate(SECTIONS):
        path = tmp_path / f'{index}.yaml'
        indent = '  ' * (section.count('\n') + 1)
        path.write_text(f'{section}:\n{indent}ros__parameters:\n{indent}  max_rate: 2.0\n'
                        if '\n' in section else
                        f'"{section}":\n  ros__parameters:\n    max_rate: 2.0\n')
        argv = ['fuse_node', '--ros-args', '--params-file', str(path)]
        context = rclpy.Context()
        rclpy.init(args=argv, context=context, signal_handler_options=SignalHandlerOptions.NO)
        try:
            node = rclpy.create_node('tarfuse', namespace=namespace, context=context)
            applied = 'max_rate' in node._parameter_overrides
            name = node.get_fully_qualified_name()
            node.destroy_node()
        finally:
            rclpy.shutdown(context=context)
        told = params_files_for_other_nodes(argv, name)
        assert len(told) == (0 if applied else 1), (section, namespace, told)
        assert all(line.startswith(f'{path} (sections ') for line in told), told


def test_a_params_file_for_another_node_is_named_with_its_sections(tmp_path):
    dump = tmp_path / 'rig.yaml'  # ros2 param dump /rear/tarfuse
    dump.write_text('rear:\n  tarfuse:\n    ros__parameters:\n      max_rate: 2.0\n')
    argv = ['fuse_node', '--ros-args', '--params-file', str(YAML_FILE),
            '--params-file', str(dump), '-p', 'max_rate:=1.0']
    assert params_files_for_other_nodes(argv, '/tarfuse') == [f"{dump} (sections '/rear/tarfuse')"]
    assert params_files_for_other_nodes(argv, '/rear/tarfuse') == []


def test_the_source_of_a_parameter_is_the_last_that_sets_it_for_this_node(tmp_path):
    """Where an out-of-range value was given, for the start-up message: -p or which file."""
    rig = tmp_path / 'rig.yaml'
    rig.write_text('/**/tarfuse:\n  ros__parameters:\n    registration:\n'
                   '      fine_passes: 99\n')
    other = tmp_path / 'other.yaml'
    other.write_text('rear:\n  tarfuse:\n    ros__parameters:\n      max_rate: -1.0\n')
    argv = ['fuse_node', '--ros-args', '--params-file', str(YAML_FILE), '--params-file',
            str(rig), '--params-file', str(other), '-p', 'other_node:max_rate:=-2.0']
    assert parameter_source(argv, '/front/tarfuse', 'registration.fine_passes') == \
        f'in the parameters file {rig}'
    # The shipped file's 0.0: the rear section and the other node's -p are not this node's.
    assert parameter_source(argv, '/front/tarfuse', 'max_rate') == \
        f'in the parameters file {YAML_FILE}'
    assert parameter_source(argv, '/rear/tarfuse', 'max_rate') == f'in the parameters file {other}'
    argv += ['-p', 'tarfuse:registration.fine_passes:=9']
    assert parameter_source(argv, '/front/tarfuse', 'registration.fine_passes') == \
        'on the command line (-p tarfuse:registration.fine_passes:=9)'
    assert parameter_source(argv, '/front/tarfuse', 'no.such') is None


# Each problem of the global stage's stream settings, given as FusionEngine's keywords; the
# same values go to tarfuse-fuse as options and to the node as parameters.
STREAM_PROBLEMS = [
    {'global_every': 0},
    {'global_window': 1001},
    {'global_track': 10001},
    {'global_every': 0, 'global_track': -1},  # two problems, both said
    {'global_track': 5, 'global_every': 2},
    {'global_track': 5, 'global_window': 3},
    {'global_track': 5, 'fine_passes': 0},
    {'global_track': 5, 'global_every': 2, 'fine_passes': 0},
]


@pytest.mark.parametrize('settings', STREAM_PROBLEMS, ids=lambda settings: '-'.join(
    f'{name}{value}' for name, value in settings.items()))
def test_the_engine_the_fuse_tool_and_the_node_say_a_stream_problem_alike(
        settings, tmp_path, capsys):
    from tarfuse_ros.core.engine import FusionEngine
    from tarfuse_ros.core.global_stream import KEYWORDS, OPTIONS, PARAMETERS
    from tarfuse_ros.core.global_stream import stream_setting_problems
    from tarfuse_ros.core.paths import share_dir
    from tarfuse_ros.tools import fuse
    values = {'global_every': 1, 'global_window': 1, 'global_track': 0, 'fine_passes': None}
    values.update(settings)

    def said(names):
        return '; '.join(stream_setting_problems(*values.values(), names))

    with pytest.raises(ValueError) as engine:
        FusionEngine(cuda_graph='off', **settings)
    assert str(engine.value) == said(KEYWORDS)
    samples = share_dir() / 'samples'
    options = [word for name, value in settings.items()
               for word in (f'--{name.replace("_", "-")}', str(value))]
    status = fuse.main(['--ir', str(samples / 'ir'), '--visible', str(samples / 'vi'),
                        '--out', str(tmp_path), *options])
    assert (status, capsys.readouterr().err) == (2, f'tarfuse-fuse: error: {said(OPTIONS)}\n')
    with pytest.raises(ValueError) as node:
        params_from_values({f'registration.{name}': value for name, value in settings.items()})
    assert str(node.value) == said(PARAMETERS)
    # The same sentences, each naming what its user typed.
    for names, text in ((KEYWORDS, said(KEYWORDS)), (OPTIONS, said(OPTIONS)),
                        (PARAMETERS, said(PARAMETERS))):
        others = {getattr(other, name) for other in (KEYWORDS, OPTIONS, PARAMETERS)
                  for name in values} - {getattr(names, name) for name in values}
        assert not [other for other in others
                    if re.search(rf'(?<![\w.-]){re.escape(other)}(?![\w-])', text)], text


def test_the_infrared_input_takes_compressed_depth_and_the_descriptors_say_so():
    params = params_from_values({'infrared.transport': 'compressedDepth'})
    assert (params.infrared_transport, params.visible_transport) == ('compressedDepth', 'raw')
    specs = {spec.name: spec for spec in PARAMETER_SPECS}
    infrared = descriptor_for(specs['infrared.transport'])
    assert infrared.additional_constraints.startswith(
        'one of: raw, compressed, compressedDepth')
    assert 'infrared/image_raw/compressedDepth' in infrared.description
    visible = descriptor_for(specs['visible.transport'])
    assert visible.additional_constraints.startswith('one of: raw, compressed ')

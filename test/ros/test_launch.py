"""The launch file: its arguments, each with a description, and its parameter/remapping wiring."""

import ast
import importlib.util
from pathlib import Path

import pytest

LAUNCH_FILE = Path(__file__).resolve().parents[2] / 'launch' / 'fuse.launch.py'
ARGUMENTS = ('namespace', 'params_file', 'weights', 'backend', 'device', 'infrared_topic',
             'visible_topic', 'infrared_transport', 'visible_transport', 'use_sim_time', 'rviz',
             'prior_file', 'infrared_time_offset')


def _declared_arguments(tree):
    """Return ``{name: keyword names}`` of every ``DeclareLaunchArgument`` call in the AST."""
    found = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, 'id', None) ==
                'DeclareLaunchArgument' and node.args and isinstance(node.args[0], ast.Constant)):
            found[node.args[0].value] = {kw.arg for kw in node.keywords}
    return found


def test_launch_file_parses_and_declares_every_argument_with_a_description():
    tree = ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert 'generate_launch_description' in functions
    declared = _declared_arguments(tree)
    assert set(ARGUMENTS) <= set(declared), f'missing: {set(ARGUMENTS) - set(declared)}'
    for name in ARGUMENTS:
        assert {'default_value', 'description'} <= declared[name], name
    text = LAUNCH_FILE.read_text()
    for needed in ('FASTRTPS_DEFAULT_PROFILES_FILE', 'fastdds_profile.xml', 'tarfuse.yaml',
                   'tarfuse.rviz', "'fuse_node'"):
        assert needed in text, needed


def test_launch_description_with_launch_ros():
    if importlib.util.find_spec('launch_ros') is None:
        pytest.skip('launch_ros is not installed here (no ROS distro, not on PyPI); the node '
                    'itself is tested through --ros-args --params-file in test_node*.py')
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch_ros.actions import Node

    spec = importlib.util.spec_from_file_location('fuse_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    declared = {e.name: e for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert set(ARGUMENTS) <= set(declared)
    assert all(declared[name].description for name in ARGUMENTS)

    context = LaunchContext()
    for argument in declared.values():
        context.launch_configurations[argument.name] = ''.join(
            s.perform(context) for s in argument.default_value)
    context.launch_configurations.update(
        {'namespace': 'front', 'weights': '/tmp/w.safetensors',
         'infrared_topic': '/flir/image_raw'})
    setup = next(e for e in description.entities if isinstance(e, OpaqueFunction))
    actions = setup.execute(context)
    nodes = {a.node_executable: a for a in actions if isinstance(a, Node)}
    assert nodes['fuse_node'].node_package == 'tarfuse_ros'
    assert nodes['fuse_node'].condition is None
    assert nodes['rviz2'].condition is not None  # only with rviz:=true


def _load_with_stand_ins(monkeypatch):
    """Import the launch file with stand-ins for launch / launch_ros (not installable here).

    Only ``_launch_setup``'s own checks run; the stand-in ``LaunchConfiguration`` reads the
    values from a plain dict context, and ``Node`` records its arguments.
    """
    import types

    class Configuration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context[self.name]

    class Recorded:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    modules = {
        'launch': types.SimpleNamespace(LaunchDescription=Recorded),
        'launch.actions': types.SimpleNamespace(DeclareLaunchArgument=Recorded,
                                                OpaqueFunction=Recorded,
                                                SetEnvironmentVariable=Recorded),
        'launch.conditions': types.SimpleNamespace(IfCondition=Recorded),
        'launch.substitutions': types.SimpleNamespace(LaunchConfiguration=Configuration),
        'launch_ros': types.SimpleNamespace(),
        'launch_ros.actions': types.SimpleNamespace(Node=Recorded),
    }
    for name, module in modules.items():
        monkeypatch.setitem(__import__('sys').modules, name, module)
    spec = importlib.util.spec_from_file_location('fuse_launch_stand_ins', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('change, error, words', [
    ({'params_file': '/nonexistent/tarfuse.yaml'}, FileNotFoundError,
     "params_file '/nonexistent/tarfuse.yaml' is not a file"),
    ({'prior_file': '/tmp'}, FileNotFoundError, "prior_file '/tmp' is not a file"),
    ({'use_sim_time': 'ture'}, ValueError, "use_sim_time must be 'true' or 'false'"),
    ({'infrared_topic': ''}, ValueError, 'infrared_topic is empty'),
    ({'infrared_time_offset': '60ms'}, ValueError,
     'infrared_time_offset must be a number of seconds'),
])
def test_launch_arguments_that_would_be_dropped_or_misread_stop_the_launch(
        monkeypatch, change, error, words):
    module = _load_with_stand_ins(monkeypatch)
    context = {'namespace': '', 'params_file': '', 'weights': '', 'backend': '', 'device': '',
               'infrared_topic': 'infrared/image_raw', 'visible_topic': 'visible/image_raw',
               'infrared_transport': '', 'visible_transport': '', 'use_sim_time': 'false',
               'prior_file': '', 'infrared_time_offset': ''}
    actions = module._launch_setup(context)  # the defaults launch
    node = next(a for a in actions if a.kwargs.get('executable') == 'fuse_node')
    assert node.kwargs['parameters'][0].endswith('tarfuse.yaml')
    with pytest.raises(error, match=words.replace('(', r'\(')):
        module._launch_setup(dict(context, **change))


def test_only_the_images_are_remapped_the_node_finds_their_camera_info(monkeypatch):
    # The node reads the camera_info beside the visible image topic as remapped
    # (tarfuse_ros.core.topics, test_node_camera_info.py): one rule, the node's; a rule of the
    # launch file for visible/camera_info would override it.
    module = _load_with_stand_ins(monkeypatch)
    context = {'namespace': 'front', 'params_file': '', 'weights': '', 'backend': '',
               'device': '', 'infrared_topic': '/flir/image_raw',
               'visible_topic': '/rgb/image_raw', 'infrared_transport': '',
               'visible_transport': '', 'use_sim_time': 'false', 'prior_file': '',
               'infrared_time_offset': ''}
    node = next(a for a in module._launch_setup(context)
                if a.kwargs.get('executable') == 'fuse_node')
    assert node.kwargs['remappings'] == [('infrared/image_raw', '/flir/image_raw'),
                                         ('visible/image_raw', '/rgb/image_raw')]
    # RViz's 'Visible input' display (rviz/tarfuse.rviz: visible/image_raw, relative) showed
    # <namespace>/visible/image_raw, not the camera the node reads.
    rviz = next(a for a in module._launch_setup(context) if a.kwargs.get('executable') == 'rviz2')
    assert ('visible/image_raw', '/rgb/image_raw') in rviz.kwargs['remappings']


def test_the_infrared_time_offset_argument_is_applied_after_the_parameter_and_prior_files(
        monkeypatch, tmp_path):
    module = _load_with_stand_ins(monkeypatch)
    prior = tmp_path / 'rig_prior.yaml'
    prior.write_text('/**:\n  ros__parameters:\n    sync:\n      infrared_time_offset: 0.5\n')
    context = {'namespace': '', 'params_file': '', 'weights': '', 'backend': '', 'device': '',
               'infrared_topic': 'infrared/image_raw', 'visible_topic': 'visible/image_raw',
               'infrared_transport': '', 'visible_transport': '', 'use_sim_time': 'false',
               'prior_file': str(prior), 'infrared_time_offset': ' -0.061 '}
    node = next(a for a in module._launch_setup(context)
                if a.kwargs.get('executable') == 'fuse_node')
    files, overrides = node.kwargs['parameters'][:-1], node.kwargs['parameters'][-1]
    assert files[-1] == str(prior)  # the overrides come after it: the argument wins
    assert overrides['sync.infrared_time_offset'] == -0.061
    node = next(a for a in module._launch_setup(dict(context, infrared_time_offset=''))
                if a.kwargs.get('executable') == 'fuse_node')
    assert 'sync.infrared_time_offset' not in node.kwargs['parameters'][-1]  # the files' value


def test_a_params_file_and_prior_file_under_the_home_folder_are_found(monkeypatch, tmp_path):
    # params_file:=~/rig.yaml: the shell leaves '~' after ':=' as it is, and rcl does not
    # expand it either; the launch stopped with "params_file '~/rig.yaml' is not a file".
    module = _load_with_stand_ins(monkeypatch)
    monkeypatch.setenv('HOME', str(tmp_path))
    (tmp_path / 'rig.yaml').write_text('/**:\n  ros__parameters:\n    max_rate: 2.0\n')
    (tmp_path / 'prior.yaml').write_text('/**:\n  ros__parameters:\n    sync:\n'
                                         '      infrared_time_offset: 0.5\n')
    context = {'namespace': '', 'params_file': '~/rig.yaml', 'weights': '', 'backend': '',
               'device': '', 'infrared_topic': 'infrared/image_raw',
               'visible_topic': 'visible/image_raw', 'infrared_transport': '',
               'visible_transport': '', 'use_sim_time': 'false', 'prior_file': '~/prior.yaml',
               'infrared_time_offset': ''}
    node = next(a for a in module._launch_setup(context)
                if a.kwargs.get('executable') == 'fuse_node')
    assert node.kwargs['parameters'][:2] == [str(tmp_path / 'rig.yaml'),
                                             str(tmp_path / 'prior.yaml')]

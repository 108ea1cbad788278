r"""Launch the tarfuse_ros fusion node, optionally with RViz.

Examples::

    ros2 launch tarfuse_ros fuse.launch.py
    ros2 launch tarfuse_ros fuse.launch.py namespace:=front device:=cuda:0 rviz:=true
    ros2 launch tarfuse_ros fuse.launch.py infrared_topic:=/flir/image_raw \
        visible_topic:=/rgb/image_raw
    ros2 launch tarfuse_ros fuse.launch.py visible_transport:=compressed \
        infrared_transport:=compressed   # subscribes <topic>/compressed
    ros2 launch tarfuse_ros fuse.launch.py infrared_transport:=compressedDepth  # 16UC1 / 32FC1
    ros2 launch tarfuse_ros fuse.launch.py backend:=onnxruntime weights:=/path/tarfuse.onnx
    ros2 launch tarfuse_ros fuse.launch.py prior_file:=rig_prior.yaml   # from tarfuse-calibrate
    ros2 launch tarfuse_ros fuse.launch.py infrared_time_offset:=-0.06  # tarfuse-time-offset

Parameters come from ``params_file`` (default: the shipped ``config/tarfuse.yaml``); the
``weights``, ``backend``, ``device``, ``infrared_transport`` and ``visible_transport`` arguments
override it only when they are not empty; ``prior_file`` (a parameters file written by
``tarfuse-calibrate``, ``registration.prior*``) is applied after ``params_file``, and
``infrared_time_offset`` (``sync.infrared_time_offset``) after both when it is not empty.  Unless
``FASTRTPS_DEFAULT_PROFILES_FILE`` is already set, the shipped ``config/fastdds_profile.xml`` is
used (shared memory with a large segment: large images over best-effort DDS otherwise get
lost).  The visible camera's camera_info is read beside ``visible_topic`` (its namespace +
``camera_info``, as image_transport's CameraSubscriber does; also with the compressed transport),
so only the two image topics are remapped.
"""

import os
from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = 'tarfuse_ros'


def _share_dir():
    """Return the installed share directory, or the source tree when not installed."""
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(PACKAGE))
    except Exception:  # noqa: BLE001 - not installed: run from the source tree
        return Path(__file__).resolve().parents[1]


def _launch_setup(context):
    share = _share_dir()
    value = {name: LaunchConfiguration(name).perform(context) for name in (
        'namespace', 'params_file', 'weights', 'backend', 'device', 'infrared_topic',
        'visible_topic', 'infrared_transport', 'visible_transport', 'use_sim_time',
        'prior_file', 'infrared_time_offset')}
    actions = []
    profile = share / 'config' / 'fastdds_profile.xml'
    if not os.environ.get('FASTRTPS_DEFAULT_PROFILES_FILE') and profile.is_file():
        actions.append(SetEnvironmentVariable('FASTRTPS_DEFAULT_PROFILES_FILE', str(profile)))
    sim_time = value['use_sim_time'].strip().lower()
    if sim_time not in ('true', 'false', '1', '0'):
        raise ValueError(f"use_sim_time must be 'true' or 'false', got {value['use_sim_time']!r}")
    overrides = {'use_sim_time': sim_time in ('true', '1')}
    for name in ('weights', 'backend', 'device'):
        if value[name].strip():
            overrides[name] = value[name].strip()
    for camera in ('infrared', 'visible'):
        if value[f'{camera}_transport'].strip():
            overrides[f'{camera}.transport'] = value[f'{camera}_transport'].strip()
    offset = value['infrared_time_offset'].strip()
    if offset:
        try:
            overrides['sync.infrared_time_offset'] = float(offset)
        except ValueError:
            raise ValueError(f'infrared_time_offset must be a number of seconds (e.g. -0.06, '
                             f'from tarfuse-time-offset), got {offset!r}') from None
    # rcl does not expand '~' in a parameters file's path, nor the shell in params_file:=~/...
    params_file = os.path.expanduser(value['params_file'].strip()) or str(
        share / 'config' / 'tarfuse.yaml')
    # launch_ros drops a parameters file that is not a file with a mere warning, and the node
    # would then run on its built-in defaults.
    if not Path(params_file).is_file():
        raise FileNotFoundError(f'params_file {params_file!r} is not a file (give a YAML file '
                                f'like config/tarfuse.yaml, or leave params_file out)')
    prior_file = os.path.expanduser(value['prior_file'].strip())
    if prior_file and not Path(prior_file).is_file():
        raise FileNotFoundError(f'prior_file {prior_file!r} is not a file (write one with '
                                f'tarfuse-calibrate ... --out PRIOR.yaml)')
    for name in ('infrared_topic', 'visible_topic'):
        if not value[name].strip():
            raise ValueError(f'{name} is empty: give the camera image topic (e.g. '
                             f'/flir/image_raw)')
    remappings = [
        ('infrared/image_raw', value['infrared_topic']),
        ('visible/image_raw', value['visible_topic']),
    ]
    actions.append(Node(
        package=PACKAGE,
        executable='fuse_node',
        name='tarfuse',
        namespace=value['namespace'],
        output='screen',
        emulate_tty=True,
        parameters=[params_file] + ([prior_file] if prior_file else []) + [overrides],
        # The node reads the camera_info beside the visible image topic (visible_topic
        # /rgb/image_raw: /rgb/camera_info), as image_transport does: no rule needed for it.
        remappings=remappings,
    ))
    actions.append(Node(
        package='rviz2',
        executable='rviz2',
        name='tarfuse_rviz',
        namespace=value['namespace'],
        arguments=['-d', str(share / 'rviz' / 'tarfuse.rviz')],
        parameters=[{'use_sim_time': overrides['use_sim_time']}],
        # Its 'Visible input' display shows visible/image_raw: the camera the node reads.
        remappings=remappings,
        condition=IfCondition(LaunchConfiguration('rviz')),
    ))
    return actions


def generate_launch_description():
    share = _share_dir()
    arguments = [
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='Namespace of the node and of its relative topics (one per rig).'),
        DeclareLaunchArgument(
            'params_file', default_value=str(share / 'config' / 'tarfuse.yaml'),
            description='YAML file with the node parameters (/**: ros__parameters).'),
        DeclareLaunchArgument(
            'prior_file', default_value='',
            description='Parameters file with the registration prior (registration.prior, '
                        'prior_ir_size, prior_visible_size; and sync.infrared_time_offset '
                        'with --infrared-time-offset auto) written by tarfuse-calibrate, '
                        'applied after params_file; empty: none.'),
        DeclareLaunchArgument(
            'infrared_time_offset', default_value='',
            description='Seconds added to every IR stamp before pairing (the node parameter '
                        'sync.infrared_time_offset, e.g. from tarfuse-time-offset), '
                        'overriding params_file and prior_file; empty: keep it.'),
        DeclareLaunchArgument(
            'weights', default_value='',
            description='Checkpoint (.safetensors; .onnx with backend onnxruntime) overriding '
                        'params_file; empty: keep it.'),
        DeclareLaunchArgument(
            'backend', default_value='',
            description="'torch' or 'onnxruntime' (weights: an .onnx file from tarfuse-export) "
                        'overriding params_file; empty: keep it.'),
        DeclareLaunchArgument(
            'device', default_value='',
            description="Torch device overriding params_file ('cpu', 'cuda:0'); empty: keep."),
        DeclareLaunchArgument(
            'infrared_topic', default_value='infrared/image_raw',
            description='Infrared image topic (mono8/mono16/8UC1/16UC1/32FC1; colour encodings '
                        'are taken too), the base name for the compressed transport.'),
        DeclareLaunchArgument(
            'visible_topic', default_value='visible/image_raw',
            description='Visible image topic (bgr8/rgb8/mono8/bayer_*/...), the base name '
                        'for the compressed transport; the camera_info beside it '
                        '(/rgb/image_raw: /rgb/camera_info) is republished as '
                        'fused/camera_info.'),
        DeclareLaunchArgument(
            'infrared_transport', default_value='',
            description="'raw', 'compressed' (<infrared_topic>/compressed, e.g. 16-bit PNG) "
                        "or 'compressedDepth' (<infrared_topic>/compressedDepth, a 16UC1 or "
                        '32FC1 image, PNG) overriding params_file; empty: keep it.'),
        DeclareLaunchArgument(
            'visible_transport', default_value='',
            description="'raw' or 'compressed' (<visible_topic>/compressed, JPEG/PNG; "
                        "not 'compressedDepth') overriding params_file; empty: keep it."),
        DeclareLaunchArgument(
            'use_sim_time', default_value='false',
            description='true or false: use /clock (true when replaying a bag with '
                        'ros2 bag play --clock or tarfuse-play --clock).'),
        DeclareLaunchArgument(
            'rviz', default_value='false',
            description='Open RViz with rviz/tarfuse.rviz (fused, debug and registered images; '
                        'the debug image needs publish.debug: true in params_file).'),
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=_launch_setup)])

"""Which camera_info the node republishes when the visible image is remapped.

image_transport's CameraSubscriber convention (REP 104): the camera_info is the sibling of the
image's base topic after remapping, so remapping only the image moves it too; a rule for
``visible/camera_info`` itself wins. The choice is checked first with real rclpy name
resolution (no model), then over real DDS: node processes with a real (random) model, started
together, each with camera_info published on the topic it should read and on the ones it
should not, each with a focal length of its own.
"""

import re
import time

from node_harness import camera_info_msg, make_checkpoint, NodeProcess, Probe
from node_harness import random_domain_id
import pytest
import rclpy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo
from tarfuse_ros.ros.node import visible_camera_info_topic

NAMESPACE = '/rig'
BESIDE, REMAPPED = 'beside the visible image topic', 'visible/camera_info remapped'


@pytest.mark.parametrize('namespace, rules, topic, origin', [
    ('/', [], '/visible/camera_info', BESIDE),
    (NAMESPACE, [], '/rig/visible/camera_info', BESIDE),
    (NAMESPACE, ['visible/image_raw:=/camera/color/image_raw'], '/camera/color/camera_info',
     BESIDE),
    (NAMESPACE, ['/rig/visible/image_raw:=/camera/color/image_raw'],
     '/camera/color/camera_info', BESIDE),
    (NAMESPACE, ['visible/image_raw:=color/image_raw'], '/rig/color/camera_info', BESIDE),
    ('/', ['visible/image_raw:=/image'], '/camera_info', BESIDE),
    # A rule for another node, or for the other camera, moves nothing.
    (NAMESPACE, ['other:visible/image_raw:=/camera/color/image_raw'],
     '/rig/visible/camera_info', BESIDE),
    (NAMESPACE, ['infrared/image_raw:=/flir/image_raw'], '/rig/visible/camera_info', BESIDE),
    # An explicit rule wins, relative or absolute.
    (NAMESPACE, ['visible/image_raw:=/camera/color/image_raw',
                 'visible/camera_info:=/calib/camera_info'], '/calib/camera_info', REMAPPED),
    (NAMESPACE, ['visible/camera_info:=calib/info'], '/rig/calib/info', REMAPPED),
])
def test_the_camera_info_topic_follows_the_resolved_visible_image(
        namespace, rules, topic, origin):
    context = rclpy.Context()
    arguments = ['--ros-args', *(word for rule in rules for word in ('-r', rule))]
    rclpy.init(context=context, args=arguments, domain_id=random_domain_id(),
               signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = rclpy.create_node('tarfuse', namespace=namespace, context=context)
        found = visible_camera_info_topic(node)
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
    assert found[0] == topic and found[1].startswith(origin), found


# case: (-r rules, the probe's visible base topic, visible transport,
#        {topic the probe publishes a camera_info on: its focal length}, the focal expected)
CASES = {
    'image_remapped': (
        ['visible/image_raw:=/camera/color/image_raw'], '/camera/color/image_raw', 'raw',
        {'/camera/color/camera_info': 111.0, '/rig/visible/camera_info': 901.0}, 111.0),
    # The node subscribes <base>/compressed; the camera_info is still the base's sibling.
    'compressed_image_remapped': (
        ['visible/image_raw:=color/image_raw'], 'color/image_raw', 'compressed',
        {'/rig/color/camera_info': 333.0, '/rig/color/image_raw/camera_info': 902.0,
         '/rig/visible/camera_info': 903.0}, 333.0),
    'both_remapped': (
        ['visible/image_raw:=/camera/color/image_raw',
         'visible/camera_info:=/calib/camera_info'], '/camera/color/image_raw', 'raw',
        {'/calib/camera_info': 222.0, '/camera/color/camera_info': 904.0,
         '/rig/visible/camera_info': 905.0}, 222.0),
}
LOGS = {
    'image_remapped': 'camera_info from /camera/color/camera_info (beside the visible image '
                      'topic /camera/color/image_raw;',
    'compressed_image_remapped': 'camera_info from /rig/color/camera_info (beside the visible '
                                 'image topic /rig/color/image_raw;',
    'both_remapped': 'camera_info from /calib/camera_info (visible/camera_info remapped)',
}


@pytest.fixture(scope='module')
def nodes(tmp_path_factory):
    """Start one node process per case at once (they load the model in parallel)."""
    weights = tmp_path_factory.mktemp('camera_info') / 'random.safetensors'
    make_checkpoint(weights)
    domains = set()
    while len(domains) < len(CASES):  # a domain per node: a probe sees its node only
        domains.add(random_domain_id())
    started = {}
    try:
        for domain, (name, (rules, _, transport, _, _)) in zip(domains, CASES.items()):
            started[name] = (NodeProcess(domain, {
                'weights': str(weights), 'device': 'cpu', 'cpu_threads': 1,
                'diagnostics.period': 0.5, 'visible.transport': transport,
            }, namespace=NAMESPACE, remaps=rules), domain)
        yield started
    finally:
        for node, _ in started.values():
            node.close()


def _republished_focals(probe, publishers, timeout):
    """Return the focal lengths of the fused/camera_info the node sends for new pairs.

    Every 0.5 s a new stamp: a camera_info on each of ``publishers`` (``(publisher, focal)``),
    then a pair; until the first fused/camera_info arrives or ``timeout`` (s) passes.
    """
    def tick():
        stamp = time.time_ns()
        for publisher, focal in publishers:
            publisher.publish(camera_info_msg(stamp, focal))
        probe.publish_pair(*probe.good_pair(stamp))

    probe.spin_until(lambda: probe.received['camera_info'], timeout, tick=tick, tick_period=0.5)
    return {info.k[0] for info in probe.received['camera_info']}


@pytest.mark.dds
@pytest.mark.parametrize('case', list(CASES))
def test_fused_camera_info_comes_from_the_camera_info_of_the_remapped_visible_image(
        nodes, case):
    _, visible, transport, infos, expected = CASES[case]
    node, domain = nodes[case]
    probe = Probe(domain, namespace=NAMESPACE, transports=('raw', transport),
                  topics={'visible': visible})
    try:
        publishers = [(probe.node.create_publisher(CameraInfo, topic, 10), focal)
                      for topic, focal in infos.items()]
        assert probe.wait_until_ready(180.0), 'no fused image; the log:\n' + node.log()
        read_from = LOGS[case].split()[2]  # 'camera_info from <topic> (...)'
        # Until a camera_info comes, /diagnostics says the topic it waits on heard nothing.
        assert probe.wait_for_diagnostics(
            lambda level, msg, values: values.get('camera_info') == f'{read_from}: none '
            'received'), 'no "none received" camera_info status; the log:\n' + node.log()
        focals = _republished_focals(probe, publishers, 30.0)
        assert probe.wait_for_diagnostics(
            lambda level, msg, values: re.fullmatch(
                rf'{re.escape(read_from)}: [1-9][0-9]* received, newest [0-9.]+ s ago',
                values.get('camera_info', ''))), 'no camera_info counted in /diagnostics'
    finally:
        probe.close()
    read = {focal: topic for topic, focal in infos.items()}
    assert focals == {expected}, (f'fused/camera_info from {[read.get(f) for f in focals]}, '
                                  f'not {read[expected]}; the log:\n{node.log()}')
    assert node.log().count(LOGS[case]) == 1, node.log()


# rules that make the node read the camera_info it publishes: (namespace, -r rules, words of the
# start-up error)
ONTO_ITS_OUTPUT = {
    'camera_info_remapped_onto_it': (
        NAMESPACE, ['visible/camera_info:=fused/camera_info'],
        ["the visible camera_info is read from '/rig/fused/camera_info' (visible/camera_info "
         'remapped), where the node publishes fused/camera_info']),
    # Remapping the image alone moves the camera_info beside it: here onto the output.
    'image_remapped_beside_it': (
        NAMESPACE, ['visible/image_raw:=fused/color'],
        ["the visible camera_info is read from '/rig/fused/camera_info' (beside the visible "
         'image topic /rig/fused/color;', 'where the node publishes fused/camera_info']),
    'output_remapped_onto_it': (
        '/', ['visible/image_raw:=/camera/color/image_raw',
              'fused/camera_info:=/camera/color/camera_info'],
        ["the visible camera_info is read from '/camera/color/camera_info'",
         'where the node publishes fused/camera_info']),
}


def test_a_camera_info_topic_the_node_publishes_is_refused_at_start_up():
    # The node started, subscribed its own fused/camera_info and never published one.
    started = {name: NodeProcess(random_domain_id(), {'device': 'cpu', 'cpu_threads': 1},
                                 namespace=namespace, remaps=rules)
               for name, (namespace, rules, _) in ONTO_ITS_OUTPUT.items()}
    try:
        outcomes = {name: (node.wait(90.0), node.log()) for name, node in started.items()}
    finally:
        for node in started.values():
            node.close()
    for name, (_, _, words) in ONTO_ITS_OUTPUT.items():
        code, log = outcomes[name]
        assert code is not None and code != 0, f'{name}: the node kept running:\n{log}'
        assert 'Traceback' not in log and 'FATAL' in log, log
        for word in words:
            assert word in log, f'{name}: {word!r} missing from:\n{log}'

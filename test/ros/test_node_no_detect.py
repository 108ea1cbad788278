"""The node over real DDS with a checkpoint without detection head (``model.detect: false``).

The node publishes the fused and registered images as usual, does not advertise ``detections``
(the topic is absent, not always empty) and says so once in its start-up log.
"""

import time

from node_harness import NodeProcess, Probe, random_domain_id, sample_pair
import numpy as np
import pytest
from tarfuse_ros.core.engine import FusionEngine

pytestmark = pytest.mark.dds
NAMESPACE = '/med'


def _save_fusion_only_checkpoint(path, seed=0):
    import torch
    from tarfuse_ros.core.checkpoint import save_checkpoint
    from tarfuse_ros.core.model.tarfuse import build_model

    torch.manual_seed(seed)
    model = build_model({'detect': False}).eval()
    save_checkpoint(path, model, provenance={'note': f'random init, seed {seed}, no detection'})


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    weights = tmp_path_factory.mktemp('node_nodet') / 'fusion_only.safetensors'
    _save_fusion_only_checkpoint(weights)
    # A params file shared with models that detect: its detections override is ignored here.
    shared = weights.parent / 'qos.yaml'
    shared.write_text(f'/**:\n  ros__parameters:\n    qos_overrides:\n'
                      f'      {NAMESPACE}/detections:\n        publisher:\n          depth: 3\n')
    domain = random_domain_id()
    node = NodeProcess(domain, {
        'weights': str(weights), 'device': 'cpu', 'cpu_threads': 1,
        'diagnostics.period': 0.25, 'diagnostics.input_timeout': 3.0, 'qos.depth': 10,
        'publish.detections': True, 'publish.debug': True,
    }, namespace=NAMESPACE, params_files=[shared])
    probe = Probe(domain, namespace=NAMESPACE)
    try:
        if not probe.wait_until_ready(90.0):
            pytest.fail('the node never answered a pair; its log:\n' + node.log())
        yield node, probe, weights
    finally:
        probe.close()
        node.close()


def test_fused_images_are_published_without_a_detections_topic_and_the_log_says_why(setup):
    node, probe, weights = setup
    stamps = []
    for _ in range(3):
        stamps.append(time.time_ns())
        probe.publish_pair(*probe.good_pair(stamps[-1]))
        assert probe.wait_for_outputs(stamps[-1], keys=('fused', 'registered', 'debug')), \
            node.log()
    expected = FusionEngine(weights, device='cpu').infer(*sample_pair())
    for stamp in stamps:
        fused, = probe.outputs_for('fused', stamp)
        assert (fused.height, fused.width) == expected.fused.shape[:2]
        image = np.frombuffer(bytes(fused.data), np.uint8).reshape(expected.fused.shape)
        assert np.abs(image.astype(int) - expected.fused.astype(int)).max() <= 1
    # Give a late detections message time to arrive: none may come, and nobody advertises it.
    probe.spin_until(lambda: False, 1.0)
    assert probe.received['detections'] == []
    # (The probe subscribes to detections, so the topic name exists; its publishers do not.)
    assert probe.node.get_publishers_info_by_topic(f'{NAMESPACE}/fused/image_raw')
    assert probe.node.get_publishers_info_by_topic(f'{NAMESPACE}/detections') == []
    log = node.log()
    assert log.count('has no detection head') == 1, log
    assert 'detections topic is not advertised' in log
    assert f"QoS override 'qos_overrides.{NAMESPACE}/detections.publisher.depth' ignored" in log

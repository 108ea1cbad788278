"""Two fusion nodes in one process (a program serving two camera rigs), over real DDS.

``two_nodes.py`` runs ``/rig_a/tarfuse`` and ``/rig_b/tarfuse`` under one executor, on the
onnxruntime backend (the shipped model exported once), whose engine warns through Python
logging both at start-up and while it fuses.
"""

from pathlib import Path

from node_harness import NodeProcess, Probe, random_domain_id
import pytest
import yaml

pytestmark = pytest.mark.dds
TWO_NODES = Path(__file__).with_name('two_nodes.py')
RIGS = ('rig_a', 'rig_b')


@pytest.fixture(scope='module')
def two_nodes(shipped_onnx_file, tmp_path_factory):
    """Start both nodes (rig_b asks for CUDA, with the CPU fallback); yield (process, probes)."""
    params = tmp_path_factory.mktemp('two_nodes') / 'rigs.yaml'
    params.write_text(yaml.safe_dump({
        '/**': {'ros__parameters': {'backend': 'onnxruntime', 'weights': str(shipped_onnx_file),
                                    'device': 'cpu', 'cpu_threads': 1}},
        '/rig_b/tarfuse': {'ros__parameters': {'device': 'cuda', 'allow_cpu_fallback': True}},
    }, sort_keys=False))
    domain = random_domain_id()
    process = NodeProcess(domain, {}, namespace=None, params_files=[params], program=TWO_NODES)
    probes = []
    try:
        for rig in RIGS:
            probes.append(Probe(domain, namespace=f'/{rig}'))
            if not probes[-1].wait_until_ready(180.0):
                pytest.fail(f'/{rig}/tarfuse never answered a pair; the log:\n{process.log()}')
        yield process, probes
    finally:
        for probe in probes:
            probe.close()
        process.close()


def test_each_nodes_core_warnings_reach_its_own_log_once(two_nodes):
    """Each node added a handler to the shared tarfuse_ros Python logger.

    So every warning of the core was logged under the names of both nodes: rig_b's CPU
    fallback (at its start-up) under rig_a too, and each engine's warning of its first frame
    (160x128, below the global stage's min side; in the node's worker) twice under each name.
    """
    process, _ = two_nodes
    log = process.log()
    fallback = [line for line in log.splitlines() if 'falling back to the CPU' in line]
    assert len(fallback) == 1 and '[rig_b.tarfuse]: ' in fallback[0], log
    small = [line for line in log.splitlines() if "below the global stage's min side" in line]
    for rig in RIGS:
        lines = [line for line in small if f'[{rig}.tarfuse]: a 160x128 frame' in line]
        assert len(lines) == 1 and lines[0].startswith('[WARN] '), log
    assert len(small) == 2, log

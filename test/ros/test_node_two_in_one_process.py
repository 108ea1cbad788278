"""Two fusion nodes in one process (a program serving two camera rigs), over real DDS.

``two_nodes.py`` runs ``/rig_a/tarfuse`` and ``/rig_b/tarfuse`` under one executor: on the
onnxruntime backend (the shipped model exported once), whose engine warns through Python
logging both at start-up and while it fuses, and on the torch backend.
"""

from pathlib import Path

from node_harness import make_checkpoint, NodeProcess, Probe, random_domain_id
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


def test_a_second_node_asking_other_pytorch_threads_is_refused_at_start_up(tmp_path):
    """The second node's PyTorch CPU thread count was taken by both: one count per process.

    rig_a asked for cpu_threads 1 and ran, and said in /diagnostics that it ran, with rig_b's
    2. Now rig_b stops the program at start-up, naming the node and what to do.
    """
    weights = tmp_path / 'random.safetensors'
    make_checkpoint(weights)
    params = tmp_path / 'rigs.yaml'
    params.write_text(yaml.safe_dump({
        '/**': {'ros__parameters': {'weights': str(weights), 'device': 'cpu'}},
        '/rig_a/tarfuse': {'ros__parameters': {'cpu_threads': 1}},
        '/rig_b/tarfuse': {'ros__parameters': {'cpu_threads': 2}},
    }, sort_keys=False))
    process = NodeProcess(random_domain_id(), {}, namespace=None, params_files=[params],
                          program=TWO_NODES)
    try:
        code = process.wait(90.0)
        log = process.log()
    finally:
        process.close()
    assert code == 1 and 'Traceback' not in log, log
    fatal = [line for line in log.splitlines() if line.startswith('[FATAL]')]
    assert len(fatal) == 1, log
    assert ('cpu_threads 2: 2 PyTorch CPU thread(s), but /rig_a/tarfuse in this process runs '
            'PyTorch with 1' in fatal[0] and 'the same cpu_threads' in fatal[0]), log

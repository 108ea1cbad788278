"""Start-up failures: a clear message saying what to do, a non-zero exit code, no traceback."""

from node_harness import make_checkpoint, NodeProcess, random_domain_id
import pytest
import torch


def _cases(tmp_path):
    weights = tmp_path / 'random.safetensors'
    make_checkpoint(weights)
    corrupt = tmp_path / 'corrupt.safetensors'
    corrupt.write_bytes(b'\x00\x01 this is not a safetensors file' * 20)
    cases = {
        'missing_weights': ({'weights': str(tmp_path / 'absent.safetensors')},
                            ['absent.safetensors', 'weights']),
        'corrupt_weights': ({'weights': str(corrupt)}, ['cannot load the model', 'weights']),
        'bad_reliability': ({'weights': str(weights), 'qos.reliability': 'sometimes'},
                            ['qos.reliability', 'best_effort, reliable']),
        'unknown_class': ({'weights': str(weights), 'classes': '[no_such_class]'},
                          ['unknown class names', 'no_such_class']),
    }
    if not torch.cuda.is_available():
        cases['cuda_unavailable'] = ({'weights': str(weights), 'device': 'cuda:0'},
                                     ['CUDA is not available', 'allow_cpu_fallback'])
    return cases


@pytest.fixture(scope='module')
def outcomes(tmp_path_factory):
    """Start every failing configuration at once (they fail in parallel) and collect them."""
    cases = _cases(tmp_path_factory.mktemp('startup'))
    domain = random_domain_id()
    processes = {name: (NodeProcess(domain, params), words)
                 for name, (params, words) in cases.items()}
    try:
        yield {name: (proc.wait(90.0), proc.log(), words)
               for name, (proc, words) in processes.items()}
    finally:
        for proc, _ in processes.values():
            proc.close()


@pytest.mark.parametrize('case', ['missing_weights', 'corrupt_weights', 'bad_reliability',
                                  'unknown_class', 'cuda_unavailable'])
def test_start_up_failure_exits_non_zero_with_a_clear_message(outcomes, case):
    if case not in outcomes:
        pytest.skip('CUDA is available here: the unavailable-device case cannot happen')
    code, log, words = outcomes[case]
    assert code is not None, f'{case}: the node kept running:\n{log}'
    assert code != 0, log
    assert 'Traceback' not in log, log
    assert 'FATAL' in log, log
    for word in words:
        assert word in log, f'{word!r} missing from:\n{log}'

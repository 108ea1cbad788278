"""Start-up failures: a clear message saying what to do, a non-zero exit code, no traceback."""

from pathlib import Path
import signal
import time

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
        'weights_a_directory': ({'weights': str(tmp_path)}, ['is a directory, not a weights '
                                                             'file']),
        'bad_reliability': ({'weights': str(weights), 'qos.reliability': 'sometimes'},
                            ['qos.reliability', 'best_effort, reliable']),
        'unknown_class': ({'weights': str(weights), 'classes': '[no_such_class]'},
                          ['unknown class names', 'no_such_class']),
    }
    typo_file = tmp_path / 'typo.yaml'
    typo_file.write_text('/**:\n  ros__parameters:\n    sync:\n      slopp: 0.05\n')
    cases.update({
        'misspelt_parameter': ({'weights': str(weights), 'confidance_threshold': 0.5},
                               ["unknown parameter 'confidance_threshold'",
                                "did you mean 'confidence_threshold'?"]),
        'misspelt_in_a_params_file': ({'weights': str(weights)},
                                      ["unknown parameter 'sync.slopp'",
                                       "did you mean 'sync.slop'?"], typo_file),
        # rcl drops this value silently: the shipped params file gave the parameter a double.
        'mistyped_after_the_params_file': ({'weights': str(weights),
                                            'confidence_threshold': 'abc'},
                                           ['-p confidence_threshold:=abc',
                                            'a string where a double is expected']),
    })
    if not torch.cuda.is_available():
        cases['cuda_unavailable'] = ({'weights': str(weights), 'device': 'cuda:0'},
                                     ['CUDA is not available', 'allow_cpu_fallback'])
    return cases


@pytest.fixture(scope='module')
def outcomes(tmp_path_factory):
    """Start every failing configuration at once (they fail in parallel) and collect them."""
    cases = _cases(tmp_path_factory.mktemp('startup'))
    domain = random_domain_id()
    processes = {name: (NodeProcess(domain, params, params_files=files), words)
                 for name, (params, words, *files) in cases.items()}
    try:
        yield {name: (proc.wait(90.0), proc.log(), words)
               for name, (proc, words) in processes.items()}
    finally:
        for proc, _ in processes.values():
            proc.close()


@pytest.mark.parametrize('case', ['missing_weights', 'corrupt_weights', 'weights_a_directory',
                                  'bad_reliability',
                                  'unknown_class', 'misspelt_parameter',
                                  'misspelt_in_a_params_file', 'mistyped_after_the_params_file',
                                  'cuda_unavailable'])
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


def test_ctrl_c_while_the_node_is_still_importing_exits_quietly():
    node = NodeProcess(random_domain_id(), {})
    maps = Path(f'/proc/{node.process.pid}/maps')
    try:
        deadline = time.monotonic() + 60.0
        loading = False
        while not loading and node.alive() and time.monotonic() < deadline:
            try:  # PyTorch's library is mapped while the node module imports
                loading = 'libtorch' in maps.read_text()
            except OSError:
                break
        assert loading, f'never saw the import:\n{node.log()}'
        code, _ = node.stop(signal.SIGINT, timeout=30.0)
        log = node.log()
        assert code == 0, f'exit code {code}:\n{log}'
        assert 'Traceback' not in log and 'KeyboardInterrupt' not in log, log
    finally:
        node.close()

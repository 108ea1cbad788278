"""Device names and process-wide torch settings applied and restored by programs."""

import pytest
from tarfuse_ros.core.runtime import (cudnn_benchmark, DeviceUnavailableError, parse_device,
                                      resolve_device, torch_settings)
import torch


def test_device_names():
    assert parse_device(' CPU ') == ('cpu', None) and parse_device('cuda:2') == ('cuda', 2)
    assert parse_device('cuda', local_rank=1) == ('cuda', 1)
    assert resolve_device(' CPU ') == torch.device('cpu')
    for bad in ('tpu', 'cuda:x', 'cuda:', 'gpu0', ''):
        with pytest.raises(ValueError, match='cpu, cuda or cuda:N'):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match='CUDA is not available'):
            resolve_device('cuda')
        assert resolve_device('cuda:1', allow_cpu_fallback=True) == torch.device('cpu')
    # What to do instead is the program's to say (an option, a node parameter).
    with pytest.raises(DeviceUnavailableError, match=r"^device 'cuda:99' was requested but "
                                                     r'[^;]*$'):
        resolve_device('cuda:99')
    assert issubclass(DeviceUnavailableError, RuntimeError)


def test_torch_settings_are_restored():
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    benchmark = torch.backends.cudnn.benchmark
    other = 1 if threads != 1 else 2
    with torch_settings(threads=other, deterministic=True, flush_denormal=True):
        assert torch.get_num_threads() == other
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    with cudnn_benchmark(True):
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark is benchmark
    with pytest.raises(ValueError, match='threads'):
        with torch_settings(threads=-1):
            pass

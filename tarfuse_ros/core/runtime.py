"""Where torch runs: device names, and the process-wide torch settings a program may change.

Library objects (the engine, the trainer) never change process-wide state; programs do, through
:func:`torch_settings`, which restores what it changed on exit. Process-wide here means for every
thread of the process: ``torch.set_num_threads``, ``torch.use_deterministic_algorithms``,
``torch.set_flush_denormal`` and ``torch.backends.cudnn.benchmark`` (:func:`cudnn_benchmark`).
"""

from contextlib import contextmanager
import logging

# Re-exported: they live in a torch-free module (the onnxruntime backend uses them).
from tarfuse_ros.core.devices import DeviceUnavailableError, parse_device
import torch

__all__ = ['DeviceUnavailableError', 'cudnn_benchmark', 'parse_device', 'resolve_device',
           'torch_settings']

_LOG = logging.getLogger(__name__)


def resolve_device(device, allow_cpu_fallback=False, local_rank=0):
    """Parse ``'cpu'``, ``'cuda'`` or ``'cuda:N'`` into a :class:`torch.device`.

    Args:
        device: the name (case and surrounding blanks ignored).
        allow_cpu_fallback: return the CPU (with a logged warning) instead of raising when the
            CUDA device does not exist.
        local_rank: the index plain ``'cuda'`` means (a torchrun process's ``LOCAL_RANK``).

    Raises:
        ValueError: any other name.
        DeviceUnavailableError: CUDA asked for but unavailable, or no such GPU index, unless
            ``allow_cpu_fallback`` is true.

    """
    kind, index = parse_device(device, local_rank)
    if kind == 'cpu':
        return torch.device('cpu')
    if not torch.cuda.is_available():
        problem = (f'device {device!r} was requested but CUDA is not available '
                   f'(torch {torch.__version__}, CUDA build {torch.version.cuda})')
    elif index >= torch.cuda.device_count():
        problem = (f'device {device!r} was requested but only {torch.cuda.device_count()} '
                   f'CUDA device(s) exist')
    else:
        return torch.device('cuda', index)
    if allow_cpu_fallback:
        _LOG.warning('%s; falling back to the CPU (allow_cpu_fallback is true; much slower)',
                     problem)
        return torch.device('cpu')
    raise DeviceUnavailableError(problem)


@contextmanager
def torch_settings(threads=None, deterministic=None, flush_denormal=None):
    """Apply process-wide torch settings for the duration of a ``with`` block, then restore them.

    Args:
        threads: ``torch.set_num_threads`` value (``None`` or 0: unchanged).
        deterministic: ``torch.use_deterministic_algorithms`` (warn-only; ``None``: unchanged).
        flush_denormal: ``torch.set_flush_denormal`` (tiny floats become 0, much faster on
            CPUs; ``None``: unchanged; on exit it is switched off again, torch's default).

    Raises:
        ValueError: ``threads`` not an integer >= 0.

    """
    if threads is not None and (isinstance(threads, bool) or int(threads) != threads
                                or threads < 0):
        raise ValueError(f'threads must be an integer >= 0, got {threads!r}')
    saved_threads = torch.get_num_threads()
    saved_deterministic = (torch.are_deterministic_algorithms_enabled(),
                           torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        if threads:
            torch.set_num_threads(int(threads))
        if deterministic is not None:
            torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)
        if flush_denormal is not None:
            torch.set_flush_denormal(bool(flush_denormal))
        yield
    finally:
        torch.set_num_threads(saved_threads)
        torch.use_deterministic_algorithms(saved_deterministic[0],
                                           warn_only=saved_deterministic[1])
        if flush_denormal is not None:
            torch.set_flush_denormal(False)


@contextmanager
def cudnn_benchmark(enabled=True):
    """Let cuDNN time its kernels per input size inside a ``with`` block (restored on exit).

    ``torch.backends.cudnn.benchmark`` is process-wide: the engine sets it around its own
    forward passes only (camera frames have one size, so the timing pays off) and leaves the
    rest of the process as it found it. ``enabled`` False changes nothing.
    """
    if not enabled:
        yield
        return
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved

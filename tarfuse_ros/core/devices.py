"""Device names, read without torch: ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.

Apart from :mod:`tarfuse_ros.core.runtime` (which re-exports them) so that the onnxruntime
backend (:mod:`~tarfuse_ros.core.onnx_backend`) parses its ``device`` without loading torch.
"""

__all__ = ['DeviceUnavailableError', 'parse_device']


class DeviceUnavailableError(RuntimeError):
    """A valid device name whose device does not exist here (no CUDA, or no such GPU).

    The message says what is missing only: what a user can do about it depends on the program
    (a tool's ``--device cpu``, the node's ``device`` and ``allow_cpu_fallback`` parameters),
    so the program that catches it says so.
    """


def parse_device(device, local_rank=0):
    """Parse a device name into ``('cpu', None)`` or ``('cuda', index)`` (syntax only).

    Args:
        device: ``'cpu'``, ``'cuda'`` or ``'cuda:N'`` (case and surrounding blanks ignored).
        local_rank: the index plain ``'cuda'`` means.

    Raises:
        ValueError: any other name.

    """
    text = str(device).strip().lower()
    valid = text in ('cpu', 'cuda') or (text.startswith('cuda:') and text[5:].isdigit())
    if not valid:
        raise ValueError(f'device must be cpu, cuda or cuda:N, got {device!r}')
    if text == 'cpu':
        return 'cpu', None
    return 'cuda', int(text[5:]) if ':' in text else int(local_rank)

"""Choose the inference backend: PyTorch (:class:`FusionEngine`) or onnxruntime.

Both engines take the same pairs and return the same :class:`FusionResult`; the torch one runs a
``.safetensors`` checkpoint, the onnxruntime one an ``.onnx`` file from ``tarfuse-export``
(:class:`~tarfuse_ros.core.onnx_backend.OnnxFusionEngine`). This module imports neither until
asked, so choosing onnxruntime does not load torch here.
"""

__all__ = ['BACKENDS', 'backend_for_weights', 'create_engine', 'model_error']

BACKENDS = ('torch', 'onnxruntime')


def backend_for_weights(weights):
    """Return the backend that runs ``weights``: ``'onnxruntime'`` for a ``.onnx`` file.

    The suffix is compared without case (``MODEL.ONNX`` too); anything else, and ``None``
    (the shipped checkpoint), is ``'torch'``.
    """
    return 'onnxruntime' if str(weights or '').lower().endswith('.onnx') else 'torch'


def create_engine(backend='torch', **kwargs):
    """Build the engine of ``backend`` with ``kwargs`` (``weights``, ``device``, thresholds...).

    Args:
        backend: ``'torch'`` (``weights``: ``.safetensors``) or ``'onnxruntime'``
            (``weights``: ``.onnx`` written by ``tarfuse-export``).
        **kwargs: the engine's keyword arguments (:class:`FusionEngine` or
            :class:`~tarfuse_ros.core.onnx_backend.OnnxFusionEngine`).

    Returns:
        the engine.

    Raises:
        ValueError: unknown backend; and the engines' own errors: :func:`model_error` for a bad
            model file, ``RuntimeError`` for an unavailable device, ``ValueError`` for bad
            settings.

    """
    if backend == 'onnxruntime':
        from tarfuse_ros.core.onnx_backend import OnnxFusionEngine
        return OnnxFusionEngine(**kwargs)
    if backend == 'torch':
        from tarfuse_ros.core.engine import FusionEngine
        return FusionEngine(**kwargs)
    raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')


def model_error(backend):
    """Return the exception type an engine of ``backend`` raises for an unusable model file.

    ``CheckpointError`` (torch) or ``OnnxModelError`` (onnxruntime), both ``ValueError``s; for
    an ``except`` clause that tells a bad model file from other bad settings.
    """
    if backend == 'onnxruntime':
        from tarfuse_ros.core.onnx_backend import OnnxModelError
        return OnnxModelError
    if backend == 'torch':
        from tarfuse_ros.core.checkpoint import CheckpointError
        return CheckpointError
    raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')

"""TarFuse checkpoints: one ``.safetensors`` file, weights plus a JSON config in its metadata.

Metadata key ``tarfuse_config`` holds JSON::

    {"format_version": 1,
     "model": TarFuseConfig.to_dict(),          # architecture + class names
     "input": {...},                            # conventions the weights expect
     "provenance": {...}}                       # how they were made (data, command, metrics)

Loading is strict (every tensor present, nothing extra, same shapes, integer and float tensors
where the model has them, finite weights) and never unpickles.
Every failure raises :class:`CheckpointError` (a ``ValueError``) saying what to do.
"""

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
# The header is read without torch (the node checks a checkpoint before torch loads).
from tarfuse_ros.core.checkpoint_header import CheckpointError, FORMAT_VERSION, METADATA_KEY
from tarfuse_ros.core.checkpoint_header import read_checkpoint_config
from tarfuse_ros.core.files import atomic_output
from tarfuse_ros.core.model.tarfuse import build_model, SIZE_MULTIPLE, TarFuseConfig
from tarfuse_ros.core.runtime import resolve_device
import torch

__all__ = ['CheckpointError', 'FORMAT_VERSION', 'INPUT_CONVENTIONS', 'METADATA_KEY',
           'load_checkpoint', 'read_checkpoint_config', 'save_checkpoint']

INPUT_CONVENTIONS = {
    'ir': 'one channel float32 in [0, 1]; mono16 normalised per frame (robust min/max)',
    'vi': 'one channel float32 in [0, 1]: Y of YCrCb for colour images, grey otherwise',
    'ir_resized_to_vi': True,
    'size_multiple': SIZE_MULTIPLE,
    'flow': 'pixels (dx, dy); warp(x, flow)(p) = x(p + flow(p)); align_corners=True',
    'fused': 'Y channel in [0, 1]',
    'det': 'ultralytics Detect (B, 4 + nc, anchors): cx, cy, w, h in input pixels + probs',
}


def save_checkpoint(path, model, provenance=None, input_conventions=None):
    """Write ``model`` (a TarFuse) to ``path`` as safetensors with its config in the metadata.

    ``provenance``: JSON-serialisable dict (data sets, command, epochs, metrics...).
    ``input_conventions`` overrides :data:`INPUT_CONVENTIONS`. The file is written to a temporary
    name first and renamed, so a crash never leaves a half-written checkpoint under ``path``;
    its mode is that of a file written by ``open()``
    (:func:`~tarfuse_ros.core.files.atomic_output`).
    Returns the path.
    """
    config = getattr(model, 'config', None)
    if not isinstance(config, TarFuseConfig):
        raise ValueError(f'model must be a TarFuse with a TarFuseConfig, got {type(model)}')
    header = {
        'format_version': FORMAT_VERSION,
        'model': config.to_dict(),
        'input': dict(input_conventions if input_conventions is not None else INPUT_CONVENTIONS),
        'provenance': dict(provenance or {}),
    }
    try:
        metadata = {METADATA_KEY: json.dumps(header, sort_keys=True)}
    except (TypeError, ValueError) as error:
        raise ValueError(f'provenance and input conventions must be JSON-serialisable: {error}')
    # safetensors refuses shared or strided storage: save contiguous CPU copies.
    tensors = {name: value.detach().to('cpu').contiguous().clone()
               for name, value in model.state_dict().items()}
    path = Path(path)
    with atomic_output(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return path


def load_checkpoint(path, map_location='cpu'):
    """Build the TarFuse described by the checkpoint, load its weights strictly, return it.

    The model is returned in eval mode on ``map_location`` (``'cpu'``, ``'cuda'`` or
    ``'cuda:N'``, case ignored, or a ``torch.device`` of these); its stored config dict is
    available as ``model.checkpoint_config``.

    Raises:
        CheckpointError: the file is missing, not a TarFuse checkpoint, truncated, holds an
            invalid config, tensors that do not match the config's architecture (names,
            shapes, integer for float dtypes), or NaN or infinite weights.
        ValueError: ``map_location`` names no such device.
        tarfuse_ros.core.runtime.DeviceUnavailableError: (a ``RuntimeError``) CUDA asked
            for but absent.

    """
    # Before the file is read: 'cuda' without a GPU was reported as a truncated or corrupt
    # file ('copy or re-export it again'), 'CPU' as an unknown torch device type.
    device = resolve_device(map_location)
    config_dict = read_checkpoint_config(path)
    model_dict = dict(config_dict['model'])
    # Checkpoints written before the matching registration existed name no registration:
    # they hold the paper's MSRB.
    model_dict.setdefault('registration', 'paper')
    try:
        config = TarFuseConfig.from_dict(model_dict)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f'{path}: the stored model config is invalid for this version '
                              f'of tarfuse_ros ({error}); re-export the checkpoint') from None
    try:
        state = load_file(str(path), device=str(device))
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(
            f'{path}: cannot read the tensors (truncated or corrupt file: {error}); '
            'copy or re-export it again') from None
    try:
        model = build_model(config)
    except (TypeError, ValueError) as error:  # a plain ValueError did not name the file
        raise CheckpointError(f'{path}: the stored model config is invalid for this version '
                              f'of tarfuse_ros ({error}); re-export the checkpoint') from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    common = sorted(set(expected) & set(state))
    mismatched = [f'{name} {tuple(state[name].shape)} != {tuple(expected[name].shape)}'
                  for name in common if state[name].shape != expected[name].shape]
    # load_state_dict would cast an integer tensor into float weights (and back) silently.
    kinds = [f'{name} {state[name].dtype} != {expected[name].dtype}' for name in common
             if state[name].is_floating_point() != expected[name].is_floating_point()]
    if missing or unexpected or mismatched or kinds:
        problems = []
        for label, items in (('missing', missing), ('unexpected', unexpected),
                             ('shape mismatch (file != model)', mismatched),
                             ('integer and float dtypes swapped (file != model)', kinds)):
            if items:
                more = f' (+{len(items) - 5} more)' if len(items) > 5 else ''
                shown = ', '.join(items[:5]) + more
                problems.append(f'{label}: {shown}')
        raise CheckpointError(
            f'{path}: tensors do not match the architecture in its config ('
            + '; '.join(problems) + '); the file was edited or written by other code, '
            're-export it with save_checkpoint')
    not_finite = [name for name, tensor in state.items()
                  if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if not_finite:
        more = f' (+{len(not_finite) - 5} more)' if len(not_finite) > 5 else ''
        raise CheckpointError(
            f'{path}: tensors hold NaN or infinite values ({", ".join(not_finite[:5])}{more}): '
            f'the training run that wrote it diverged, or the file is corrupt; use another '
            f'checkpoint (an earlier epoch, or retrain with a lower learning rate)')
    model.load_state_dict(state, strict=True)
    model.to(device)
    model.eval()
    model.checkpoint_config = config_dict
    return model

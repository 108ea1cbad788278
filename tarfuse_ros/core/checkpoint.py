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

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tarfuse_ros.core.files import (atomic_output, is_torch_pickle, looks_like_onnx,
                                    plain_zip_problem)
from tarfuse_ros.core.model.tarfuse import build_model, SIZE_MULTIPLE, TarFuseConfig
from tarfuse_ros.core.runtime import resolve_device
import torch

__all__ = ['CheckpointError', 'FORMAT_VERSION', 'INPUT_CONVENTIONS', 'METADATA_KEY',
           'load_checkpoint', 'read_checkpoint_config', 'save_checkpoint']

FORMAT_VERSION = 1
METADATA_KEY = 'tarfuse_config'
INPUT_CONVENTIONS = {
    'ir': 'one channel float32 in [0, 1]; mono16 normalised per frame (robust min/max)',
    'vi': 'one channel float32 in [0, 1]: Y of YCrCb for colour images, grey otherwise',
    'ir_resized_to_vi': True,
    'size_multiple': SIZE_MULTIPLE,
    'flow': 'pixels (dx, dy); warp(x, flow)(p) = x(p + flow(p)); align_corners=True',
    'fused': 'Y channel in [0, 1]',
    'det': 'ultralytics Detect (B, 4 + nc, anchors): cx, cy, w, h in input pixels + probs',
}


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, of another format version or does not match."""


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


def _check_file(path):
    if isinstance(path, str) and not path.strip():  # Path('') is '.', 'a directory'
        raise CheckpointError(
            f'the checkpoint path is empty ({path!r}): pass the path of a .safetensors file '
            '(FusionEngine: None for the shipped models/tarfuse_default.safetensors)')
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f'{path} is a directory, not a weights file: pass the path of a .safetensors file '
            '(e.g. models/tarfuse_default.safetensors)')
    if not path.is_file():
        raise CheckpointError(
            f'checkpoint {path} does not exist: pass the path of a .safetensors file written by '
            'tarfuse-train (the shipped default is models/tarfuse_default.safetensors)')
    return path


def read_checkpoint_config(path):
    """Return the JSON config dict stored in a checkpoint (without loading the weights)."""
    path = _check_file(path)
    try:
        with safe_open(str(path), framework='pt') as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        zipped = plain_zip_problem(path, 'a .safetensors checkpoint', '.safetensors')
        if zipped is not None:  # it was called a PyTorch checkpoint, unpickling included
            raise CheckpointError(zipped) from None
        if is_torch_pickle(path):
            raise CheckpointError(
                f'{path} is a PyTorch pickle/zip checkpoint, not safetensors: convert it '
                '(safetensors.torch.save_file; a TarFuse model: load its state dict and write '
                'it with save_checkpoint, which stores the config), only if you trust its '
                'source: unpickling runs code') from None
        if path.suffix.lower() == '.onnx' or looks_like_onnx(path):
            raise CheckpointError(
                f'{path} is an ONNX model (tarfuse-export writes them), not a .safetensors '
                f'checkpoint: run it with the onnxruntime backend (node: -p '
                f'backend:=onnxruntime), or give the checkpoint it was exported from') from None
        raise CheckpointError(
            f'{path} is not a readable safetensors file (truncated or corrupt: {error}); '
            'copy or re-export it again') from None
    if METADATA_KEY not in metadata and (path.parent / 'state.json').is_file():
        # The weights of tarfuse-train's resumable state (<run>/state/model.safetensors).
        raise CheckpointError(
            f'{path} holds the weights of a resumable training state, without the network '
            f'config: pass the checkpoint the run writes with it, '
            f'{path.parent.parent / "tarfuse.safetensors"} (or continue the run with '
            f'tarfuse-train --resume {path.parent.parent})')
    if METADATA_KEY not in metadata:
        raise CheckpointError(
            f'{path} has no {METADATA_KEY!r} metadata, so it is not a TarFuse checkpoint; '
            'write checkpoints with tarfuse_ros.core.checkpoint.save_checkpoint')
    try:
        config = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise CheckpointError(f'{path}: the {METADATA_KEY!r} metadata is not valid JSON '
                              f'({error}); the file is corrupt, re-export it') from None
    if not isinstance(config, dict):
        raise CheckpointError(f'{path}: the {METADATA_KEY!r} metadata must be a JSON object')
    version = config.get('format_version')
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f'{path} has format_version {version!r} but this tarfuse_ros reads version '
            f'{FORMAT_VERSION}; use the tarfuse_ros release that wrote it or re-export it')
    if not isinstance(config.get('model'), dict):
        raise CheckpointError(f'{path}: the config has no "model" section; re-export it')
    return config


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

"""The header of a TarFuse checkpoint: its JSON config, read without torch.

A checkpoint (:mod:`tarfuse_ros.core.checkpoint`) is a ``.safetensors`` file whose metadata key
:data:`METADATA_KEY` holds the JSON config (format version, model architecture with the class
names, input conventions, provenance). safetensors reads the header alone, with no tensor and
no torch, so a program can check a checkpoint (it exists, is a safetensors file, holds a
config of this format) before it loads torch: the node does, to report a wrong ``weights``
parameter at once.
"""

import json
from pathlib import Path

from safetensors import safe_open
from tarfuse_ros.core.files import is_torch_pickle, looks_like_onnx, plain_zip_problem

__all__ = ['CheckpointError', 'FORMAT_VERSION', 'METADATA_KEY', 'read_checkpoint_config']

FORMAT_VERSION = 1
METADATA_KEY = 'tarfuse_config'


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, of another format version or does not match."""


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
        with safe_open(str(path), framework='numpy') as handle:
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

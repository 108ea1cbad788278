"""Where an ONNX export may be written, checked without torch (before minutes of tracing).

One check, one message per problem, for :func:`~tarfuse_ros.core.export.export_onnx` and
``tarfuse-export``, which runs it before it imports torch.
"""

import os
from pathlib import Path

from tarfuse_ros.core.files import output_problem

__all__ = ['check_onnx_output']


def check_onnx_output(output, weights, name='output'):
    """Raise ``ValueError`` naming ``name`` unless an ONNX file may be written at ``output``.

    Refused: a folder, or a path ending in a separator (a folder to be: the file would be
    written under its name); the checkpoint ``weights`` itself (the ONNX file would replace
    it); a ``.safetensors`` path (the node and tools would take the ONNX file for a
    checkpoint); an existing file not named ``.onnx`` (a TensorRT engine, an image: it would be
    replaced); a path this process cannot write (:func:`~tarfuse_ros.core.files.output_problem`).

    Args:
        output: the ONNX file to write, as given (a ``str`` keeps its trailing separator).
        weights: the checkpoint being exported.
        name: what the message calls ``output`` (``tarfuse-export``: ``'--out'``).

    """
    text = str(output)
    path = Path(output)
    shown = f'{name} {str(path)!r}'
    onnx_name = str(path.with_suffix('.onnx')) if path.name else 'tarfuse.onnx'
    if path.is_dir() or text.endswith(('/', os.sep)):
        what = 'is a folder' if path.is_dir() else 'names a folder (trailing /)'
        raise ValueError(f'{shown} {what}; give the ONNX file to write (e.g. '
                         f'{str(path / "tarfuse.onnx")!r})')
    weights = Path(weights)
    if path.exists() and weights.exists() and path.samefile(weights):
        raise ValueError(f'{shown} is the checkpoint being exported; the ONNX file would '
                         f'replace it: give another path (e.g. {onnx_name!r})')
    if path.suffix.lower() == '.safetensors':
        raise ValueError(f'{shown} names a .safetensors file, but an ONNX file is written '
                         f'there (the node and tools would take it for a checkpoint): give a '
                         f'path ending in .onnx (e.g. {onnx_name!r})')
    if path.is_file() and path.suffix.lower() != '.onnx':
        # tarfuse-export replaced it whatever it held: a TensorRT engine built from an earlier
        # export (--out tarfuse.engine), a PyTorch file, an image.
        raise ValueError(f'{shown} is a file that is not named .onnx; tarfuse-export would '
                         f'replace it with an ONNX model: give a path ending in .onnx (e.g. '
                         f'{onnx_name!r}), or remove the file first')
    problem = output_problem(path)
    if problem:
        raise ValueError(f'{shown} cannot be written ({problem}); give a path in a folder you '
                         f'can write to')

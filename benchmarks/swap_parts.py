"""Put one part of a trained checkpoint into another model: how stage runs become the default.

A stage run (``tarfuse-train`` with every part but one frozen, e.g. ``training/fuse_v4a``) trains
one part of the network. The shipped default is then the previous default with that part's
tensors taken from the run; every other tensor, and the model config (with the global stage's
inference settings, which have no learnt parameter), stay the previous default's. Only the
fields that shape a swapped part follow the run (``PART_FIELDS``: the reconstruction head's
widths, the neck's stem widths, blocks and top-down path), so a wider head or a deeper neck
trained in the run can be put in. The run's provenance is kept, with ``after_training``
saying what was done.

    python benchmarks/swap_parts.py BASE RUN_CHECKPOINT OUT --parts reconstruction

Parts are the model's top-level modules, named as ``train.freeze`` names them
(``reconstruction``, ``neck``, ``detect``, ``registration``, ...). Prints the number of tensors
taken and the sha256 of ``OUT``. Fails with a message (exit status 1) when a tensor of another
part differs between the two files (the run did not freeze it: swapping would silently drop
what it learnt), when the files are not one architecture, or on an unknown part.
"""

import argparse
from dataclasses import replace
import json
from pathlib import Path
import sys

from tarfuse_ros.core.checkpoint import load_checkpoint, save_checkpoint
from tarfuse_ros.core.files import file_sha256
from tarfuse_ros.core.model.tarfuse import build_model

# Model config fields that only shape one part: they follow the run when that part is swapped.
PART_FIELDS = {'reconstruction': ('reconstruction_channels',),
               'neck': ('neck_stem_channels', 'neck_blocks', 'neck_top_down')}


def swap_parts(base_path, run_path, out_path, parts):
    """Write ``out_path``: ``base_path``'s model with the named parts' tensors from the run.

    Args:
        base_path, run_path: ``.safetensors`` checkpoints of the same architecture outside
            the swapped parts (inside them, the fields of ``PART_FIELDS`` may differ).
        out_path: where the result is written (safetensors + JSON config); neither input.
        parts: the model's top-level part names, as ``train.freeze`` names them, e.g.
            ``('reconstruction',)`` or ``('neck', 'detect')``.

    Returns:
        The number of tensors taken from the run.

    Raises:
        ValueError: an unknown or empty part, a part with no tensor, ``out_path`` naming an
            input, the two checkpoints holding different tensor names outside the swapped
            parts, a taken tensor that
            does not fit the model built, or a tensor outside ``parts`` that differs between
            the two checkpoints (the run trained it).

    """
    parts = tuple(str(part) for part in parts)
    out = Path(out_path).resolve()
    if out in (Path(base_path).resolve(), Path(run_path).resolve()):
        raise ValueError(f'{out_path} is one of the inputs: write the result elsewhere')
    base = load_checkpoint(base_path)
    run = load_checkpoint(run_path)
    follow = {field: getattr(run.config, field)
              for part in parts for field in PART_FIELDS.get(part, ())}
    config = replace(base.config, **follow)
    model = build_model(config).eval()
    known = sorted(name for name, _ in model.named_children())
    unknown = [part for part in parts if part not in known]
    if not parts or unknown:
        raise ValueError(f'parts must be among {known}, got {list(parts)}')
    base_state, run_state = base.state_dict(), run.state_dict()
    state = model.state_dict()

    def outside(names):
        return {name for name in names if name.split('.')[0] not in parts}

    if outside(base_state) != outside(run_state):
        only_base = outside(base_state) - outside(run_state)
        only_run = outside(run_state) - outside(base_state)
        raise ValueError(f'the checkpoints hold different tensors (only in the base: '
                         f'{sorted(only_base)[:3]}, only in the run: {sorted(only_run)[:3]}): '
                         'they are not one architecture')
    taken = 0
    for name in state:
        from_run = name.split('.')[0] in parts
        source = run_state if from_run else base_state
        if name not in source:
            raise ValueError(f'{name}: not in the {"run" if from_run else "base"}, which the '
                             'model built needs')
        if source[name].shape != state[name].shape:
            raise ValueError(f'{name}: shape {tuple(source[name].shape)} in the '
                             f'{"run" if from_run else "base"}, the model built needs '
                             f'{tuple(state[name].shape)}')
        if not from_run and not base_state[name].equal(run_state[name]):
            raise ValueError(f'{name} differs between the base and the run, but is not in the '
                             f'parts {", ".join(parts)}: the run trained it; name its part too '
                             'or start the run from the base')
        state[name] = source[name]
        taken += from_run
    missing = [part for part in parts if not any(n.split('.')[0] == part for n in state)]
    if missing:
        raise ValueError(f'no tensor in the parts {missing}')
    model.load_state_dict(state, strict=True)
    provenance = dict(run.checkpoint_config.get('provenance', {}))
    earlier = base.checkpoint_config.get('provenance', {}).get('after_training')
    fields = ', '.join(f'{field} {json.dumps(value)}' for field, value in follow.items())
    provenance['after_training'] = (
        f'tensors {", ".join(p + ".*" for p in parts)} from the training checkpoint'
        + (f' (model {fields})' if fields else '')
        + '; every other tensor and the rest of the model config from the base checkpoint '
        f'(sha256 {file_sha256(base_path)[:8]}...)'
        + (f', whose own provenance said: {earlier}' if earlier else ''))
    save_checkpoint(out_path, model, provenance)
    return taken


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('base', help='the model to start from (e.g. the shipped default)')
    parser.add_argument('run', help="the stage run's checkpoint (its tarfuse.safetensors)")
    parser.add_argument('out', help='the checkpoint to write')
    parser.add_argument('--parts', nargs='+', required=True,
                        help="the model's parts taken from the run, e.g. reconstruction")
    args = parser.parse_args(argv)
    try:
        taken = swap_parts(args.base, args.run, args.out, tuple(args.parts))
    except ValueError as error:
        sys.exit(f'swap_parts: {error}')
    print(f'{taken} tensors taken from {args.run}; wrote {args.out} '
          f'sha256 {file_sha256(args.out)}')


if __name__ == '__main__':
    main()

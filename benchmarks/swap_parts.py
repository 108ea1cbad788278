"""Put one part of a trained checkpoint into another model: how stage runs become the default.

A stage run (``tarfuse-train`` with every part but one frozen, e.g. ``training/fuse_v4a``) trains
one part of the network. The shipped default is then the previous default with that part's
tensors taken from the run; every other tensor, and the model config (with the global stage's
inference settings, which have no learnt parameter), stay the previous default's. Only the
reconstruction head's widths (``reconstruction_channels``) follow the run, so a wider head
trained fresh can be put in. The run's provenance is kept, with ``after_training`` saying what
was done.

    python benchmarks/swap_parts.py BASE RUN_CHECKPOINT OUT --parts reconstruction.

Prints the number of tensors taken and the sha256 of ``OUT``. Fails (``SystemExit``) when a
tensor of another part differs between the two files (the run did not freeze it: swapping would
silently drop what it learnt) or a taken tensor's shape differs from the model being built.
"""

import argparse
from dataclasses import replace
import hashlib
import sys

from tarfuse_ros.core.checkpoint import load_checkpoint, save_checkpoint
from tarfuse_ros.core.model.tarfuse import build_model


def sha256(path):
    with open(path, 'rb') as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def swap_parts(base_path, run_path, out_path, parts):
    """Write ``out_path``: ``base_path``'s model with the tensors under ``parts`` from the run.

    Args:
        base_path, run_path: ``.safetensors`` checkpoints of the same architecture (the
            reconstruction head's widths may differ).
        out_path: where the result is written (safetensors + JSON config).
        parts: tuple of state-dict name prefixes, e.g. ``('reconstruction.',)``.

    Returns:
        The number of tensors taken from the run.

    Raises:
        SystemExit: a tensor outside ``parts`` differs between the two checkpoints, or a
            taken tensor does not fit the model built.

    """
    base = load_checkpoint(base_path)
    run = load_checkpoint(run_path)
    config = replace(base.config, reconstruction_channels=run.config.reconstruction_channels)
    model = build_model(config).eval()
    base_state, run_state = base.state_dict(), run.state_dict()
    state = model.state_dict()
    taken = 0
    for name in state:
        source = run_state if name.startswith(parts) else base_state
        if name not in source or source[name].shape != state[name].shape:
            sys.exit(f'{name}: missing or of another shape in the '
                     f'{"run" if source is run_state else "base"} checkpoint')
        if source is base_state and not base_state[name].equal(run_state.get(name, state[name])):
            sys.exit(f'{name} differs between the base and the run, but is not under {parts}: '
                     'the run trained it; name its part too or start from the base')
        state[name] = source[name]
        taken += source is run_state
    model.load_state_dict(state, strict=True)
    provenance = dict(run.checkpoint_config.get('provenance', {}))
    kept = base.checkpoint_config.get('provenance', {}).get('after_training', '')
    provenance['after_training'] = (
        f'tensors {", ".join(p + "*" for p in parts)} from the training checkpoint '
        f'(reconstruction_channels {list(config.reconstruction_channels)}); every other tensor '
        f'and the model config from the previous default (sha256 {sha256(base_path)[:8]}...), '
        f'whose own provenance said: {kept}')
    save_checkpoint(out_path, model, provenance)
    return taken


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('base', help='the model to start from (e.g. the shipped default)')
    parser.add_argument('run', help="the stage run's checkpoint (its tarfuse.safetensors)")
    parser.add_argument('out', help='the checkpoint to write')
    parser.add_argument('--parts', nargs='+', required=True,
                        help="state-dict prefixes taken from the run, e.g. 'reconstruction.'")
    args = parser.parse_args(argv)
    taken = swap_parts(args.base, args.run, args.out, tuple(args.parts))
    print(f'{taken} tensors taken from {args.run}; wrote {args.out} sha256 {sha256(args.out)}')


if __name__ == '__main__':
    main()

"""Change a checkpoint's inference settings (model fields no learnt parameter depends on).

Some model fields only say how a trained network is run: the orientation global stage's search
(``global_scale_candidates``, ``global_fine_*``, ...), the small-frame rules
(``input_min_long_side``, ``detect_min_long_side``), the large-frame one
(``detect_max_long_side``) and ``flip_average``. Choosing them after
training leaves every tensor as it was; this writes the checkpoint again with the new values
and says so in its provenance (``after_training``, after what the base's own provenance said).

    python benchmarks/set_inference_fields.py BASE OUT --set detect_min_long_side=640

Values are JSON (``640``, ``true``, ``[0.8, 1.0, 1.25]``). Fails with a message (exit status
1) for a field that has learnt parameters (or no such field), a value the model config
refuses, or ``OUT`` naming ``BASE``.
"""

import argparse
import json
from pathlib import Path
import sys

from tarfuse_ros.core.checkpoint import load_checkpoint, save_checkpoint
from tarfuse_ros.core.files import file_sha256
from tarfuse_ros.core.model.tarfuse import build_model, TarFuseConfig

# TarFuseConfig fields that no learnt parameter depends on (their comments say so).
INFERENCE_FIELDS = (
    'global_scale_candidates', 'global_fine_cell', 'global_fine_block', 'global_fine_passes',
    'global_fine_radius', 'global_extra_passes', 'global_extra_radius', 'global_support_mask',
    'global_fine_check', 'global_coarse_side',
    'global_min_side', 'input_min_long_side', 'detect_min_long_side', 'detect_max_long_side',
    'flip_average',
    'registration_skip_levels', 'global_fine_tolerance', 'global_scale_accept',
    'global_wide_below', 'global_wide_scales')


def parse_settings(items):
    """``['key=json', ...]`` -> ``{key: value}``; ``ValueError`` naming a bad item."""
    settings = {}
    for item in items:
        key, sep, text = str(item).partition('=')
        if not sep or not key:
            raise ValueError(f'--set takes KEY=VALUE, got {item!r}')
        if key not in INFERENCE_FIELDS:
            raise ValueError(f'{key!r} is not an inference setting; these are: '
                             f'{", ".join(INFERENCE_FIELDS)}')
        try:
            settings[key] = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f'--set {key}: {text!r} is not JSON (e.g. 640, true, '
                             f'[0.8, 1.0, 1.25])') from None
    if not settings:
        raise ValueError('nothing to set: give --set KEY=VALUE')
    return settings


def set_inference_fields(base_path, out_path, settings):
    """Write ``out_path``: ``base_path`` with the model fields of ``settings`` changed.

    Args:
        base_path: a ``.safetensors`` checkpoint.
        out_path: where to write (safetensors + JSON config); not ``base_path``.
        settings: ``{field: value}`` over :data:`INFERENCE_FIELDS`.

    Returns:
        The model config written (:class:`TarFuseConfig`).

    Raises:
        ValueError: a field outside :data:`INFERENCE_FIELDS`, a value the config refuses, or
            ``out_path`` naming ``base_path``.

    """
    unknown = sorted(set(settings) - set(INFERENCE_FIELDS))
    if unknown:
        raise ValueError(f'not inference settings: {unknown}')
    if Path(out_path).resolve() == Path(base_path).resolve():
        raise ValueError(f'{out_path} is the base: write the result elsewhere')
    base = load_checkpoint(base_path)
    config = TarFuseConfig.from_dict(dict(base.config.to_dict(), **settings))
    model = build_model(config).eval()
    model.load_state_dict(base.state_dict(), strict=True)
    provenance = dict(base.checkpoint_config.get('provenance', {}))
    earlier = provenance.get('after_training')
    said = ', '.join(f'model.{key} set to {json.dumps(value)}'
                     for key, value in sorted(settings.items()))
    provenance['after_training'] = (
        (f'{earlier}; then ' if earlier else '') + f'{said} after training (no learnt '
        f'parameter; weights those of sha256 {file_sha256(base_path)[:8]}...)')
    save_checkpoint(out_path, model, provenance,
                    input_conventions=base.checkpoint_config.get('input'))
    return config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('base', help='the checkpoint to start from (e.g. the shipped default)')
    parser.add_argument('out', help='the checkpoint to write')
    parser.add_argument('--set', dest='settings', action='append', default=[],
                        metavar='KEY=VALUE', help='an inference setting (repeatable)')
    args = parser.parse_args(argv)
    try:
        config = set_inference_fields(args.base, args.out, parse_settings(args.settings))
    except ValueError as error:
        sys.exit(f'set_inference_fields: {error}')
    changed = ', '.join(f'{key} {json.dumps(getattr(config, key))}'
                        for key in parse_settings(args.settings))
    print(f'wrote {args.out} ({changed}) sha256 {file_sha256(args.out)}')


if __name__ == '__main__':
    main()

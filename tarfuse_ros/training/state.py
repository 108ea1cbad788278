"""Resumable training state: safetensors for tensors, JSON for the rest, nothing pickled.

A state folder (``<out>/state``) holds ``model.safetensors`` (the model's state dict),
``state.safetensors`` (optimizer slots ``optimizer/<param index>/<name>`` and RNG states
``rng/...``), with ``train.ema`` ``ema.safetensors`` (the weight average's state dict,
:mod:`~tarfuse_ros.training.ema`), and ``state.json`` (epoch, step, config, model config,
optimizer param groups, non-tensor optimizer slots, NumPy / Python RNG scalars,
``ema_updates`` with a weight average, ``format_version`` 1). The folder is
replaced as a whole (:func:`tarfuse_ros.core.files.atomic_output`), so a crash while saving
leaves the previous state readable.
"""

import json
from pathlib import Path
import random

import numpy as np
from tarfuse_ros.core.files import atomic_output
import torch

__all__ = ['EMA_FILE', 'FORMAT_VERSION', 'RUN_META_KEYS', 'STATE_DIR', 'find_state_dir',
           'load_state', 'optimizer_from_flat', 'optimizer_to_flat', 'read_state_meta',
           'rng_from_flat', 'rng_to_flat', 'save_state']

STATE_DIR = 'state'
EMA_FILE = 'ema.safetensors'
FORMAT_VERSION = 1
# What the state.json of a tarfuse-train run holds besides 'epoch' (what resuming reads).
RUN_META_KEYS = ('global_step', 'config', 'model_config')


def _cpu_tensors(mapping):
    return {k: v.detach().to('cpu').clone().contiguous() for k, v in mapping.items()}


def optimizer_to_flat(optimizer):
    """Split an optimizer state dict into ``(tensors, json_meta)`` for safetensors + JSON."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in state['state'].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f'optimizer/{index}/{name}'] = value
            else:
                scalars[f'{index}/{name}'] = value
    groups = json.loads(json.dumps(state['param_groups'], default=list))
    return tensors, {'param_groups': groups, 'scalars': scalars}


def optimizer_from_flat(optimizer, tensors, meta):
    """Load what :func:`optimizer_to_flat` produced back into ``optimizer``."""
    slots = {}
    for key, value in tensors.items():
        if not key.startswith('optimizer/'):
            continue
        _, index, name = key.split('/', 2)
        slots.setdefault(int(index), {})[name] = value
    for key, value in meta.get('scalars', {}).items():
        index, name = key.split('/', 1)
        slots.setdefault(int(index), {})[name] = value
    groups = []
    for group, current in zip(_match_groups(meta['param_groups'], optimizer.param_groups),
                              optimizer.param_groups):
        group = dict(group)
        if isinstance(group.get('betas'), list):
            group['betas'] = tuple(group['betas'])
        # Implementation switches follow this run's device (a GPU state may resume on a CPU).
        for key in ('fused', 'foreach', 'capturable', 'differentiable'):
            if key in current:
                group[key] = current[key]
        groups.append(group)
    optimizer.load_state_dict({'state': slots, 'param_groups': groups})


def _match_groups(saved, current):
    """Return the saved param groups laid out as ``current``'s.

    A state written with one group (before per-part groups) is split into the current groups
    in parameter order, each keeping the current group's ``lr_mult`` / ``part``. Raises
    ``ValueError`` when the layouts cannot match (other parts frozen, another model).
    """
    sizes = [len(group['params']) for group in current]
    if len(saved) == len(current):
        if [len(group['params']) for group in saved] != sizes:
            raise ValueError('the saved optimizer state has other parameter groups than this '
                             'run (train.freeze or the model changed): resume with the saved '
                             'config, or start a new run with train.init_weights')
        return saved
    if len(saved) != 1 or len(saved[0]['params']) != sum(sizes):
        raise ValueError(f'the saved optimizer state has {len(saved)} parameter group(s) and '
                         f'this run {len(current)}: resume with the saved config, or start a '
                         'new run with train.init_weights')
    out, start = [], 0
    for size, group in zip(sizes, current):
        extra = {key: group[key] for key in ('lr_mult', 'part') if key in group}
        out.append(dict(saved[0], params=saved[0]['params'][start:start + size], **extra))
        start += size
    return out


def rng_to_flat():
    """Return ``(tensors, json_meta)`` holding the Python, NumPy and torch RNG states."""
    tensors = {'rng/torch_cpu': torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, value in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f'rng/torch_cuda_{i}'] = value
    np_state = np.random.get_state()
    tensors['rng/numpy_keys'] = torch.from_numpy(np_state[1].astype(np.int64))
    py_state = random.getstate()
    meta = {'numpy': [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            'python': [py_state[0], list(py_state[1]), py_state[2]]}
    return tensors, meta


def rng_from_flat(tensors, meta):
    """Restore the RNG states saved by :func:`rng_to_flat`."""
    if 'rng/torch_cpu' in tensors:
        torch.set_rng_state(tensors['rng/torch_cpu'])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith('rng/torch_cuda_')]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if 'rng/numpy_keys' in tensors and meta.get('numpy'):
        name, pos, has_gauss, cached = meta['numpy']
        keys = tensors['rng/numpy_keys'].numpy().astype(np.uint32)
        np.random.set_state((name, keys, pos, has_gauss, cached))
    if meta.get('python'):
        version, internal, gauss = meta['python']
        random.setstate((version, tuple(internal), gauss))


def save_state(state_dir, model, optimizer, meta, ema=None):
    """Write a resumable training state folder, replacing the previous one as a whole.

    Args:
        state_dir: the folder (``<out>/state``).
        model: the module whose ``state_dict`` is saved.
        optimizer: its optimizer.
        meta: JSON-ready mapping (epoch, global_step, config, ...); the optimizer groups, the
            RNG scalars and ``format_version`` are added.
        ema: the :func:`~tarfuse_ros.training.ema.weight_average`, or None.

    """
    from safetensors.torch import save_file
    with atomic_output(state_dir, folder=True) as folder:
        save_file(_cpu_tensors(model.state_dict()), str(folder / 'model.safetensors'))
        opt_tensors, opt_meta = optimizer_to_flat(optimizer)
        rng_tensors, rng_meta = rng_to_flat()
        save_file(_cpu_tensors({**opt_tensors, **rng_tensors}), str(folder / 'state.safetensors'))
        meta = dict(meta, optimizer=opt_meta, rng=rng_meta, format_version=FORMAT_VERSION)
        if ema is not None:
            save_file(_cpu_tensors(ema.state_dict()), str(folder / EMA_FILE))
            meta['ema_updates'] = int(ema.n_averaged)
        with open(folder / 'state.json', 'w', encoding='utf-8') as stream:
            json.dump(meta, stream, indent=1)


def find_state_dir(path):
    """Return the state folder for ``--resume PATH`` (the folder itself or ``PATH/state``).

    Raises:
        ValueError: neither holds ``state.json`` and ``model.safetensors``.

    """
    path = Path(path).expanduser()
    # A run killed while it saved, between moving its state aside and the new one into place
    # (:func:`~tarfuse_ros.core.files.atomic_output`), left the state as ``state.old`` only.
    for candidate in (path, path / STATE_DIR, path / f'{STATE_DIR}.old'):
        if (candidate / 'state.json').is_file() and (candidate / 'model.safetensors').is_file():
            return candidate.resolve()
    if not path.exists():
        raise ValueError(f'--resume {str(path)!r} does not exist: give the --out folder of a run')
    why = ''
    if (path / 'summary.json').is_file() or (path / 'tarfuse.safetensors').is_file():
        # A run that stopped inside its first epoch (or a --max-steps run) saved no state.
        why = ('; the run there saved none: it stopped before the end of its first epoch; '
               'start it again without --resume (another --out, or remove that folder)')
    raise ValueError(f'--resume {str(path)!r}: no training state found (expected state.json and '
                     f'model.safetensors in it or in its {STATE_DIR}/ folder){why}')


def read_state_meta(state_dir, required=()):
    """Return the JSON part of a training state.

    ``required``: keys it must hold (a run's state holds :data:`RUN_META_KEYS`).

    Raises:
        ValueError: ``state.json`` unreadable, not a JSON object, without a ``required`` key,
            or of a ``format_version`` other than the one this code reads.

    """
    path = Path(state_dir) / 'state.json'
    try:
        with open(path, encoding='utf-8') as stream:
            meta = json.load(stream)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f'{str(path)!r} cannot be read as a training state ({exc})') from None
    if not isinstance(meta, dict):
        raise ValueError(f'{str(path)!r} is not a training state (a JSON object is expected)')
    version = meta.get('format_version', FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ValueError(f'{str(state_dir)!r}: training state format_version {version!r}, this '
                         f'code reads {FORMAT_VERSION}')
    missing = [key for key in ('epoch', *required) if key not in meta]
    if missing:
        raise ValueError(f'{str(path)!r} is not a training state (no {missing[0]!r}): resume '
                         f'from the --out folder of a tarfuse-train run')
    return meta


def load_state(state_dir, model, optimizer, ema=None):
    """Load model weights, optimizer and RNG states from ``state_dir``; return its JSON meta.

    ``ema``: a :func:`~tarfuse_ros.training.ema.weight_average` that takes the saved average;
    left as it is when the state holds none (a run that had ``train.ema`` off).

    Raises:
        ValueError: a file of the state missing, unreadable or damaged, tensors that are not
            those of ``model``, or a ``state.json`` without what a run writes; one line naming
            the file.

    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    state_dir = Path(state_dir)
    meta = read_state_meta(state_dir)
    names = ['model.safetensors', 'state.safetensors']
    if ema is not None and (state_dir / EMA_FILE).is_file():
        names.append(EMA_FILE)
    loaded = {}
    for name in names:
        try:
            loaded[name] = load_file(str(state_dir / name))
        except (OSError, SafetensorError) as exc:
            raise ValueError(f'training state {str(state_dir)!r} cannot be read ({name}: '
                             f'{exc}); resume from an intact state or start again') from None
    _load_tensors(model, loaded['model.safetensors'], state_dir / 'model.safetensors')
    if EMA_FILE in loaded:
        _load_tensors(ema, loaded[EMA_FILE], state_dir / EMA_FILE)
    tensors = loaded['state.safetensors']
    if 'optimizer' not in meta:
        raise _damaged(state_dir / 'state.json', "no 'optimizer'")
    for key in ('epoch', 'global_step'):
        value = meta.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _damaged(state_dir / 'state.json', f'{key} {value!r} is not a count')
    try:
        optimizer_from_flat(optimizer, tensors, meta['optimizer'])
    except (KeyError, TypeError, IndexError, AttributeError, RuntimeError) as exc:
        raise _damaged(state_dir / 'state.safetensors', f'optimizer state: {exc!r}') from None
    try:
        rng_from_flat(tensors, meta.get('rng', {}))
    except (KeyError, TypeError, IndexError, AttributeError, RuntimeError, ValueError) as exc:
        raise _damaged(state_dir / 'state.json', f'random generator states: {exc!r}') from None
    return meta


def _damaged(path, why):
    """Return the ``ValueError`` of a damaged file ``path`` of a training state."""
    return ValueError(f'training state file {str(path)!r} is damaged ({why}); resume from an '
                      f'intact state or start again')


def _load_tensors(module, tensors, path):
    """Load ``tensors`` into ``module`` (strict), or raise ValueError naming what differs."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    shaped = sorted(key for key in set(expected) & set(tensors)
                    if tuple(expected[key].shape) != tuple(tensors[key].shape))
    if missing or extra or shaped:
        parts = [f'{len(keys)} {what} (e.g. {keys[0]!r})' for keys, what in (
            (missing, 'tensors missing'), (extra, 'unknown tensors'),
            (shaped, 'tensors of another shape')) if keys]
        raise ValueError(f'training state file {str(path)!r} does not hold the saved network '
                         f'of this run ({", ".join(parts)}): resume from the state this run '
                         f'wrote, or start a new run (--init takes weights of another network)')
    module.load_state_dict(tensors, strict=True)

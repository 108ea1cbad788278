"""Train TarFuse on paired IR/visible data: the ``tarfuse-train`` console script.

Each training sample is an aligned IR image, the visible Y channel and (where the data set has
them) boxes in the visible frame. Every step draws a fresh random rigid + elastic field per sample
on the device, deforms the aligned IR with it (``deformed = warp(ir, applied)``) and asks the
network for the inverse (``flow_gt``), so the boxes, which live in the visible frame, never move.

Outputs in ``--out``: ``log.jsonl`` (one JSON object per epoch: every loss part, lr, times,
validation figures), ``loss_curves.png``, ``state/`` (resumable: ``model.safetensors``,
``state.safetensors`` with the optimizer and RNG tensors, ``state.json``), and the final
``tarfuse.safetensors`` written by :func:`tarfuse_ros.core.checkpoint.save_checkpoint` with
provenance. Nothing is pickled.

Multi-GPU: ``torchrun --nproc_per_node N -m tarfuse_ros.tools.train --device cuda ...`` runs
DistributedDataParallel (one process per GPU, ``train.batch`` samples per GPU, rank 0 logs/saves).
"""

import argparse
import copy
from dataclasses import dataclass
import datetime
import json
import math
import os
from pathlib import Path
import random
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np
from tarfuse_ros.core.paths import config_path, shared_datasets_dir
import torch
import yaml

__all__ = ['build_parser', 'load_config', 'main', 'train']

_T0 = time.monotonic()
STATE_DIR = 'state'
FINAL_NAME = 'tarfuse.safetensors'
LOG_NAME = 'log.jsonl'
CURVE_NAME = 'loss_curves.png'
_PROBE_WARMUP_STEPS = 3
_PROBE_STEPS = 20


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
def load_config(path=None):
    """Read a training YAML file (default: the shipped ``config/train.yaml``) into a dict."""
    path = Path(path) if path is not None else config_path('train.yaml')
    if not path.is_file():
        raise ValueError(f'training config {str(path)!r} does not exist')
    with open(path, encoding='utf-8') as stream:
        cfg = yaml.safe_load(stream)
    if not isinstance(cfg, dict):
        raise ValueError(f'training config {str(path)!r} must hold a mapping, got {type(cfg)}')
    for section in ('data', 'deformation', 'model', 'loss', 'train'):
        cfg.setdefault(section, {})
        if cfg[section] is None:
            cfg[section] = {}
    return cfg


def set_by_path(cfg, dotted, value):
    """Set ``cfg['a']['b'] = value`` for ``dotted == 'a.b'`` (creating missing mappings)."""
    keys = dotted.split('.')
    if not all(keys):
        raise ValueError(f'bad config key {dotted!r}')
    node = cfg
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def parse_data_spec(spec):
    """Turn ``PATH[:SPLIT]`` (split defaults to ``train``) into a data entry dict."""
    path, sep, split = str(spec).partition(':')
    if not path or (sep and not split):
        raise ValueError(f'data spec must be PATH or PATH:SPLIT, got {spec!r}')
    return {'path': path, 'split': split or 'train'}


def build_parser():
    """Return the command-line parser of ``tarfuse-train``."""
    parser = argparse.ArgumentParser(
        prog='tarfuse-train',
        description='Train TarFuse (joint IR-visible registration, fusion and detection).')
    parser.add_argument('--config', default=None,
                        help='training YAML (default: the shipped config/train.yaml)')
    parser.add_argument('--data', action='append', default=None, metavar='PATH[:SPLIT]',
                        help='training data set folder and split (list-file name or path); '
                             'repeat for several; replaces data.train of the config')
    parser.add_argument('--val-data', action='append', default=None, metavar='PATH[:SPLIT]',
                        help='validation data set(s); replaces data.val ("none" to disable)')
    parser.add_argument('--epochs', type=int, default=None, help='number of epochs')
    parser.add_argument('--out', default=None, help='output folder (default: runs/<time>)')
    parser.add_argument('--device', default=None, help='cpu | cuda | cuda:N')
    parser.add_argument('--resume', default=None, metavar='DIR',
                        help='continue from a training state folder (or the --out of a run)')
    parser.add_argument('--init', default=None, metavar='WEIGHTS',
                        help='start from the weights of a .safetensors checkpoint (fine-tuning)')
    parser.add_argument('--seed', type=int, default=None, help='random seed')
    parser.add_argument('--max-steps', type=int, default=None,
                        help='stop after this many optimizer steps in this run (smoke tests)')
    parser.add_argument('--crop', type=int, default=None, help='square crop side (multiple of 32)')
    parser.add_argument('--batch', type=int, default=None, help='batch size per process')
    parser.add_argument('--workers', type=int, default=None, help='DataLoader workers')
    parser.add_argument('--val-every', type=int, default=None, help='validate every N epochs')
    parser.add_argument('--amp', action=argparse.BooleanOptionalAction, default=None,
                        help='bfloat16 autocast on CUDA')
    parser.add_argument('--time-budget', type=float, default=None, metavar='SECONDS',
                        help='fit the run into this wall time: after the first steps, lower '
                             'the epoch count so that training + validation + saving fit')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='override any config key, e.g. --set loss.det=0 (YAML value)')
    parser.add_argument('--ddp', action='store_true',
                        help='use DistributedDataParallel even with WORLD_SIZE=1 (testing)')
    return parser


def apply_cli(cfg, args):
    """Apply the command-line overrides to a config dict (in place) and return it."""
    for item in args.set:
        key, sep, value = item.partition('=')
        if not sep:
            raise ValueError(f'--set expects KEY=VALUE, got {item!r}')
        set_by_path(cfg, key.strip(), yaml.safe_load(value))
    if args.data:
        cfg['data']['train'] = [parse_data_spec(spec) for spec in args.data]
    if args.val_data:
        specs = [s for s in args.val_data if s.lower() != 'none']
        cfg['data']['val'] = [parse_data_spec(spec) for spec in specs]
    simple = {('train', 'epochs'): args.epochs, ('train', 'device'): args.device,
              ('train', 'seed'): args.seed, ('data', 'crop'): args.crop,
              ('train', 'batch'): args.batch, ('data', 'workers'): args.workers,
              ('train', 'val_every'): args.val_every, ('train', 'amp'): args.amp,
              ('train', 'time_budget_s'): args.time_budget,
              ('train', 'init_weights'): args.init}
    for (section, key), value in simple.items():
        if value is not None:
            cfg[section][key] = value
    if args.crop is not None and cfg['data'].get('val_crop'):
        cfg['data']['val_crop'] = args.crop
    return cfg


def validate_config(cfg):
    """Check the values the loop relies on; raise ``ValueError`` naming the bad key."""
    tcfg, dcfg = cfg['train'], cfg['data']
    for key in ('epochs', 'batch'):
        if int(tcfg.get(key, 0)) < 1:
            raise ValueError(f'train.{key} must be >= 1, got {tcfg.get(key)!r}')
    if float(tcfg.get('lr', 0)) <= 0:
        raise ValueError(f'train.lr must be > 0, got {tcfg.get("lr")!r}')
    crop = dcfg.get('crop')
    for key in ('crop', 'val_crop'):
        value = dcfg.get(key)
        if key == 'val_crop' and value == 0:
            continue  # whole frames
        if value is not None and (int(value) < 32 or int(value) % 32):
            raise ValueError(f'data.{key} must be a multiple of 32 (>= 32), got {value!r}')
    if crop is None:
        raise ValueError('data.crop must be set (a multiple of 32)')
    if not dcfg.get('train'):
        raise ValueError('data.train is empty: give at least one data set (--data PATH:SPLIT)')
    if tcfg.get('schedule', 'constant') not in ('constant', 'cosine'):
        raise ValueError(f'train.schedule must be constant or cosine, got {tcfg["schedule"]!r}')
    class_map = dcfg.get('class_map')
    if not isinstance(class_map, dict) or not class_map:
        raise ValueError(f'data.class_map must map class names to ids, got {class_map!r}')
    ids = sorted(set(class_map.values()))
    if ids != list(range(len(ids))):
        raise ValueError(f'data.class_map ids must be 0..K-1 without gaps, got {ids}')


# --------------------------------------------------------------------------------------------
# Devices and processes
# --------------------------------------------------------------------------------------------
@dataclass
class DistInfo:
    """Where this process sits in a (possibly single-process) run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    enabled: bool = False

    @property
    def is_main(self):
        return self.rank == 0


def resolve_device(name, local_rank=0):
    """Return the ``torch.device`` for ``cpu``, ``cuda`` or ``cuda:N`` (clear error if absent)."""
    name = str(name).strip().lower()
    if name == 'cpu':
        return torch.device('cpu')
    if name == 'cuda' or name.startswith('cuda:'):
        if not torch.cuda.is_available():
            raise ValueError(f'device {name!r} requested but CUDA is not available here '
                             '(use --device cpu)')
        index = local_rank if name == 'cuda' else int(name.split(':', 1)[1])
        if index >= torch.cuda.device_count():
            raise ValueError(f'device {name!r}: only {torch.cuda.device_count()} CUDA '
                             'device(s) visible')
        return torch.device('cuda', index)
    raise ValueError(f'device must be cpu, cuda or cuda:N, got {name!r}')


def setup_distributed(force=False):
    """Start the process group when run by torchrun with WORLD_SIZE > 1 (or when forced)."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world <= 1 and not force:
        return DistInfo()
    import torch.distributed as dist
    os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
    os.environ.setdefault('MASTER_PORT', '29531')
    os.environ.setdefault('RANK', '0')
    os.environ.setdefault('WORLD_SIZE', str(world))
    rank = int(os.environ['RANK'])
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    backend = 'nccl' if torch.cuda.is_available() and os.environ.get(
        'TARFUSE_DDP_BACKEND', 'nccl') == 'nccl' else 'gloo'
    if backend == 'nccl':
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, enabled=True)


def _barrier(dist_info):
    if dist_info.enabled:
        import torch.distributed as dist
        dist.barrier()


def _broadcast_int(value, dist_info, device):
    if not dist_info.enabled:
        return int(value)
    import torch.distributed as dist
    tensor = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


# --------------------------------------------------------------------------------------------
# Seeding
# --------------------------------------------------------------------------------------------
def epoch_seed(seed, epoch, rank=0):
    """Return the seed of one epoch on one rank (everything random is reseeded per epoch)."""
    return (int(seed) * 1_000_003 + int(epoch) * 10_007 + int(rank) * 101) % (2 ** 62)


def seed_everything(seed):
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _worker_init(worker_id):
    # torch seeds python/numpy/torch per worker from the loader generator; numpy's global state
    # is seeded again here so that datasets using np.random are reproducible on every torch.
    info = torch.utils.data.get_worker_info()
    np.random.seed(info.seed % (2 ** 32))
    random.seed(info.seed)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def resolve_dataset_dir(path, root=None):
    """Find a data set folder: absolute, relative to ``root``/cwd, or under the shared sets."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        found = candidate
    else:
        bases = [Path(root).expanduser()] if root else []
        bases.append(Path.cwd())
        shared = shared_datasets_dir()
        if shared is not None:
            bases.append(shared)
        found = next((b / candidate for b in bases if (b / candidate).is_dir()), None)
        if found is None:
            raise ValueError(f'data set {str(path)!r} not found (looked in '
                             f'{[str(b) for b in bases]}); set data.root or TARFUSE_SHARED')
    if not found.is_dir():
        raise ValueError(f'data set folder {str(found)!r} does not exist')
    return found.resolve()


def resolve_entries(entries, root=None):
    """Resolve config data entries into dicts with the folder, the stems and the label folder."""
    from tarfuse_ros.core.data import read_split
    resolved = []
    for entry in entries or []:
        if isinstance(entry, str):
            entry = parse_data_spec(entry)
        if not isinstance(entry, dict) or 'path' not in entry:
            raise ValueError(f'data entry {entry!r} must be a mapping with a path')
        unknown = sorted(set(entry) - {'path', 'split', 'exclude', 'labels'})
        if unknown:
            raise ValueError(f'data entry {entry!r}: unknown keys {unknown} '
                             '(allowed: path, split, exclude, labels)')
        folder = resolve_dataset_dir(entry['path'], root)
        split = str(entry.get('split', 'train'))
        split_path = Path(split).expanduser()
        if not split_path.is_absolute() and (Path.cwd() / split_path).is_file():
            split = str((Path.cwd() / split_path).resolve())
        stems = list(read_split(folder, split))
        excluded = set()
        for other in entry.get('exclude') or []:
            excluded.update(read_split(folder, other))
        stems = [s for s in stems if s not in excluded]
        if not stems:
            raise ValueError(f'data entry {entry!r}: no pairs left in {str(folder)!r}')
        # A label folder inside the data set, else one relative to the working directory
        # (e.g. pseudo-labels kept in this repository for a shared data set).
        labels = Path(str(entry.get('labels') or 'labels')).expanduser()
        if (not labels.is_absolute() and not (folder / labels).is_dir()
                and (Path.cwd() / labels).is_dir()):
            labels = (Path.cwd() / labels).resolve()
        resolved.append({'dir': folder, 'stems': stems, 'name': folder.name, 'split': split,
                         'exclude': list(entry.get('exclude') or []), 'labels': str(labels)})
    return resolved


def split_paths(resolved, folder):
    """Return the list-file paths :func:`write_split_files` uses for ``resolved`` entries."""
    return [(Path(folder) / f'{i:02d}_{e["name"]}_{Path(e["split"]).stem}.txt').resolve()
            for i, e in enumerate(resolved)]


def write_split_files(resolved, folder):
    """Write each entry's final stem list to ``folder`` (provenance + the data set's input)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    paths = split_paths(resolved, folder)
    for entry, path in zip(resolved, paths):
        path.write_text('\n'.join(entry['stems']) + '\n')
    return paths


def build_dataset(resolved, split_files, cfg, training, seed=0):
    """Create the ``PairedDataset`` (random crops/flips when training, centre crops otherwise)."""
    from tarfuse_ros.core.data import PairedDataset
    dcfg = cfg['data']
    crop = dcfg['crop'] if training else dcfg.get('val_crop', dcfg['crop'])
    if crop is None:
        crop = dcfg['crop']
    sources = [{'path': str(r['dir']), 'split': str(f), 'labels': r['labels']}
               for r, f in zip(resolved, split_files)]
    # val_crop 0: whole frames (validated one pair at a time, see Trainer._loader).
    return PairedDataset(
        sources, class_map=dict(dcfg['class_map']), crop_size=int(crop) or None,
        augment=training,
        hflip_prob=float(dcfg.get('hflip', 0.5)), vflip_prob=float(dcfg.get('vflip', 0.0)),
        seed=seed)


def count_labelled(resolved):
    """Return how many of the resolved pairs have a label file."""
    return sum(1 for r in resolved for s in r['stems']
               if (Path(r['dir']) / r['labels'] / f'{s}.txt').is_file())


def to_device(batch, device):
    """Move every tensor of a collated batch to ``device`` (non-blocking)."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v)
            for k, v in batch.items()}


# --------------------------------------------------------------------------------------------
# Training state (resumable, safetensors + JSON, no pickle)
# --------------------------------------------------------------------------------------------
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
    for group, current in zip(meta['param_groups'], optimizer.param_groups):
        group = dict(group)
        if isinstance(group.get('betas'), list):
            group['betas'] = tuple(group['betas'])
        # Implementation switches follow this run's device (a GPU state may resume on a CPU).
        for key in ('fused', 'foreach', 'capturable', 'differentiable'):
            if key in current:
                group[key] = current[key]
        groups.append(group)
    optimizer.load_state_dict({'state': slots, 'param_groups': groups})


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


def save_state(state_dir, model, optimizer, meta):
    """Write a resumable training state folder atomically.

    Files: ``model.safetensors`` (model state dict), ``state.safetensors`` (optimizer and RNG
    tensors), ``state.json`` (epoch, step, config, optimizer param groups, RNG scalars, ...).
    """
    from safetensors.torch import save_file
    state_dir = Path(state_dir)
    tmp = state_dir.with_name(state_dir.name + '.tmp')
    old = state_dir.with_name(state_dir.name + '.old')
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_cpu_tensors(model.state_dict()), str(tmp / 'model.safetensors'))
    opt_tensors, opt_meta = optimizer_to_flat(optimizer)
    rng_tensors, rng_meta = rng_to_flat()
    save_file(_cpu_tensors({**opt_tensors, **rng_tensors}), str(tmp / 'state.safetensors'))
    meta = dict(meta, optimizer=opt_meta, rng=rng_meta, format_version=1)
    with open(tmp / 'state.json', 'w', encoding='utf-8') as stream:
        json.dump(meta, stream, indent=1)
    shutil.rmtree(old, ignore_errors=True)
    if state_dir.exists():
        state_dir.rename(old)
    tmp.rename(state_dir)
    shutil.rmtree(old, ignore_errors=True)


def find_state_dir(path):
    """Return the state folder for ``--resume PATH`` (the folder itself or ``PATH/state``)."""
    path = Path(path).expanduser()
    for candidate in (path, path / STATE_DIR):
        if (candidate / 'state.json').is_file() and (candidate / 'model.safetensors').is_file():
            return candidate.resolve()
    raise ValueError(f'--resume {str(path)!r}: no training state found (expected state.json and '
                     f'model.safetensors in it or in its {STATE_DIR}/ folder)')


def read_state_meta(state_dir):
    """Return the JSON part of a training state."""
    with open(Path(state_dir) / 'state.json', encoding='utf-8') as stream:
        return json.load(stream)


def load_state(state_dir, model, optimizer):
    """Load model weights, optimizer and RNG states from ``state_dir``; return its JSON meta."""
    from safetensors.torch import load_file
    state_dir = Path(state_dir)
    meta = read_state_meta(state_dir)
    model.load_state_dict(load_file(str(state_dir / 'model.safetensors')), strict=True)
    tensors = load_file(str(state_dir / 'state.safetensors'))
    optimizer_from_flat(optimizer, tensors, meta['optimizer'])
    rng_from_flat(tensors, meta.get('rng', {}))
    return meta


# --------------------------------------------------------------------------------------------
# Logs and curves
# --------------------------------------------------------------------------------------------
def read_log(path):
    """Return the list of epoch records of a ``log.jsonl``."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, encoding='utf-8') as stream:
        return [json.loads(line) for line in stream if line.strip()]


def truncate_log(path, last_epoch):
    """Drop records after ``last_epoch`` (a resumed run rewrites them)."""
    records = [r for r in read_log(path) if r.get('epoch', 0) <= last_epoch]
    with open(path, 'w', encoding='utf-8') as stream:
        for record in records:
            stream.write(json.dumps(record) + '\n')


def plot_curves(log_path, png_path):
    """Draw the loss curves of ``log.jsonl`` to a PNG (matplotlib Agg, else OpenCV)."""
    records = read_log(log_path)
    if not records:
        return None
    parts = [k for k in records[-1].get('train', {}) if k != 'total']
    keys = ['total'] + parts
    has_epe = any('epe' in (r.get('val') or {}) for r in records)
    try:
        import matplotlib
        matplotlib.use('Agg')
        from matplotlib import pyplot as plt
    except ImportError:
        return _plot_curves_cv2(records, keys, png_path)
    cols = 3
    rows = math.ceil((len(keys) + has_epe) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        xs = [r['epoch'] for r in records if key in r.get('train', {})]
        ys = [r['train'][key] for r in records if key in r.get('train', {})]
        ax.plot(xs, ys, label='train')
        vx = [r['epoch'] for r in records if key in (r.get('val') or {})]
        vy = [r['val'][key] for r in records if key in (r.get('val') or {})]
        if vx:
            ax.plot(vx, vy, 'o-', label='val')
        ax.set_title(key)
        ax.set_xlabel('epoch')
        if ys and min(ys) > 0 and max(ys) / max(min(ys), 1e-12) > 20:
            ax.set_yscale('log')
        ax.legend(fontsize=7)
    if has_epe:
        ax = axes.flat[len(keys)]
        val = [r for r in records if 'epe' in (r.get('val') or {})]
        ax.plot([r['epoch'] for r in val], [r['val']['epe'] for r in val], 'o-',
                label='val EPE (px)')
        ax.plot([r['epoch'] for r in val], [r['val']['epe_zero_flow'] for r in val], '--',
                label='zero flow')
        ax.set_title('registration EPE')
        ax.set_xlabel('epoch')
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys) + has_epe:]:
        ax.axis('off')
    fig.tight_layout()
    fig.savefig(str(png_path), dpi=80)
    plt.close(fig)
    return Path(png_path)


def _plot_curves_cv2(records, keys, png_path):
    import cv2
    width, height, pad = 640, 360, 40
    canvas = np.full((height, width, 3), 255, np.uint8)
    colours = [(200, 0, 0), (0, 150, 0), (0, 0, 200), (150, 0, 150), (0, 150, 150),
               (120, 120, 0), (60, 60, 60), (0, 90, 255)]
    epochs = [r['epoch'] for r in records]
    e0, e1 = min(epochs), max(max(epochs), min(epochs) + 1)
    for i, key in enumerate(keys):
        ys = np.array([r.get('train', {}).get(key, np.nan) for r in records], float)
        if not np.isfinite(ys).any():
            continue
        lo, hi = np.nanmin(ys), np.nanmax(ys)
        span = hi - lo if hi > lo else 1.0
        pts = [(int(pad + (e - e0) / (e1 - e0) * (width - 2 * pad)),
                int(height - pad - (y - lo) / span * (height - 2 * pad)))
               for e, y in zip(epochs, ys) if np.isfinite(y)]
        colour = colours[i % len(colours)]
        cv2.polylines(canvas, [np.array(pts, np.int32)], False, colour, 2)
        cv2.putText(canvas, f'{key} ({lo:.3g}..{hi:.3g})', (pad, 15 + 14 * i),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1)
    cv2.imwrite(str(png_path), canvas)
    return Path(png_path)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
def lr_factor(step, total_steps, warmup_steps, schedule, min_ratio):
    """Return the learning-rate multiplier at optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == 'constant':
        return 1.0
    span = max(total_steps - warmup_steps, 1)
    progress = min(max((step - warmup_steps) / span, 0.0), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def fit_epochs(budget_s, elapsed_s, epochs_done, epoch_seconds, configured, minimum):
    """Return the epoch count that fits a wall-time budget.

    What is left of ``budget_s`` after ``elapsed_s`` and a reserve for the final save
    (10 s + 5 % of the budget) is filled with epochs of ``epoch_seconds``, counted on top of
    ``epochs_done``; the result is clamped to ``[minimum, configured]``.
    """
    room = budget_s - elapsed_s - (10.0 + 0.05 * budget_s)
    fit = int(epochs_done) + max(int(room // max(float(epoch_seconds), 1e-6)), 0)
    return max(min(int(configured), fit), int(minimum))


def git_commit(cwd=None):
    """Return ``(commit, dirty)`` of the checkout holding this file, or ``(None, None)``."""
    cwd = cwd or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=cwd, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                                cwd=cwd, capture_output=True, text=True, timeout=10).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def _deform_config(cfg):
    from tarfuse_ros.core.deform import DeformConfig
    return DeformConfig.from_dict(cfg.get('deformation') or {})


def _loss_weights(cfg):
    from tarfuse_ros.core.losses import LossWeights
    return LossWeights.from_dict(cfg.get('loss') or {})


def build_model_from_config(cfg, model_dict=None):
    """Build the network from ``cfg['model']`` overrides (or a saved ``to_dict()``)."""
    from tarfuse_ros.core.model.tarfuse import build_model, TarFuseConfig
    if model_dict is None:
        from tarfuse_ros.core.data import class_names_from_map
        names = tuple(class_names_from_map(
            {str(k).lower(): int(v) for k, v in cfg['data']['class_map'].items()}))
        model_dict = dict(TarFuseConfig().to_dict())
        overrides = dict(cfg.get('model') or {})
        unknown = sorted(set(overrides) - set(model_dict))
        if unknown:
            raise ValueError(f'model: unknown keys {unknown}; TarFuseConfig has '
                             f'{sorted(model_dict)}')
        model_dict.update(overrides)
        model_dict['class_names'] = names
        model_dict['num_classes'] = len(names)
    return build_model(TarFuseConfig.from_dict(model_dict))


class _EpochSampler(torch.utils.data.Sampler):
    """Yield ``(epoch, index)`` from a base sampler, reseeded per epoch.

    The data set draws its crops/flips from ``(seed, epoch, index)``; passing the epoch with
    each index keeps that exact with persistent DataLoader workers (whose copy of the data set
    never sees ``set_epoch`` of the main process).
    """

    def __init__(self, base):
        self.base = base
        self.epoch = 0

    def set_epoch(self, epoch, seed):
        self.epoch = int(epoch)
        if hasattr(self.base, 'set_epoch'):
            self.base.set_epoch(epoch)
        if getattr(self.base, 'generator', None) is not None:
            self.base.generator.manual_seed(seed)

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, index) for index in self.base)

    def __len__(self):
        return len(self.base)


class _EpochIndexed(torch.utils.data.Dataset):
    """Data set view indexed by ``(epoch, index)`` (see :class:`_EpochSampler`)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        if self.dataset.epoch != epoch:
            self.dataset.set_epoch(epoch)
        sample = self.dataset[index]
        sample['epoch'] = epoch
        return sample


def batch_generator(seed, epoch, indices):
    """Return the CPU generator of one batch's deformations, seeded by (seed, epoch, indices).

    Seeding per batch makes the fields independent of where they are drawn (main process or
    a DataLoader worker) and of the number of workers.
    """
    state = np.random.SeedSequence([int(seed), int(epoch), *[int(i) for i in indices]])
    generator = torch.Generator()
    generator.manual_seed(int(state.generate_state(1, np.uint64)[0]) % (2 ** 63))
    return generator


class DeformingCollate:
    """``collate_pairs`` that can also draw the batch's deformation (in the loader worker).

    With ``in_workers`` true (CPU training with workers) the fields are computed on the CPU in
    the worker, in parallel with the training step, and travel in the batch as
    ``deform_applied`` / ``flow_gt``; otherwise the trainer draws the same fields on its device.
    """

    def __init__(self, deform_cfg, seed, in_workers):
        self.deform_cfg = deform_cfg
        self.seed = int(seed)
        self.in_workers = bool(in_workers)

    def __call__(self, samples):
        from tarfuse_ros.core.data import collate_pairs
        from tarfuse_ros.core.deform import random_deformation
        batch = collate_pairs(samples)
        batch['epoch'] = int(samples[0].get('epoch', 0))
        if self.in_workers:
            size, _, height, width = batch['ir'].shape
            generator = batch_generator(self.seed, batch['epoch'], batch['index'])
            batch['deform_applied'], batch['flow_gt'] = random_deformation(
                size, height, width, self.deform_cfg, generator=generator)
        return batch


class _Accumulator:
    """Sum detached loss parts on the device; read them once per epoch (one sync)."""

    def __init__(self):
        self.sums = {}
        self.count = 0

    def add(self, parts):
        for key, value in parts.items():
            value = value.detach().float() if torch.is_tensor(value) else torch.tensor(value)
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        self.count += 1

    def means(self):
        return {k: float(v.item()) / max(self.count, 1) for k, v in self.sums.items()}


def _autocast(device, enabled):
    if enabled and device.type == 'cuda':
        return torch.autocast('cuda', dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def _deform_batch(ir, deform_cfg, generator, batch=None):
    """Return ``(warp(ir, applied), inverse)``, using fields already drawn by the loader."""
    from tarfuse_ros.core.deform import random_deformation
    from tarfuse_ros.core.model.warp import warp
    if batch is not None and 'flow_gt' in batch:
        return warp(ir, batch['deform_applied']), batch['flow_gt']
    size, _, height, width = ir.shape
    applied, inverse = random_deformation(size, height, width, deform_cfg,
                                          generator=generator, device=ir.device)
    return warp(ir, applied), inverse


def _loss_batch(batch, flow_gt):
    keys = ('vi', 'batch_idx', 'cls', 'bboxes', 'has_labels')
    out = {k: batch[k] for k in keys if k in batch}
    out['ir_aligned'] = batch['ir']
    out['flow_gt'] = flow_gt
    return out


@torch.no_grad()
def validate(model, criterion, loader, deform_cfg, device, seed, amp=False):
    """Return mean validation figures: loss parts, EPE of the flow and of zero flow (px).

    The deformations are drawn from a fixed seed so every validation sees the same ones.
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator()  # deform draws on the CPU whatever the device
    generator.manual_seed(epoch_seed(seed, 0, 10_000))
    acc = _Accumulator()
    for batch in loader:
        batch = to_device(batch, device)
        height, width = batch['ir'].shape[2:]
        if height % 32 or width % 32:
            raise ValueError(
                f'validation frame {batch["stem"][0]} is {width}x{height}: whole-frame '
                'validation (data.val_crop 0) needs sizes that are multiples of 32; use a '
                'val_crop instead or other validation sets')
        deformed, flow_gt = _deform_batch(batch['ir'], deform_cfg, generator)
        with _autocast(device, amp):
            outputs = model(deformed, batch['vi'], ir_aligned=batch['ir'])
            _, parts = criterion(outputs, _loss_batch(batch, flow_gt))
        flow = outputs['flow'].float()
        parts = dict(parts)
        parts['epe'] = torch.linalg.vector_norm(flow - flow_gt, dim=1).mean()
        parts['epe_zero_flow'] = torch.linalg.vector_norm(flow_gt, dim=1).mean()
        acc.add(parts)
    model.train(was_training)
    means = acc.means()
    if means.get('epe_zero_flow'):
        means['epe_reduction'] = 1.0 - means['epe'] / means['epe_zero_flow']
    return means


class Trainer:
    """One training run: data, model, optimizer, the epoch loop and its outputs."""

    def __init__(self, cfg, out_dir, dist_info, argv, max_steps=None, resume=None, t0=None):
        self.t0 = time.monotonic() if t0 is None else t0
        self.cfg = cfg
        self.out = Path(out_dir)
        self.dist = dist_info
        self.argv = list(argv)
        self.max_steps = max_steps
        tcfg = cfg['train']
        self.device = resolve_device(tcfg.get('device', 'cpu'), dist_info.local_rank)
        # Also on CUDA runs: the main process draws deformations and collates on the CPU,
        # and several runs sharing one machine should not oversubscribe its cores.
        if int(tcfg.get('threads') or 0) > 0:
            torch.set_num_threads(int(tcfg['threads']))
        if tcfg.get('deterministic'):
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.seed = int(tcfg.get('seed', 0))
        self.amp = bool(tcfg.get('amp')) and self.device.type == 'cuda'
        seed_everything(epoch_seed(self.seed, 0, dist_info.rank))

        root = cfg['data'].get('root')
        self.train_entries = resolve_entries(cfg['data']['train'], root)
        self.val_entries = resolve_entries(cfg['data'].get('val') or [], root)
        splits = Path(out_dir) / 'splits'
        if dist_info.is_main:
            write_split_files(self.train_entries, splits / 'train')
            write_split_files(self.val_entries, splits / 'val')
        _barrier(dist_info)
        self.train_set = build_dataset(self.train_entries,
                                       split_paths(self.train_entries, splits / 'train'),
                                       cfg, training=True, seed=self.seed)
        self.val_set = build_dataset(self.val_entries,
                                     split_paths(self.val_entries, splits / 'val'),
                                     cfg, training=False, seed=self.seed) \
            if self.val_entries else None
        self.deform_cfg = _deform_config(cfg)

        resume_meta = read_state_meta(resume) if resume else None
        model_dict = resume_meta['model_config'] if resume_meta else None
        init_model = None
        if tcfg.get('init_weights') and not resume:
            # Start from a checkpoint's weights (and its architecture), with a fresh optimizer.
            from tarfuse_ros.core.checkpoint import load_checkpoint
            init_model = load_checkpoint(tcfg['init_weights'])
            model_dict = init_model.config.to_dict()
        self.model = build_model_from_config(cfg, model_dict).to(self.device)
        if init_model is not None:
            self.model.load_state_dict(init_model.state_dict())
        from tarfuse_ros.core.losses import TarFuseLoss
        self.criterion = TarFuseLoss(self.model, _loss_weights(cfg)).to(self.device)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=float(tcfg['lr']),
            betas=tuple(tcfg.get('betas', (0.9, 0.999))),
            weight_decay=float(tcfg.get('weight_decay', 0.0)),
            fused=True if self.device.type == 'cuda' else None)
        self.start_epoch = 0
        self.global_step = 0
        self.train_seconds = 0.0
        self.skipped_steps = 0
        self.started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
        if resume:
            meta = load_state(resume, self.model, self.optimizer)
            self.start_epoch = int(meta['epoch'])
            self.global_step = int(meta['global_step'])
            self.train_seconds = float(meta.get('train_seconds', 0.0))
            self.skipped_steps = int(meta.get('skipped_steps', 0))
            self.started = meta.get('started', self.started)
        self.epochs = int(tcfg['epochs'])
        self.net = self.model
        if dist_info.enabled:
            from torch.nn.parallel import DistributedDataParallel
            if tcfg.get('sync_bn', True) and dist_info.world_size > 1:
                self.net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
            # A loss switched off (weight 0) leaves its parameters without gradients.
            weights = _loss_weights(cfg)
            unused = bool(tcfg.get('find_unused_parameters', False)) or weights.det == 0
            self.net = DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == 'cuda' else None,
                find_unused_parameters=unused)
        self.train_loader, self.sampler = self._loader(self.train_set, training=True)
        self.val_loader = self._loader(self.val_set, training=False)[0] \
            if self.val_set is not None and dist_info.is_main else None
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f'no training batches: {len(self.train_set)} pairs, batch '
                             f'{tcfg["batch"]} x {dist_info.world_size} process(es)')
        self.loader_generator_seed = None

    def _loader(self, dataset, training):
        from tarfuse_ros.core.data import collate_pairs
        tcfg, dcfg = self.cfg['train'], self.cfg['data']
        batch = int(tcfg['batch'])
        workers = int(dcfg.get('workers', 0))
        if not training:
            if dataset.crop_size is None:
                batch = 1  # whole frames of several sizes
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=batch, shuffle=False, num_workers=min(workers, 2),
                collate_fn=collate_pairs, pin_memory=self.device.type == 'cuda')
            return loader, None
        generator = torch.Generator()
        generator.manual_seed(self.seed)
        if self.dist.enabled:
            from torch.utils.data.distributed import DistributedSampler
            base = DistributedSampler(dataset, num_replicas=self.dist.world_size,
                                      rank=self.dist.rank, shuffle=True, seed=self.seed,
                                      drop_last=True)
        else:
            # Its own generator: the loader draws worker seeds from `generator` at every
            # (non-persistent) iterator start, which must not shift the sample order.
            order = torch.Generator()
            order.manual_seed(self.seed)
            base = torch.utils.data.RandomSampler(dataset, generator=order)
        sampler = _EpochSampler(base)
        drop_last = len(dataset) >= batch * self.dist.world_size
        in_workers = tcfg.get('deform_in_workers', 'auto')
        if in_workers == 'auto':
            in_workers = self.device.type == 'cpu' and workers > 0
        collate = DeformingCollate(self.deform_cfg, self.seed, in_workers)
        # Persistent workers: the epoch travels with each index (see _EpochSampler), so the
        # workers need not be restarted every epoch to see it.
        loader = torch.utils.data.DataLoader(
            _EpochIndexed(dataset), batch_size=batch, sampler=sampler, num_workers=workers,
            collate_fn=collate, drop_last=drop_last,
            pin_memory=self.device.type == 'cuda', generator=generator,
            worker_init_fn=_worker_init if workers > 0 else None,
            persistent_workers=workers > 0)
        return loader, sampler

    # ----------------------------------------------------------------------------------------
    def _total_steps(self):
        return self.epochs * self.steps_per_epoch

    def _set_lr(self):
        tcfg = self.cfg['train']
        factor = lr_factor(self.global_step, self._total_steps(),
                           int(float(tcfg.get('warmup_epochs', 0)) * self.steps_per_epoch),
                           tcfg.get('schedule', 'constant'), float(tcfg.get('min_lr_ratio', 0.0)))
        lr = float(tcfg['lr']) * factor
        for group in self.optimizer.param_groups:
            group['lr'] = lr
        return lr

    def _reseed_epoch(self, epoch):
        seed = epoch_seed(self.seed, epoch, self.dist.rank)
        seed_everything(seed)
        self.train_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch, seed)
        return seed

    def _fit_time_budget(self, epoch, steps_in_epoch, step_seconds):
        """Choose the epoch count from the measured step time (rank 0 decides)."""
        budget = float(self.cfg['train'].get('time_budget_s') or 0)
        if budget <= 0:
            return
        tcfg = self.cfg['train']
        val_every = int(tcfg.get('val_every') or 0)
        val_steps = len(self.val_loader) if self.val_loader is not None else 0
        val_cost = (0.5 * step_seconds * val_steps + 1.0) / val_every if val_every else 0.0
        per_epoch = step_seconds * self.steps_per_epoch * 1.03 + 0.15 + val_cost
        left_in_epoch = (self.steps_per_epoch - steps_in_epoch) * step_seconds
        elapsed_at_epoch_end = time.monotonic() - self.t0 + left_in_epoch
        chosen = fit_epochs(budget, elapsed_at_epoch_end, epoch + 1, per_epoch,
                            int(tcfg['epochs']), minimum=epoch + 1)
        chosen = _broadcast_int(chosen, self.dist, self.device)
        if chosen != self.epochs and self.dist.is_main:
            print(f'[tarfuse-train] time budget {budget:.0f} s: step {1000 * step_seconds:.1f} '
                  f'ms, {self.steps_per_epoch} steps/epoch -> {chosen} epochs '
                  f'(config: {tcfg["epochs"]})', flush=True)
        self.epochs = chosen
        self.budget_info.update(step_ms=round(1000 * step_seconds, 2), epochs_chosen=chosen)

    def _recheck_budget(self, epochs_done, loop_seconds):
        """Re-plan after each epoch from the measured epoch wall times (validation included)."""
        budget = float(self.cfg['train'].get('time_budget_s') or 0)
        if budget <= 0:
            return
        self.epoch_walls.append(loop_seconds)
        # The first epoch of a run carries start-up costs; leave it out once others exist.
        walls = self.epoch_walls[1:] or self.epoch_walls
        mean = sum(walls) / len(walls)
        fit = fit_epochs(budget, time.monotonic() - self.t0, epochs_done, mean,
                         int(self.cfg['train']['epochs']), minimum=epochs_done)
        chosen = self.epochs
        if fit < self.epochs:
            chosen = fit
        elif fit >= 1.1 * self.epochs and (self.budget_fitted or len(self.epoch_walls) >= 2):
            chosen = fit
        chosen = _broadcast_int(chosen, self.dist, self.device)
        if chosen != self.epochs and self.dist.is_main:
            print(f'[tarfuse-train] time budget: epochs {self.epochs} -> {chosen} '
                  f'({mean:.2f} s per epoch)', flush=True)
            self.budget_info['epochs_chosen'] = chosen
        self.epochs = chosen

    def train_one_epoch(self, epoch, progress):
        """Run one epoch; return ``(mean parts, lr, stopped_early)``."""
        from tqdm import tqdm
        self.net.train()
        self._reseed_epoch(epoch)
        acc = _Accumulator()
        grad_clip = float(self.cfg['train'].get('grad_clip') or 0.0)
        params = [p for p in self.model.parameters() if p.requires_grad]
        bar = tqdm(self.train_loader, desc=f'epoch {epoch + 1}/{self.epochs}', leave=False,
                   disable=not progress, dynamic_ncols=True,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0)
        lr, stopped = 0.0, False
        for index, batch in enumerate(bar):
            batch = to_device(batch, self.device)
            lr = self._set_lr()
            generator = batch_generator(self.seed, epoch, batch['index'])
            deformed, flow_gt = _deform_batch(batch['ir'], self.deform_cfg, generator, batch)
            with _autocast(self.device, self.amp):
                outputs = self.net(deformed, batch['vi'], ir_aligned=batch['ir'])
                total, parts = self.criterion(outputs, _loss_batch(batch, flow_gt))
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            norm = torch.nn.utils.clip_grad_norm_(
                params, grad_clip if grad_clip > 0 else float('inf'))
            # A non-finite gradient skips the update on every rank alike (grads are reduced).
            if torch.isfinite(norm):
                self.optimizer.step()
            else:
                self.skipped_steps += 1
            parts = dict(parts)
            parts['total'] = total.detach()
            acc.add(parts)
            self.global_step += 1
            if progress and index % 10 == 0:
                bar.set_postfix(loss=f'{float(total.detach()):.4f}', lr=f'{lr:.2e}', refresh=False)
            if self.global_step - self.run_start_step == _PROBE_WARMUP_STEPS:
                if self.device.type == 'cuda':
                    torch.cuda.synchronize(self.device)
                self.probe_start = time.monotonic()
            if (self.probe_start is not None and not self.budget_fitted
                    and self.global_step - self.run_start_step
                    == _PROBE_WARMUP_STEPS + _PROBE_STEPS):
                if self.device.type == 'cuda':
                    torch.cuda.synchronize(self.device)
                # Whole measured epochs (the re-plan after each epoch) are the better figure
                # once there are two of them.
                if len(self.epoch_walls) < 2:
                    self._fit_time_budget(epoch, index + 1,
                                          (time.monotonic() - self.probe_start) / _PROBE_STEPS)
                self.budget_fitted = True
                bar.set_description(f'epoch {epoch + 1}/{self.epochs}')
            if self.max_steps is not None and \
                    self.global_step - self.run_start_step >= self.max_steps:
                stopped = True
                break
        bar.close()
        return acc.means(), lr, stopped

    def _provenance(self, epochs_done, finished):
        commit, dirty = git_commit()
        device = str(self.device)
        if self.device.type == 'cuda':
            device += f' ({torch.cuda.get_device_name(self.device)})'
        data = [{'path': str(e['dir']), 'name': e['name'], 'split': e['split'],
                 'exclude': e['exclude'], 'pairs': len(e['stems']), 'labels_dir': e['labels']}
                for e in self.train_entries]
        labelled = count_labelled(self.train_entries)
        return {
            'command': ' '.join(shlex.quote(a) for a in ['tarfuse-train'] + self.argv),
            'commit': commit, 'dirty_worktree': dirty, 'data': data,
            'labelled_pairs': labelled, 'class_map': self.cfg['data']['class_map'],
            'val_data': [{'name': e['name'], 'split': e['split'], 'pairs': len(e['stems'])}
                         for e in self.val_entries],
            'epochs': epochs_done, 'epochs_planned': self.epochs, 'steps': self.global_step,
            'finished': finished, 'device': device, 'world_size': self.dist.world_size,
            'amp_bf16': self.amp, 'seed': self.seed, 'torch': torch.__version__,
            'started': self.started,
            'saved': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
            'train_seconds': round(self.train_seconds, 1),
            'config': {k: self.cfg[k] for k in ('data', 'deformation', 'loss', 'train')},
        }

    def _save_state(self, epoch):
        meta = {'epoch': epoch, 'global_step': self.global_step,
                'epochs_planned': self.epochs, 'train_seconds': self.train_seconds,
                'skipped_steps': self.skipped_steps, 'started': self.started,
                'seed': self.seed, 'config': self.cfg,
                'model_config': self.model.config.to_dict(),
                'rng_note': 'every epoch reseeds Python/NumPy/torch/loader/deformations from '
                            '(seed, epoch, rank); the saved RNG states are restored as well'}
        save_state(self.out / STATE_DIR, self.model, self.optimizer, meta)

    def run(self):
        """Train from ``start_epoch`` to the planned epoch count; return the summary dict."""
        from tarfuse_ros.core.checkpoint import save_checkpoint
        tcfg = self.cfg['train']
        is_main = self.dist.is_main
        log_path = self.out / LOG_NAME
        if is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            truncate_log(log_path, self.start_epoch)
            with open(self.out / 'config.yaml', 'w', encoding='utf-8') as stream:
                yaml.safe_dump(self.cfg, stream, sort_keys=False)
            print(f'[tarfuse-train] {len(self.train_set)} training pairs '
                  f'({count_labelled(self.train_entries)} labelled), '
                  f'{len(self.val_set) if self.val_set is not None else 0} validation pairs, '
                  f'{sum(p.numel() for p in self.model.parameters()) / 1e6:.3f} M params, '
                  f'device {self.device}, {self.steps_per_epoch} steps/epoch, '
                  f'epochs {self.start_epoch + 1}..{self.epochs}', flush=True)
        self.run_start_step = self.global_step
        self.budget_fitted = False
        self.probe_start = None
        self.epoch_walls = []
        budget = float(tcfg.get('time_budget_s') or 0)
        self.budget_info = {'time_budget_s': budget, 'epochs_configured': int(tcfg['epochs']),
                            'epochs_chosen': self.epochs} if budget > 0 else None
        val_every = int(tcfg.get('val_every') or 0)
        save_every = max(int(tcfg.get('save_every') or 1), 1)
        epoch = self.start_epoch
        last_val = None
        records = []
        interrupted = False
        try:
            while epoch < self.epochs:
                t_epoch = time.monotonic()
                parts, lr, stopped = self.train_one_epoch(epoch, progress=is_main)
                if self.device.type == 'cuda':
                    torch.cuda.synchronize(self.device)
                epoch_seconds = time.monotonic() - t_epoch
                self.train_seconds += epoch_seconds
                epoch += 1
                last = epoch >= self.epochs or stopped
                record = {'epoch': epoch, 'epochs': self.epochs, 'step': self.global_step,
                          'lr': lr, 'epoch_time_s': round(epoch_seconds, 3),
                          'time_s': round(self.train_seconds, 3), 'train': parts}
                if stopped:
                    record['partial'] = True
                if is_main and self.val_loader is not None and val_every and \
                        (epoch % val_every == 0 or last):
                    t_val = time.monotonic()
                    last_val = validate(self.model, self.criterion, self.val_loader,
                                        self.deform_cfg, self.device, self.seed, self.amp)
                    record['val'] = last_val
                    record['val_time_s'] = round(time.monotonic() - t_val, 3)
                if is_main:
                    with open(log_path, 'a', encoding='utf-8') as stream:
                        stream.write(json.dumps(record) + '\n')
                    records.append(record)
                    if epoch % save_every == 0 or last:
                        self._save_state(epoch)
                        # A usable checkpoint at every save, in case the run is killed.
                        save_checkpoint(self.out / FINAL_NAME, self.model,
                                        provenance=self._provenance(epoch, False))
                    msg = ' '.join(f'{k}={v:.4g}' for k, v in parts.items())
                    val_msg = f' | val epe {last_val["epe"]:.3f}px' if 'val' in record else ''
                    print(f'[tarfuse-train] epoch {epoch}/{self.epochs} {epoch_seconds:.1f}s '
                          f'lr={lr:.2e} {msg}{val_msg}', flush=True)
                _barrier(self.dist)
                if stopped:
                    break
                self._recheck_budget(epoch, time.monotonic() - t_epoch)
        except KeyboardInterrupt:
            interrupted = True
            if is_main:
                print('[tarfuse-train] interrupted: saving the current weights', flush=True)
        summary = None
        if is_main:
            finished = epoch >= self.epochs and not interrupted
            provenance = self._provenance(epoch, finished)
            provenance['interrupted'] = interrupted
            if self.budget_info:
                provenance['time_budget'] = self.budget_info
            save_checkpoint(self.out / FINAL_NAME, self.model, provenance=provenance)
            plot_curves(log_path, self.out / CURVE_NAME)
            summary = {'epochs': epoch, 'epochs_planned': self.epochs,
                       'steps': self.global_step, 'train_seconds': round(self.train_seconds, 1),
                       'wall_seconds': round(time.monotonic() - self.t0, 1),
                       'skipped_steps': self.skipped_steps, 'interrupted': interrupted,
                       'final_train': records[-1]['train'] if records else None,
                       'last_val': last_val, 'checkpoint': str(self.out / FINAL_NAME),
                       'time_budget': self.budget_info, 'device': provenance['device']}
            with open(self.out / 'summary.json', 'w', encoding='utf-8') as stream:
                json.dump(summary, stream, indent=1)
            print('[tarfuse-train] summary ' + json.dumps(summary), flush=True)
        _barrier(self.dist)
        return summary


def train(cfg, out_dir, argv=(), max_steps=None, resume=None, force_ddp=False, t0=None):
    """Run a whole training from a config dict; return the summary (rank 0) or None.

    ``t0`` (``time.monotonic()`` value) is where a ``train.time_budget_s`` starts counting;
    default: now.
    """
    validate_config(cfg)
    dist_info = setup_distributed(force=force_ddp)
    threads = torch.get_num_threads()
    try:
        # Tiny gradients/moments become denormal floats, which are very slow on CPUs.
        torch.set_flush_denormal(True)
        trainer = Trainer(cfg, out_dir, dist_info, argv, max_steps=max_steps, resume=resume,
                          t0=t0)
        return trainer.run()
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
        if dist_info.enabled:
            import torch.distributed as dist
            dist.destroy_process_group()


def main(argv=None):
    """Entry point of ``tarfuse-train``."""
    argv_given = argv
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        resume = find_state_dir(args.resume) if args.resume else None
        if resume is not None and args.config is None:
            cfg = copy.deepcopy(read_state_meta(resume)['config'])
            cfg['train'].pop('time_budget_s', None)
        else:
            cfg = load_config(args.config)
        apply_cli(cfg, args)
        if args.out:
            out = Path(args.out)
        elif resume is not None:
            out = resume.parent
        else:
            out = Path('runs') / datetime.datetime.now().strftime('train_%Y%m%d_%H%M%S')
        if resume is not None and out.resolve() != resume.parent:
            # Resuming into another folder (e.g. from a read-only copy): carry the history.
            old_log, new_log = resume.parent / LOG_NAME, out / LOG_NAME
            if old_log.is_file() and not new_log.exists():
                out.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(old_log, new_log)
        if args.max_steps is not None and args.max_steps < 1:
            raise ValueError(f'--max-steps must be >= 1, got {args.max_steps}')
        # The command line counts its budget from the interpreter's start (imports included).
        summary = train(cfg, out, argv=argv, max_steps=args.max_steps, resume=resume,
                        force_ddp=args.ddp, t0=_T0 if argv_given is None else None)
    except ValueError as exc:
        print(f'tarfuse-train: error: {exc}', file=sys.stderr)
        return 2
    return 130 if summary and summary.get('interrupted') else 0


if __name__ == '__main__':
    sys.exit(main())

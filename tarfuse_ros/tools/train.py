"""``tarfuse-train``: train TarFuse on paired IR/visible data (the library: tarfuse_ros.training).

The config is the shipped ``config/train.yaml`` (or ``--config``), changed by ``--set KEY=VALUE``
and the options below (an option and a ``--set`` item that give one key two different values
are refused: neither wins silently); on ``--resume`` it is the saved run's (the time budget
dropped: the resumed run finishes the saved horizon unless ``--epochs`` says otherwise). This
program sets the process-wide torch settings the config asks for (``train.threads``,
``train.deterministic``, flushing denormal floats) for the run and restores them afterwards.

Multi-GPU: ``torchrun --nproc_per_node N -m tarfuse_ros.tools.train --device cuda ...`` runs
DistributedDataParallel (one process per GPU, ``train.batch`` samples per GPU, rank 0 logs/saves).
"""

import argparse
import copy
import datetime
import os
from pathlib import Path
import shutil
import signal
import sys
import threading
import time

from tarfuse_ros.console import StopRequest
from tarfuse_ros.core.data import DataSource
from tarfuse_ros.core.files import lock_exclusive, output_problem
from tarfuse_ros.core.runtime import DeviceUnavailableError, torch_settings
from tarfuse_ros.training.config import apply_overrides, load_config, TrainingConfig
from tarfuse_ros.training.datasets import parse_data_spec
from tarfuse_ros.training.distributed import setup_distributed, teardown_distributed
from tarfuse_ros.training.logs import LOG_NAME
from tarfuse_ros.training.loop import CURVE_NAME, FINAL_NAME, Trainer
from tarfuse_ros.training.state import find_state_dir, read_state_meta, RUN_META_KEYS, STATE_DIR

__all__ = ['build_config', 'build_parser', 'main']

_T0 = time.monotonic()


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
    parser.add_argument('--crop', type=int, default=None,
                        help='square crop side (multiple of 32); a fixed validation crop '
                             '(data.val_crop > 0) takes it too, unless --set data.val_crop=N '
                             'gives one (the explicit key wins)')
    parser.add_argument('--batch', type=int, default=None, help='batch size per process')
    parser.add_argument('--workers', type=_workers, default=None,
                        help="DataLoader workers: a number, or 'auto' (4, at most one a CPU)")
    parser.add_argument('--val-every', type=int, default=None, help='validate every N epochs')
    parser.add_argument('--amp', action=argparse.BooleanOptionalAction, default=None,
                        help='bfloat16 autocast on CUDA')
    parser.add_argument('--time-budget', type=float, default=None, metavar='SECONDS',
                        help='fit the run into this wall time: after the first steps, choose '
                             'the epoch count (the learning-rate curve spans it), then stop '
                             'early if the epochs turn out slower')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='override any config key, e.g. --set loss.det=0 (YAML value); '
                             'an option above that sets the same key must give the same value')
    parser.add_argument('--ddp', action='store_true',
                        help='use DistributedDataParallel even with WORLD_SIZE=1 (testing)')
    return parser


def _workers(text):
    """Return ``--workers`` as an int, or ``'auto'``."""
    if text == 'auto':
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or 'auto', got {text!r}") from None


def build_config(args, resume=None):
    """Return the :class:`TrainingConfig` of a command line (``resume``: a state folder).

    Raises:
        ValueError: a bad or unknown key or value, naming it.

    """
    meta = read_state_meta(resume, RUN_META_KEYS) if resume is not None else None
    if resume is not None and args.config is None:
        raw = copy.deepcopy(meta['config'])
        raw['train'].pop('time_budget_s', None)
        if args.epochs is None and 'epochs_planned' in meta:
            raw['train']['epochs'] = meta['epochs_planned']  # the saved horizon
    else:
        raw = load_config(args.config)
    apply_overrides(raw, args.set)
    for section in ('data', 'train'):
        if not isinstance(raw.get(section), dict):
            raw[section] = {}
    _refuse_conflicts(args)
    for (section, key), (_, value) in _option_values(args).items():
        raw[section][key] = value
    # A fixed validation crop follows --crop, unless --set gave it on the same command line.
    if args.crop is not None and raw['data'].get('val_crop') and \
            not _given_by_set(args.set, 'data', 'val_crop'):
        raw['data']['val_crop'] = args.crop
    config = TrainingConfig.from_dict(raw)
    if resume is not None:
        _check_resumable(config, TrainingConfig.from_dict(meta['config']), resume)
    return config


# The options that set a config key: (section, key) -> the option's name (build_parser).
_OPTION_KEYS = {('data', 'train'): '--data', ('data', 'val'): '--val-data',
                ('train', 'epochs'): '--epochs', ('train', 'device'): '--device',
                ('train', 'seed'): '--seed', ('data', 'crop'): '--crop',
                ('train', 'batch'): '--batch', ('data', 'workers'): '--workers',
                ('train', 'val_every'): '--val-every', ('train', 'amp'): '--amp',
                ('train', 'time_budget_s'): '--time-budget', ('train', 'init_weights'): '--init'}


def _option_values(args):
    """Return ``{(section, key): (what the command line says, value)}`` of the options given."""
    given = {}
    for (section, key), flag in _OPTION_KEYS.items():
        value = getattr(args, flag[2:].replace('-', '_'))
        if value is None or value == []:
            continue
        if isinstance(value, list):  # --data / --val-data, repeated
            said = ' '.join(f'{flag} {spec}' for spec in value)
            if flag == '--val-data':
                value = [spec for spec in value if spec.lower() != 'none']
        elif isinstance(value, bool):
            said = flag if value else f'--no-{flag[2:]}'
        else:
            said = f'{flag} {value}'
        given[section, key] = (said, value)
    return given


def _refuse_conflicts(args):
    """Refuse an option and a ``--set`` item that give one config key two different values.

    Either alone sets the key; both with the same value are fine. With two values, one would
    win without a word (the option did), whichever the user meant.

    Raises:
        ValueError: naming the option and the ``--set`` item.

    """
    by_set = apply_overrides({}, args.set)
    for (section, key), (said, value) in _option_values(args).items():
        given = by_set.get(section)
        if not isinstance(given, dict) or key not in given or _same(given[key], value):
            continue
        if section == 'data' and _same_sources(given[key], value):
            continue
        # The item named is the last that gives the key (a section, or the key itself).
        item = [item for item in args.set if _given_by_set([item], section, key)][-1]
        raise ValueError(f'{said} and --set {item!r} give {section}.{key} two different '
                         f'values: give it once')


def _same(a, b):
    """Return whether two config values are equal (``true`` is not ``1``, nor ``1.0``)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _same_sources(a, b):
    """Return whether two ``data.train`` / ``data.val`` values name the same data sources.

    As the config reads them: ``roadscene``, ``roadscene:train`` and ``{path: roadscene}`` are
    one source (split ``train`` when left out).
    """
    def sources(value):
        return tuple(parse_data_spec(entry) if isinstance(entry, str)
                     else DataSource.parse(entry, default_split='train') for entry in value)
    if not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))):
        return False
    try:
        return sources(a) == sources(b)
    except (TypeError, ValueError):  # not sources: the config names what is wrong
        return False


def _given_by_set(items, section, key):
    """Return whether ``--set`` items give ``section.key`` (by itself or in its section)."""
    given = apply_overrides({}, items).get(section)
    return isinstance(given, dict) and key in given


def _check_resumable(config, saved, resume):
    """Refuse a resume whose config changes what the saved network is (its fields, classes).

    The resumed network is the saved one (architecture, detection classes and weights), so a
    changed ``model`` field, ``data.class_map``, ``train.init_weights`` or ``train.init_model``
    would be recorded in the run without taking effect (or, for the class map, train boxes as
    other classes).

    Raises:
        ValueError: naming the changed keys.

    """
    old, new = saved.model.to_dict(), config.model.to_dict()
    changed = [f'model.{key}' for key in sorted(new) if new[key] != old.get(key)
               and key not in ('class_names', 'num_classes')]
    if dict(config.data.class_map) != dict(saved.data.class_map):
        changed.append('data.class_map')
    # The resumed weights are the state's: other initial weights would be recorded, not used
    # (none given, e.g. by a --config without them, asks for nothing).
    for key in ('init_weights', 'init_model'):
        value = getattr(config.train, key)
        if value and value != getattr(saved.train, key):
            changed.append(f'train.{key} (--init)' if key == 'init_weights' else f'train.{key}')
    if changed:
        raise ValueError(f'--resume {str(resume.parent)!r} cannot change {", ".join(changed)}: '
                         f'the resumed network is the saved one; start a new run from its '
                         f'weights instead (--init {str(resume.parent / FINAL_NAME)!r} '
                         f'--out <new folder>)')


# What a run leaves in its --out folder (a new run there would replace them).
_RUN_FILES = (LOG_NAME, STATE_DIR, FINAL_NAME, 'summary.json')


def _held_run_files(out):
    """Return the names of :data:`_RUN_FILES` in ``out`` that hold a run worth keeping.

    A run that failed or was stopped before training anything (a bad label found in its first
    epoch, Ctrl-C while loading) leaves an empty log and perhaps a summary, but no state, no
    checkpoint and no epoch record: the same command may start again there.
    """
    held = [name for name in _RUN_FILES if (out / name).exists()]
    log = out / LOG_NAME
    if LOG_NAME in held and log.is_file() and log.stat().st_size == 0:
        held.remove(LOG_NAME)
    return held if set(held) - {'summary.json'} else []


def _out_dir(args, resume):
    """Return the run's output folder, refusing one that would lose a run or cannot be made.

    Raises:
        ValueError: ``--out`` cannot be written, holds another run (a new run would
            replace its log, state and checkpoint), holds the ``--config`` file of a new
            run as its ``config.yaml`` (the run would write over it), or holds a
            ``config.yaml``, ``summary.json`` or curve plot that no run wrote (no log).

    """
    if args.out:
        out = Path(args.out)
    elif resume is not None:
        out = resume.parent
    else:
        out = Path('runs') / datetime.datetime.now().strftime('train_%Y%m%d_%H%M%S')
    problem = output_problem(out, folder=True)
    if problem:
        raise ValueError(f'--out {str(out)!r} cannot be used ({problem})')
    held = _held_run_files(out)
    if held and (resume is None or out.resolve() != resume.parent):
        if resume is not None:
            hint = f'resume into the folder of that run, {str(resume.parent)!r}, or '
        elif (out / STATE_DIR).is_dir():
            hint = f'continue it with --resume {str(out)!r}, or '
        else:
            hint = ''
        raise ValueError(f'--out {str(out)!r} already holds a training run ({", ".join(held)}); '
                         f'{hint}choose another --out (or remove that folder)')
    if resume is None and args.config and (out / 'config.yaml').is_file() \
            and Path(args.config).resolve() == (out / 'config.yaml').resolve():
        # The run writes its parsed config there (comments and all of the user's file lost).
        raise ValueError(f'--config {args.config!r} is the file the run writes its parsed '
                         f'config to in --out: keep your config outside the run folder')
    if (resume is None or out.resolve() != resume.parent) and not (out / LOG_NAME).exists():
        # Files a run writes, there without a run's log: another's (a ROS config.yaml, notes).
        theirs = [name for name in ('config.yaml', 'summary.json', CURVE_NAME)
                  if (out / name).exists()]
        if theirs:
            raise ValueError(f'--out {str(out)!r} holds {", ".join(theirs)}, which no training '
                             f'run wrote there (no {LOG_NAME}) and the run would write over: '
                             f'choose another --out')
    return out


def _carry_log(out, resume):
    """Resuming into another folder (e.g. from a read-only copy): carry the history there.

    Called once the run has passed its checks: a resume refused (a finished run without
    --epochs, bad data) left the copied log behind, and the corrected command was then refused
    as one into a folder that holds another run.
    """
    if resume is not None and out.resolve() != resume.parent:
        old_log, new_log = resume.parent / LOG_NAME, out / LOG_NAME
        if old_log.is_file() and not new_log.exists():
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(old_log, new_log)


def main(argv=None):
    """Entry point of ``tarfuse-train``; returns the exit status (2: bad request, 130: Ctrl-C)."""
    argv_given = argv
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.max_steps is not None and args.max_steps < 1:
            raise ValueError(f'--max-steps must be >= 1, got {args.max_steps}')
        resume = find_state_dir(args.resume) if args.resume else None
        config = build_config(args, resume)
        out = _out_dir(args, resume)
        # The command line counts its budget from the interpreter's start (imports included).
        t0 = _T0 if argv_given is None else None
        dist = setup_distributed(force=args.ddp)
        # SIGTERM (a job scheduler, docker stop) stops the run as Ctrl-C does; only the first
        # of them does: a second one (terminals and ros2 launch send several) interrupted the
        # stop's save of the weights and summary, and was reported as a stop while starting.
        previous = _stop_once()
        claim, created = None, []
        try:
            if dist.is_main:
                claim, created = _claim_out(out)
                # Checked again under the lock: a run that ended meanwhile left its files.
                _out_dir(args, resume)
            with torch_settings(threads=config.train.threads,
                                deterministic=True if config.train.deterministic else None,
                                flush_denormal=True):
                trainer = Trainer(config, out, dist, argv, max_steps=args.max_steps,
                                  resume=resume, t0=t0)
                _carry_log(out, resume)
                summary = trainer.fit()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            teardown_distributed(dist)
            _release_out(claim)
            for folder in reversed(created):  # made for a run refused before its first file
                try:
                    folder.rmdir()
                except OSError:  # not empty: the run's
                    break
    except ValueError as exc:
        print(f'tarfuse-train: error: {exc}', file=sys.stderr)
        return 2
    except DeviceUnavailableError as exc:  # train.device of the config, or --device
        print(f'tarfuse-train: error: {exc}; use --device cpu', file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before training started (fit handles it afterwards)
        print('tarfuse-train: interrupted while starting; no training was done',
              file=sys.stderr)
        return 130
    return 130 if summary and summary.get('interrupted') else 0


def _claim_out(out):
    """Lock ``out`` (created if needed) for this run; return ``(descriptor, folders created)``.

    Two runs started at once into one ``--out`` both passed its checks (nothing there yet),
    then wrote one log (each epoch twice) and replaced each other's state and checkpoint. The
    lock (``flock``) goes with the process, however it ends. On a file system without
    ``flock`` the run goes on unlocked (descriptor None), with a warning (:func:`_lock_out`).

    Raises:
        ValueError: another running process holds ``out``.

    """
    created = [folder for folder in (out, *out.parents) if not folder.exists()][::-1]
    out.mkdir(parents=True, exist_ok=True)
    claim = _lock_out(out, os.open(out, os.O_RDONLY | os.O_DIRECTORY))
    if claim is not None:
        _OUT_CLAIMS.append(claim)
    return claim, created


def _lock_out(out, claim):
    """Return ``claim`` (a descriptor of ``out``) once it holds an exclusive ``flock``.

    None (``claim`` closed) where the file system has no ``flock`` (some network and overlay
    mounts): the run goes on, saying that a second run into ``out`` is not kept out.

    Raises:
        ValueError: another running process holds ``out``.

    """
    def no_flock(reason):
        print(f'tarfuse-train: warning: --out {str(out)!r}: its file system cannot lock files '
              f'(flock: {reason}); the run goes on, but nothing keeps a second run out of this '
              f'folder meanwhile: start no other run into it', file=sys.stderr)

    try:
        return lock_exclusive(claim, no_flock=no_flock)
    except BlockingIOError:
        raise ValueError(f'--out {str(out)!r} is in use by another tarfuse-train run, still '
                         f'running: wait for it to end, or choose another --out') from None


def _release_out(claim):
    """Close the descriptor :func:`_claim_out` returned (None: nothing)."""
    if claim is not None:
        _OUT_CLAIMS.remove(claim)
        os.close(claim)


# The descriptors holding a run's --out lock. A forked child (a DataLoader worker) closes its
# copies: a worker outlives a run killed outright by up to seconds, and held the lock meanwhile
# (the run's restart was refused as one into a folder in use).
_OUT_CLAIMS = []


def _close_inherited_claims():
    for claim in _OUT_CLAIMS:
        os.close(claim)
    _OUT_CLAIMS.clear()


os.register_at_fork(after_in_child=_close_inherited_claims)


def _stop_once():
    """Make the first SIGINT or SIGTERM raise KeyboardInterrupt, later ones nothing.

    Returns ``{signal: previous handler}`` to put back; empty outside the main thread, where
    signals cannot be handled (SIGINT ignored by the shell that started it stays ignored).
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    return StopRequest(once=True).install((signal.SIGINT, signal.SIGTERM))


if __name__ == '__main__':
    sys.exit(main())

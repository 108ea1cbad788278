"""The training loop: :class:`Trainer`, one run from a :class:`TrainingConfig` to a checkpoint.

Every step draws a fresh random rigid + elastic field per sample, deforms the aligned IR with it
(``deformed = warp(ir, applied)``) and asks the network for the inverse (``flow_gt``), so the
boxes, which live in the visible frame, never move (:mod:`tarfuse_ros.training.steps`).

Outputs in the run folder: ``log.jsonl`` and ``loss_curves.png`` (see
:mod:`~tarfuse_ros.training.logs`), ``config.yaml`` (the parsed config), ``splits/`` (the stems
used), ``state/`` (resumable, :mod:`~tarfuse_ros.training.state`), ``summary.json`` and
``tarfuse.safetensors`` (:func:`tarfuse_ros.core.checkpoint.save_checkpoint`, with provenance),
written at every save so that a killed run leaves a usable checkpoint.

The trainer changes no process-wide torch setting (threads, deterministic algorithms,
denormals): the program does that (:func:`tarfuse_ros.core.runtime.torch_settings`).
"""

import dataclasses
import datetime
import json
import math
import os
from pathlib import Path
import shlex
import signal
import sys
import time

from tarfuse_ros.console import interrupts_held
from tarfuse_ros.core.runtime import resolve_device
from tarfuse_ros.training import logs, steps
from tarfuse_ros.training.datasets import (build_dataset, check_class_map,
                                           check_no_test_pairs, count_labelled,
                                           dropped_class_lines, pinned_sources,
                                           resolve_sources, unpaired_lines)
from tarfuse_ros.training.distributed import barrier, broadcast_int, DistInfo
from tarfuse_ros.training.ema import weight_average
from tarfuse_ros.training.loaders import train_loader, val_loader
from tarfuse_ros.training.schedule import lr_factor, TimeBudget
from tarfuse_ros.training.seeds import batch_generator, epoch_seed, seed_everything
from tarfuse_ros.training.state import load_state, read_state_meta, save_state, STATE_DIR
import torch
import yaml

__all__ = ['CONFIG_NAME', 'CURVE_NAME', 'FINAL_NAME', 'SUMMARY_NAME', 'Trainer']

FINAL_NAME = 'tarfuse.safetensors'
CURVE_NAME = 'loss_curves.png'
CONFIG_NAME = 'config.yaml'
SUMMARY_NAME = 'summary.json'
# The time budget times steps 4..23 of a run (the first ones carry start-up costs).
_PROBE_WARMUP_STEPS = 3
_PROBE_STEPS = 20


# The optimizer settings of a parameter group that train.* gives (the learning rate is set
# before every step).
_CONFIG_GROUP_KEYS = ('lr_mult', 'weight_decay', 'betas')


def parameter_groups(model, lr_mult, freeze, lr):
    """Return Adam parameter groups of ``model``: one per top-level part with its ``lr_mult``.

    ``lr_mult``: part name -> factor on ``lr`` (parts not named: 1); ``freeze``: part names
    whose parameters get ``requires_grad`` False and no group. Raises ``ValueError`` naming an
    unknown part (the known ones are the model's children with parameters).
    """
    parts = {name: list(child.parameters()) for name, child in model.named_children()}
    parts = {name: params for name, params in parts.items() if params}
    for key, names in (('lr_mult', lr_mult), ('freeze', freeze)):
        unknown = sorted(set(names) - set(parts))
        if unknown:
            raise ValueError(f'train.{key}: unknown model part {unknown[0]!r} (parts: '
                             f'{sorted(parts)})')
    groups = []
    for name, params in parts.items():
        if name in freeze:
            for param in params:
                param.requires_grad_(False)
            continue
        factor = float(lr_mult.get(name, 1.0))
        groups.append({'params': params, 'lr': lr * factor, 'lr_mult': factor, 'part': name})
    if not groups:
        raise ValueError(f'train.freeze leaves nothing to train (frozen: {sorted(freeze)})')
    return groups


def _log(message):
    print(f'[tarfuse-train] {message}', flush=True)


def _check_init_fields(wanted, checkpoint, path):
    """Refuse ``model`` fields a run from ``init_weights`` would silently not use.

    The network of such a run is the checkpoint's (``train.init_model`` changes it), except
    ``detect: false`` and a deeper ``neck_blocks``; a model field the config sets (differs from
    the default) to another value than the checkpoint's would be recorded and not take effect.
    """
    from tarfuse_ros.core.model.tarfuse import TarFuseConfig
    default, given, have = TarFuseConfig().to_dict(), wanted.to_dict(), checkpoint.to_dict()
    ignored = [key for key in sorted(given) if key not in ('class_names', 'num_classes',
                                                           'detect', 'neck_blocks')
               and given[key] != default[key] and given[key] != have[key]]
    if ignored:
        key = ignored[0]
        raise ValueError(f'model.{key} is {given[key]!r} in the config but init_weights '
                         f'{str(path)!r} has {have[key]!r} (and so on for '
                         f'{", ".join("model." + k for k in ignored)}): the run starts from '
                         f'the checkpoint network; change it through train.init_model, or '
                         f'remove those fields from the model section')


def _init_classes(wanted, checkpoint, path):
    """Return ``checkpoint`` (a TarFuseConfig) with the run's detection classes.

    The run's classes come from ``data.class_map``. The same classes in another order would
    train each class in another's outputs: refused. Other classes replace the checkpoint's
    (outputs of a changed count start fresh), said in the log.
    """
    if not (wanted.detect and checkpoint.detect) or wanted.class_names == checkpoint.class_names:
        return checkpoint
    if sorted(wanted.class_names) == sorted(checkpoint.class_names):
        order = {name: index for index, name in enumerate(checkpoint.class_names)}
        raise ValueError(f'data.class_map orders the classes {list(wanted.class_names)} but '
                         f'init_weights {str(path)!r} was trained for '
                         f'{list(checkpoint.class_names)}: each class would train in the '
                         f'outputs of another; use the ids of the checkpoint (class_map: '
                         f'{order})')
    _log(f'init_weights: classes {list(checkpoint.class_names)} -> '
         f'{list(wanted.class_names)} (data.class_map)')
    return dataclasses.replace(checkpoint, class_names=wanted.class_names,
                               num_classes=len(wanted.class_names))


class Trainer:
    """One training run: data, model, optimizer, loaders and counters, all made in ``__init__``.

    :meth:`train_step` runs one optimisation step on a loader batch, :meth:`train_epoch` one
    epoch, :meth:`validate` one validation pass and :meth:`fit` the whole run with its outputs
    (module docstring).

    Args:
        config: :class:`~tarfuse_ros.training.config.TrainingConfig`.
        out_dir: the run folder.
        dist: :class:`~tarfuse_ros.training.distributed.DistInfo` (default: one process).
        argv: the command line, recorded in the provenance.
        max_steps: stop after this many optimizer steps of this run (smoke tests).
        resume: a state folder to continue from (weights, optimizer, counters, RNG states).
        t0: ``time.monotonic()`` value where ``train.time_budget_s`` starts (default: now).

    Raises:
        ValueError: bad data sources, a device name that is not ``cpu``/``cuda``/``cuda:N``,
            or no training batch.
        tarfuse_ros.core.runtime.DeviceUnavailableError: CUDA asked for but absent.

    """

    def __init__(self, config, out_dir, dist=None, argv=(), max_steps=None, resume=None,
                 t0=None):
        self.t0 = time.monotonic() if t0 is None else t0
        self.config = config
        self.out = Path(out_dir)
        self.dist = dist if dist is not None else DistInfo()
        self.argv = list(argv)
        self.max_steps = max_steps
        self.device = resolve_device(config.train.device, local_rank=self.dist.local_rank)
        self.seed = config.train.seed
        self.amp = config.train.amp and self.device.type == 'cuda'
        seed_everything(epoch_seed(self.seed, 0, self.dist.rank))
        root = config.data.root
        self.train_sources = resolve_sources(config.data.train, root)
        check_no_test_pairs(self.train_sources)
        self.val_sources = resolve_sources(config.data.val, root)
        # The config the run saves (config.yaml, the state a resume reads) names the folders
        # and list files found in the working directory by their absolute paths, and so its
        # data.root (a relative one found other sets, or none, from another directory).
        self.config = config = dataclasses.replace(config, data=dataclasses.replace(
            config.data, train=pinned_sources(config.data.train, self.train_sources, root),
            val=pinned_sources(config.data.val, self.val_sources, root),
            root=str(Path(root).expanduser().resolve()) if root else root))
        if self.dist.is_main:
            for line in unpaired_lines(self.train_sources + self.val_sources):
                _log(line)
        if config.model.detect:
            check_class_map(self.train_sources + self.val_sources, config.data.class_map)
        self._build_model(resume)
        # Frames the network sees as at inference (the model's input_min_long_side).
        long_side = self.model.config.input_min_long_side
        self.train_set = build_dataset(self.train_sources, config.data, True, self.seed,
                                       long_side)
        self.val_set = build_dataset(self.val_sources, config.data, False, self.seed,
                                     long_side) if self.val_sources else None
        if self.dist.is_main:
            for line in dropped_class_lines(self.train_set, self.val_set):
                _log(line)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.net = self._wrap_distributed(self.model)
        self.train_loader, self.sampler = train_loader(self.train_set, config, self.dist,
                                                       self.device)
        self.val_loader = val_loader(self.val_set, config, self.device) \
            if self.val_set is not None and self.dist.is_main else None
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f'no training batches: {len(self.train_set)} pairs, batch '
                             f'{config.train.batch} x {self.dist.world_size} process(es)')
        self.budget = TimeBudget(config.train.time_budget_s, config.train.epochs, self.t0,
                                 agree=lambda value: broadcast_int(value, self.dist, self.device))
        if self.start_epoch >= self.epochs and not self.budget.enabled:
            raise ValueError(f'--resume: the run has already trained {self.start_epoch} of '
                             f'{self.epochs} epochs; give --epochs N with N > '
                             f'{self.start_epoch} to train on')
        self.run_start_step = self.global_step
        self.probe_start = None
        self.last_val = None
        self.records = []
        self.log_path = self.out / logs.LOG_NAME

    def _build_model(self, resume):
        """Make the model (config, checkpoint or saved state), loss, optimizer and counters."""
        from tarfuse_ros.core.losses import TarFuseLoss
        from tarfuse_ros.core.model.tarfuse import build_model, TarFuseConfig
        train = self.config.train
        resume_meta = read_state_meta(resume) if resume else None
        model_config, init_model = self.config.model, None
        if resume_meta:
            model_config = TarFuseConfig.from_dict(resume_meta['model_config'])
        elif train.init_weights:
            # Start from a checkpoint's weights (and its architecture), with a fresh optimizer.
            # A run with model.detect false takes all but the detection neck and head.
            from dataclasses import replace
            from tarfuse_ros.core.checkpoint import load_checkpoint
            # More neck blocks than the checkpoint has are added as identities (fine-tuning a
            # deeper neck from a trained one).
            init_model = load_checkpoint(train.init_weights)
            model_config = init_model.config
            if not self.config.model.detect:
                model_config = replace(model_config, detect=False)
            if self.config.model.neck_blocks > model_config.neck_blocks:
                model_config = replace(model_config, neck_blocks=self.config.model.neck_blocks)
            _check_init_fields(self.config.model, model_config, train.init_weights)
            model_config = _init_classes(self.config.model, model_config, train.init_weights)
            if train.init_model:
                model_config = TarFuseConfig.from_dict(
                    dict(model_config.to_dict(), **train.init_model))
        self.model = build_model(model_config).to(self.device)
        if init_model is not None:
            # Keys the checkpoint lacks or holds in another shape (added neck blocks, a
            # global stage switched by train.init_model) keep their initialisation.
            state = self.model.state_dict()
            taken = {name: value for name, value in init_model.state_dict().items()
                     if name in state and state[name].shape == value.shape}
            fresh = sorted(set(state) - set(taken))
            state.update(taken)
            self.model.load_state_dict(state)
            if fresh:
                _log(f'init_weights: {len(taken)} tensors loaded, {len(fresh)} freshly '
                     f'initialised (first: {fresh[0]})')
        # The weight average (its first update copies the weights; a resumed state replaces it).
        self.ema = weight_average(self.model, train.ema, train.ema_tau) if train.ema else None
        self.criterion = TarFuseLoss(self.model, self.config.loss).to(self.device)
        self.optimizer = torch.optim.Adam(
            parameter_groups(self.model, train.lr_mult, train.freeze, train.lr),
            lr=train.lr, betas=train.betas, weight_decay=train.weight_decay,
            fused=True if self.device.type == 'cuda' else None)
        self.start_epoch, self.global_step = 0, 0
        # The newest resumable state: (epoch, run folder), or (None, None) while none.
        self._state_epoch = None, None
        self.train_seconds, self.skipped_steps = 0.0, 0
        self.started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
        if resume:
            # The state's optimizer comes back with the settings it was saved with; the ones
            # this run's config gives win (a resume that changed train.lr_mult, weight_decay or
            # betas had them recorded in its config and not used).
            given = [{key: group[key] for key in _CONFIG_GROUP_KEYS}
                     for group in self.optimizer.param_groups]
            meta = load_state(resume, self.model, self.optimizer, self.ema)
            for group, settings in zip(self.optimizer.param_groups, given):
                group.update(settings)
            if self.ema is not None and 'ema_updates' not in meta:
                _log('resume: the state holds no weight average; it starts at the first step '
                     'after the resume')
            self.start_epoch = int(meta['epoch'])
            self._state_epoch = self.start_epoch, Path(resume).parent
            self.global_step = int(meta['global_step'])
            self.train_seconds = float(meta.get('train_seconds', 0.0))
            self.skipped_steps = int(meta.get('skipped_steps', 0))
            self.started = meta.get('started', self.started)

    def _wrap_distributed(self, model):
        """Return the module the steps run: the model, or its DistributedDataParallel wrap."""
        if not self.dist.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel
        train = self.config.train
        if train.sync_bn and self.dist.world_size > 1:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # A loss switched off (weight 0) leaves its parameters without gradients.
        unused = train.find_unused_parameters or self.config.loss.det == 0
        return DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == 'cuda' else None,
            find_unused_parameters=unused)

    @property
    def epochs(self):
        """The horizon: the epoch count the learning-rate curve spans."""
        return self.budget.horizon

    # -- one step, one epoch, one validation ---------------------------------------------------
    def _set_lr(self):
        train = self.config.train
        # Where the run is on the curve, counted in this run's steps per epoch: a resume with
        # another batch size or training set has other steps per epoch than the saved run
        # (the saved step count put it elsewhere on the curve, even past its end).
        step = self.start_epoch * self.steps_per_epoch + self.global_step - self.run_start_step
        factor = lr_factor(step, self.epochs * self.steps_per_epoch,
                           int(train.warmup_epochs * self.steps_per_epoch), train.schedule,
                           train.min_lr_ratio)
        lr = train.lr * factor
        for group in self.optimizer.param_groups:
            group['lr'] = lr * group.get('lr_mult', 1.0)
        return lr

    def train_step(self, batch, epoch=0):
        """Run one optimisation step on a loader batch; return ``(loss parts, lr)``.

        Sets the step's learning rate, draws the batch's deformation from
        ``(seed, epoch, batch['index'])`` unless the loader did, and counts the step.
        """
        batch = steps.to_device(batch, self.device)
        lr = self._set_lr()
        generator = batch_generator(self.seed, epoch, batch['index'])
        batch = steps.draw_deformation(batch, self.config.deformation, generator)
        scales = self.config.train.detect_scale_range
        if scales is not None:
            # Drawn after the deformation, from the same generator: the fields stay those of
            # a run without it. Log-uniform, one factor for the whole batch.
            low, high = math.log(scales[0]), math.log(scales[1])
            batch['detect_scale'] = math.exp(
                low + (high - low) * float(torch.rand((), generator=generator)))
        parts, stepped = steps.train_step(
            self.net, self.criterion, self.optimizer, batch,
            grad_clip=self.config.train.grad_clip, amp=self.amp, params=self.params)
        self.skipped_steps += int(not stepped)
        if stepped and self.ema is not None:
            self.ema.update_parameters(self.model)
        self.global_step += 1
        return parts, lr

    def train_epoch(self, epoch, progress=False):
        """Run one epoch; return ``(mean loss parts, last lr, stopped by max_steps)``."""
        from tqdm import tqdm
        self.net.train()
        for part in self.config.train.freeze:
            # Frozen means frozen: BatchNorm statistics of a frozen part stay as loaded.
            getattr(self.model, part).eval()
        self._reseed_epoch(epoch)
        acc = steps.Accumulator()
        # A Ctrl-C inside tqdm's constructor left a bar half built, whose __del__ then printed
        # a traceback ('tqdm' object has no attribute 'pos') under the stop's lines: one that
        # came meanwhile is raised again once the bar is whole, to the tool's own handler.
        stops = []
        with interrupts_held(stops):
            bar = tqdm(self.train_loader, desc=f'epoch {epoch + 1}/{self.epochs}', leave=False,
                       disable=not progress, dynamic_ncols=True,
                       mininterval=1.0 if sys.stderr.isatty() else 30.0)
        if stops:
            bar.close()
            signal.raise_signal(stops[0])
        lr, stopped = 0.0, False
        for index, batch in enumerate(bar):
            parts, lr = self.train_step(batch, epoch)
            acc.add(parts)
            if progress and index % 10 == 0:
                bar.set_postfix(loss=f'{float(parts["total"]):.4f}', lr=f'{lr:.2e}',
                                refresh=False)
            if self.budget.enabled and self._probe(epoch, index + 1):
                bar.set_description(f'epoch {epoch + 1}/{self.epochs}')
            if self.max_steps is not None and \
                    self.global_step - self.run_start_step >= self.max_steps:
                stopped = True
                break
        bar.close()
        return acc.means(), lr, stopped

    def _reseed_epoch(self, epoch):
        seed = epoch_seed(self.seed, epoch, self.dist.rank)
        seed_everything(seed)
        self.train_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch, seed)

    def _probe(self, epoch, steps_in_epoch):
        """Time steps 4..23 of the run, then fix the budget's horizon; True when fixed now."""
        done = self.global_step - self.run_start_step
        if done == _PROBE_WARMUP_STEPS:
            self._synchronize()
            self.probe_start = time.monotonic()
        if self.probe_start is None or self.budget.fixed or \
                done != _PROBE_WARMUP_STEPS + _PROBE_STEPS:
            return False
        self._synchronize()
        step_s = (time.monotonic() - self.probe_start) / _PROBE_STEPS
        val_every = self.config.train.val_every
        val_steps = len(self.val_loader) if self.val_loader is not None else 0
        val_cost = (0.5 * step_s * val_steps + 1.0) / val_every if val_every else 0.0
        per_epoch = step_s * self.steps_per_epoch * 1.03 + 0.15 + val_cost
        left_in_epoch = (self.steps_per_epoch - steps_in_epoch) * step_s
        horizon = self.budget.fix(epoch + 1, self.budget.elapsed() + left_in_epoch, per_epoch,
                                  step_s)
        if self.dist.is_main:
            _log(f'time budget {self.budget.budget_s:.0f} s: step {1000 * step_s:.1f} ms, '
                 f'{self.steps_per_epoch} steps/epoch -> horizon {horizon} epochs '
                 f'(config: {self.config.train.epochs}); the learning-rate curve spans it')
        return True

    def _synchronize(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    @property
    def weights(self):
        """The network that is validated and saved: the weight average if on, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def validate(self):
        """Return the validation figures (:func:`tarfuse_ros.training.steps.validate`).

        The deformations come from a fixed seed, so every validation of a run sees the same.
        With ``train.ema`` the averaged weights are validated.
        """
        generator = torch.Generator()  # deformations are drawn on the CPU whatever the device
        generator.manual_seed(epoch_seed(self.seed, 0, 10_000))
        return steps.validate(self.weights, self.criterion, self.val_loader,
                              self.config.deformation, generator, self.amp)

    # -- the whole run ---------------------------------------------------------------------------
    def fit(self):
        """Train from the start epoch to the horizon; return the summary (rank 0) or None.

        Ctrl-C stops after saving the current weights (``summary['interrupted']``).
        """
        is_main = self.dist.is_main
        if is_main:
            self._start_outputs()
        epoch, interrupted = self.start_epoch, False
        try:
            while epoch < self.epochs:
                t_epoch, step0 = time.monotonic(), self.global_step
                parts, lr, stopped = self.train_epoch(epoch, progress=is_main)
                self._synchronize()
                epoch_seconds = time.monotonic() - t_epoch
                self.train_seconds += epoch_seconds
                # --max-steps ended the run inside this epoch.
                partial = stopped and self.global_step - step0 < self.steps_per_epoch
                if is_main:
                    self._end_epoch(epoch + 1, parts, lr, epoch_seconds, stopped, partial)
                barrier(self.dist)
                # Done once validated, logged and saved: Ctrl-C before (in the validation, say)
                # leaves the epoch to a resume, and the summary must not count it.
                epoch += 1
                if stopped:
                    break
                if self.budget.stop_after(epoch, time.monotonic() - t_epoch):
                    if is_main:
                        _log(f'time budget: stopping after epoch {epoch} of {self.epochs}')
                    break
        except KeyboardInterrupt:
            interrupted = True
            saved, folder = self._state_epoch
            if is_main:
                resumable = (f'the last resumable state is from epoch {saved} (--resume '
                             f'{str(folder)!r} continues from there)' if saved is not None
                             else 'no resumable state was saved yet (states are saved at the '
                             'end of epochs)')
                _log(f'interrupted in epoch {epoch + 1}: saving the current weights to '
                     f'{FINAL_NAME}; {resumable}')
            # Stopped after the epoch's state was saved (writing its checkpoint): it is done.
            epoch = max(epoch, saved or 0)
        summary = self._finish(epoch, interrupted) if is_main else None
        barrier(self.dist)
        return summary

    def _start_outputs(self):
        from tarfuse_ros.core.files import remove_stale_outputs, write_text_atomic
        self.out.mkdir(parents=True, exist_ok=True)
        # A run killed while it saved its state (checkpoint, log) left the new one half-written
        # beside it.
        for name in (STATE_DIR, FINAL_NAME, logs.LOG_NAME, CONFIG_NAME, SUMMARY_NAME,
                     CURVE_NAME):
            remove_stale_outputs(self.out / name)
        logs.truncate_log(self.log_path, self.start_epoch)
        # Whole or not at all (as every file of the run): written in place, a run killed in
        # the write left a truncated config.yaml for the user's next --config.
        write_text_atomic(self.out / CONFIG_NAME,
                          yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        logs.write_stem_lists(self.train_sources, self.out / 'splits' / 'train')
        logs.write_stem_lists(self.val_sources, self.out / 'splits' / 'val')
        val_pairs = len(self.val_set) if self.val_set is not None else 0
        params = sum(p.numel() for p in self.model.parameters()) / 1e6
        _log(f'{len(self.train_set)} training pairs ({count_labelled(self.train_sources)} '
             f'labelled), {val_pairs} validation pairs, {params:.3f} M params, device '
             f'{self.device}, {self.steps_per_epoch} steps/epoch, epochs '
             f'{self.start_epoch + 1}..{self.epochs}')

    def _end_epoch(self, epoch, parts, lr, epoch_seconds, stopped, partial=False):
        """Validate if due, log the epoch, save state and checkpoint if due (rank 0).

        ``partial``: ``--max-steps`` stopped the run inside the epoch; its weights go to the
        checkpoint but no resumable state is written (one would mark the epoch done).
        """
        from tarfuse_ros.core.checkpoint import save_checkpoint
        train = self.config.train
        last = epoch >= self.epochs or stopped
        record = {'epoch': epoch, 'epochs': self.epochs, 'step': self.global_step, 'lr': lr,
                  'epoch_time_s': round(epoch_seconds, 3),
                  'time_s': round(self.train_seconds, 3), 'train': parts}
        if partial:
            record['partial'] = True
        if self.val_loader is not None and train.val_every and \
                (epoch % train.val_every == 0 or last):
            t_val = time.monotonic()
            self.last_val = record['val'] = self.validate()
            record['val_time_s'] = round(time.monotonic() - t_val, 3)
        logs.append_record(self.log_path, record)
        self.records.append(record)
        if epoch % max(train.save_every, 1) == 0 or last:
            if partial:
                saved = self._state_epoch[0]
                newest = 'none yet' if saved is None else f'the newest is from epoch {saved}'
                _log(f'--max-steps stopped the run inside epoch {epoch}: no resumable state '
                     f'is written for a partial epoch ({newest})')
            else:
                self._save_state(epoch)
            save_checkpoint(self.out / FINAL_NAME, self.weights,
                            provenance=self.provenance(epoch, False))
        msg = ' '.join(f'{k}={v:.4g}' for k, v in parts.items())
        val_msg = f' | val epe {record["val"]["epe"]:.3f}px' if 'val' in record else ''
        _log(f'epoch {epoch}/{self.epochs} {epoch_seconds:.1f}s lr={lr:.2e} {msg}{val_msg}')

    def _save_state(self, epoch):
        meta = {'epoch': epoch, 'global_step': self.global_step,
                'epochs_planned': self.epochs, 'train_seconds': self.train_seconds,
                'skipped_steps': self.skipped_steps, 'started': self.started,
                'seed': self.seed, 'config': self.config.to_dict(),
                'model_config': self.model.config.to_dict(),
                'rng_note': 'every epoch reseeds Python/NumPy/torch/loader/deformations from '
                            '(seed, epoch, rank); the saved RNG states are restored as well'}
        try:
            save_state(self.out / STATE_DIR, self.model, self.optimizer, meta, self.ema)
        except KeyboardInterrupt:
            # Stopped once the new state was in place (removing the one before it): saved.
            try:
                if read_state_meta(self.out / STATE_DIR)['epoch'] == epoch:
                    self._state_epoch = epoch, self.out
            except ValueError:  # no state there
                pass
            raise
        # Only now: a write cut short (Ctrl-C) leaves the previous state in place.
        self._state_epoch = epoch, self.out

    def provenance(self, epochs_done, finished):
        """Return the checkpoint's provenance: data, command, commit, counters, config."""
        commit, dirty = logs.git_commit()
        device = str(self.device)
        if self.device.type == 'cuda':
            device += f' ({torch.cuda.get_device_name(self.device)})'
        config = self.config.to_dict()
        data = [{'path': s.path, 'name': Path(s.path).name, 'split': s.split,
                 'exclude': list(s.exclude), 'pairs': len(s.stems()), 'labels_dir': s.labels}
                for s in self.train_sources]
        return {
            'command': ' '.join(shlex.quote(a) for a in ['tarfuse-train'] + self.argv),
            'commit': commit, 'dirty_worktree': dirty, 'data': data,
            'labelled_pairs': count_labelled(self.train_sources),
            'class_map': dict(self.config.data.class_map),
            'val_data': [{'name': Path(s.path).name, 'split': s.split, 'pairs': len(s.stems())}
                         for s in self.val_sources],
            'epochs': epochs_done, 'epochs_planned': self.epochs, 'steps': self.global_step,
            'finished': finished, 'device': device, 'world_size': self.dist.world_size,
            'amp_bf16': self.amp, 'seed': self.seed, 'torch': torch.__version__,
            'started': self.started,
            'saved': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
            'train_seconds': round(self.train_seconds, 1),
            'config': {k: config[k] for k in ('data', 'deformation', 'loss', 'train')},
        }

    def _finish(self, epoch, interrupted):
        """Write the final checkpoint, the curves and ``summary.json``; return the summary."""
        from tarfuse_ros.core.checkpoint import save_checkpoint
        from tarfuse_ros.core.files import write_text_atomic
        provenance = self.provenance(epoch, epoch >= self.epochs and not interrupted)
        provenance['interrupted'] = interrupted
        if self.budget.enabled:
            provenance['time_budget'] = self.budget.info()
        if interrupted and self.global_step == self.run_start_step:
            # Stopped before the first step: nothing was trained, so no checkpoint is written
            # (one would hold the initial weights under the run's name).
            _log(f'no step was trained in this run: {FINAL_NAME} not written')
        else:
            save_checkpoint(self.out / FINAL_NAME, self.weights, provenance=provenance)
        logs.plot_curves(self.log_path, self.out / CURVE_NAME)
        summary = {'epochs': epoch, 'epochs_planned': self.epochs,
                   'steps': self.global_step, 'train_seconds': round(self.train_seconds, 1),
                   'wall_seconds': round(time.monotonic() - self.t0, 1),
                   'skipped_steps': self.skipped_steps, 'interrupted': interrupted,
                   'final_train': self.records[-1]['train'] if self.records else None,
                   'last_val': self.last_val,
                   # Absolute: a reader in another directory finds it (a relative --out).
                   'checkpoint': os.path.abspath(self.out / FINAL_NAME)
                   if (self.out / FINAL_NAME).is_file() else None,
                   'time_budget': self.budget.info(), 'device': provenance['device']}
        write_text_atomic(self.out / SUMMARY_NAME, json.dumps(summary, indent=1))
        _log('summary ' + json.dumps(summary))
        return summary

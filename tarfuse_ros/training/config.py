"""Training configuration: one frozen dataclass per section, parsed strictly.

A training config (``config/train.yaml``, every key commented there) has five sections:

- ``data``: :class:`DataConfig` (data sets, class map, crops, flips, loader workers);
- ``deformation``: :class:`tarfuse_ros.core.deform.DeformConfig` (the random IR deformation);
- ``model``: fields of :class:`tarfuse_ros.core.model.tarfuse.TarFuseConfig` that differ from
  its defaults (the class names come from ``data.class_map``);
- ``loss``: :class:`tarfuse_ros.core.losses.LossWeights`;
- ``train``: :class:`TrainConfig` (epochs, optimiser, schedule, device, seeds, ...).

The defaults live in these dataclasses and nowhere else: a key left out of the YAML takes them.
``epochs``, ``batch``, ``lr``, ``data.train``, ``data.crop`` and ``data.class_map`` have none and
must be given (``data.class_map`` only for a model with detection: with ``model.detect: false``
it must be left out or empty). Unknown sections and keys, and bad values, are errors (one line,
``ValueError``) that name the key (``train.warmup_epoch``). ``null`` is a key left out. Numbers
must be finite; a string that reads as one is taken (YAML reads 5e-4, without a dot, as a
string).
``--set KEY=VALUE`` changes the raw mapping before it is parsed (:func:`apply_overrides`).
"""

from dataclasses import asdict, dataclass, field, fields, MISSING
import math
from pathlib import Path

from tarfuse_ros.core.data import class_names_from_map, DataSource, parse_scale_range
from tarfuse_ros.core.deform import DeformConfig
from tarfuse_ros.core.losses import LossWeights
from tarfuse_ros.core.model.tarfuse import TarFuseConfig
from tarfuse_ros.core.paths import config_path
from tarfuse_ros.training.datasets import parse_data_spec
import yaml

__all__ = ['AUTO_WORKERS', 'DataConfig', 'SECTIONS', 'TrainConfig', 'TrainingConfig',
           'apply_overrides', 'load_config', 'set_by_path']

SECTIONS = ('data', 'deformation', 'model', 'loss', 'train')
SCHEDULES = ('constant', 'cosine')
# data.workers 'auto': this many DataLoader workers, fewer where fewer CPUs are usable.
AUTO_WORKERS = 4
# Model fields the data section decides.
_FROM_DATA = ('class_names', 'num_classes')


def _number(key, value, kind):
    """Return ``value`` as ``kind`` (int or float), or raise ``ValueError`` naming ``key``.

    Numbers must be finite (``.inf`` and ``.nan`` are refused); strings that read as one are
    taken (YAML reads 5e-4, without a dot, as a string).
    """
    if isinstance(value, bool):
        raise ValueError(f'{key} must be a number, got {value!r}')
    if kind is int and isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f'{key} must be a number, got {value!r}') from None
    if not math.isfinite(number):
        raise ValueError(f'{key} must be a finite number, got {value!r}')
    if kind is int:
        if not number.is_integer():
            raise ValueError(f'{key} must be an integer, got {value!r}')
        return int(number)
    return number


def _numbers(cls, section, values):
    """Return ``values`` with those of the int and float fields of ``cls`` read by _number.

    ``null`` counts as left out (the field's default), as in :func:`_parse_fields`.
    """
    kinds = {f.name: f.type for f in fields(cls)}
    return {name: _number(f'{section}.{name}', value, kinds[name])
            if kinds.get(name) in (int, float) else value
            for name, value in values.items() if value is not None or name not in kinds}


def _parse_fields(cls, section, values):
    """Return ``cls(**values)`` with values converted to the fields' types; strict keys.

    ``null`` counts as left out: the field's default, or an error if it has none.
    """
    values = dict(values or {})
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f'unknown key {section}.{unknown[0]} (known keys of {section}: '
                         f'{sorted(known)})')
    values = {name: value for name, value in values.items() if value is not None}
    missing = [name for name, f in known.items()
               if name not in values and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ValueError(f'{section}.{missing[0]} must be set')
    out = {}
    for name, value in values.items():
        kind = known[name].type
        key = f'{section}.{name}'
        if kind not in (int, float, bool):
            out[name] = value
        elif kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f'{key} must be true or false, got {value!r}')
            out[name] = value
        else:
            out[name] = _number(key, value, kind)
    return cls(**out)


def _check(condition, message):
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """The ``data`` section: where the pairs come from and how they are cut.

    ``train`` / ``val``: data sources (:class:`~tarfuse_ros.core.data.DataSource`; a config
    entry is a mapping ``{path, split, exclude, labels}`` or ``'PATH[:SPLIT]'``, split
    ``train`` when left out). ``crop`` / ``val_crop``: square crop sides in pixels (multiples of
    32); ``val_crop`` ``None`` is the training crop, 0 whole frames. ``hflip`` / ``vflip``: flip
    probabilities. ``workers``: DataLoader worker processes, or ``'auto'``
    (:attr:`loader_workers`: at most :data:`AUTO_WORKERS`, no more than the CPUs this process
    may use, so that PyTorch does not warn of too many workers). ``root``: base folder of relative
    data set paths (``None``: the working directory, then the shared data sets). ``context``:
    pixels of aligned IR kept around each training crop and deformed with it (the deformed crop
    then has scene content at its borders, as a real misaligned frame has; 0: deform the crop
    alone, whose empty borders show the deformation to the network). ``scale_range``:
    ``[low, high]`` resize factors drawn log-uniformly per training pair before its crop (scale
    augmentation); ``None``: none. ``photometric``: probability per modality and training pair
    of a random gamma, contrast and brightness change
    (:func:`~tarfuse_ros.core.data.photometric_change`); 0: none. ``mosaic``: probability
    per training crop of a 2 x 2 mosaic of four pairs
    (:class:`~tarfuse_ros.core.data.PairedDataset`); 0: none.
    """

    root: str = None
    train: tuple
    val: tuple = ()
    class_map: dict = None
    crop: int
    hflip: float = 0.5
    vflip: float = 0.0
    val_crop: int = None
    workers: object = 0
    context: int = 0
    scale_range: tuple = None
    photometric: float = 0.0
    mosaic: float = 0.0

    def __post_init__(self):
        for name in ('train', 'val'):
            entries = getattr(self, name) or ()
            _check(isinstance(entries, (list, tuple)),
                   f'data.{name} must be a list of data sources (a YAML list, e.g. '
                   f'[roadscene:train]), got {entries!r}')
            object.__setattr__(self, name, tuple(
                parse_data_spec(e) if isinstance(e, str)
                else DataSource.parse(e, default_split='train') for e in entries))
        _check(self.train, 'data.train is empty: give at least one data set (--data PATH:SPLIT)')
        for name in ('crop', 'val_crop'):
            value = getattr(self, name)
            if value is None or (name == 'val_crop' and value == 0):
                continue
            _check(value >= 32 and value % 32 == 0,
                   f'data.{name} must be a multiple of 32 (>= 32), got {value!r}')
        if self.class_map is None:
            object.__setattr__(self, 'class_map', {})
        _check(isinstance(self.class_map, dict),
               f'data.class_map must map class names to ids, got {self.class_map!r}')
        ids = sorted(set(self.class_map.values()))
        _check(ids == list(range(len(ids))),
               f'data.class_map ids must be 0..K-1 without gaps, got {ids}')
        _check(isinstance(self.context, int) and self.context >= 0,
               f'data.context must be an integer >= 0 (pixels), got {self.context!r}')
        for name in ('hflip', 'vflip', 'photometric', 'mosaic'):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and not isinstance(value, bool)
                   and 0.0 <= value <= 1.0,
                   f'data.{name} must be in [0, 1], got {getattr(self, name)!r}')
        if self.workers != 'auto':
            workers = _number('data.workers', self.workers, int) \
                if not isinstance(self.workers, str) or self.workers.strip() else None
            _check(workers is not None and workers >= 0,
                   f"data.workers must be an integer >= 0 or 'auto', got {self.workers!r}")
            object.__setattr__(self, 'workers', workers)
        if self.scale_range is not None:
            try:
                object.__setattr__(self, 'scale_range', parse_scale_range(self.scale_range))
            except ValueError as exc:
                raise ValueError(f'data.{exc}') from None

    @property
    def loader_workers(self):
        """Return the DataLoader workers (``'auto'``: at most :data:`AUTO_WORKERS`, one a CPU)."""
        if self.workers != 'auto':
            return self.workers
        from tarfuse_ros.core.cpus import usable_cpus
        return min(AUTO_WORKERS, usable_cpus())

    @property
    def eval_crop(self):
        """Validation crop side: ``val_crop``, the training crop for ``None``, 0 whole frames."""
        return self.crop if self.val_crop is None else self.val_crop

    @property
    def class_names(self):
        """Class names in id order (the first name of each id, lower case)."""
        return class_names_from_map({str(k).lower(): int(v) for k, v in self.class_map.items()})

    def to_dict(self):
        out = asdict(self)
        out['train'] = [source.to_dict() for source in self.train]
        out['val'] = [source.to_dict() for source in self.val]
        out['class_map'] = dict(self.class_map)
        if self.scale_range is not None:
            out['scale_range'] = list(self.scale_range)
        return out


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The ``train`` section: optimisation, schedule, device, seeds and outputs.

    Units: ``lr`` per optimizer step; ``warmup_epochs`` in epochs (fractions allowed);
    ``grad_clip`` the global gradient-norm limit (0: off); ``val_every`` / ``save_every`` in
    epochs (``val_every`` 0: never; ``save_every`` below 1 counts as 1); ``threads`` torch CPU
    threads (0: torch's default); ``time_budget_s`` wall seconds (0: none). ``lr_mult`` maps
    top-level model parts (``neck``, ``detect``, ``registration``, ...) to a factor on ``lr``;
    ``freeze`` lists parts whose parameters are not trained and whose BatchNorm statistics are
    not updated (they run in eval mode; the names are checked against the model when the run
    starts). ``init_model`` (only with ``init_weights``) maps model fields to
    values that replace the checkpoint's (e.g. ``{global_features: learned}``); parameters the
    changed architecture adds or reshapes start from their fresh initialisation.
    ``detect_scale_range``: ``[low, high]`` (within [0.5, 2]): each training batch's fused
    features are enlarged by a factor drawn log-uniformly from it before the detection neck
    (sides rounded to multiples of 32; the boxes are normalised, so they follow), as
    ``model.detect_min_long_side`` enlarges those of small frames at inference; ``None``: no.
    ``ema``: the decay of an exponential moving average of the weights, in ``[0, 1)`` (0: none),
    updated after every optimizer step with a warm-up ramp of time constant ``ema_tau`` steps
    (0: none; :mod:`tarfuse_ros.training.ema`); with it, validation and the saved checkpoint use
    the averaged weights, and the training state keeps both.
    """

    epochs: int
    batch: int
    lr: float
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    schedule: str = 'constant'
    min_lr_ratio: float = 0.0
    warmup_epochs: float = 0.0
    grad_clip: float = 0.0
    val_every: int = 0
    save_every: int = 1
    init_weights: str = None
    seed: int = 0
    deterministic: bool = False
    device: str = 'cpu'
    amp: bool = False
    threads: int = 0
    deform_in_workers: object = 'auto'
    sync_bn: bool = True
    find_unused_parameters: bool = False
    time_budget_s: float = 0.0
    lr_mult: dict = field(default_factory=dict)
    freeze: tuple = ()
    init_model: dict = field(default_factory=dict)
    detect_scale_range: tuple = None
    ema: float = 0.0
    ema_tau: float = 0.0

    def __post_init__(self):
        betas = self.betas
        message = f"train.betas must be two numbers in [0, 1) (Adam's), got {betas!r}"
        _check(isinstance(betas, (list, tuple)) and len(betas) == 2, message)
        try:
            betas = tuple(_number('train.betas', beta, float) for beta in betas)
        except ValueError:
            raise ValueError(message) from None
        _check(all(0 <= beta < 1 for beta in betas), message)
        object.__setattr__(self, 'betas', betas)
        if self.detect_scale_range is not None:
            try:
                scales = parse_scale_range(self.detect_scale_range)
            except ValueError as exc:
                raise ValueError(f'train.detect_{exc}') from None
            _check(scales[0] >= 0.5 and scales[1] <= 2.0,
                   f'train.detect_scale_range must lie within [0.5, 2], got {list(scales)}')
            object.__setattr__(self, 'detect_scale_range', scales)
        _check(isinstance(self.lr_mult, dict),
               f'train.lr_mult must be a mapping part -> factor, got {self.lr_mult!r}')
        for part, factor in self.lr_mult.items():
            _check(isinstance(factor, (int, float)) and not isinstance(factor, bool)
                   and factor > 0, f'train.lr_mult.{part} must be a number > 0, got {factor!r}')
        object.__setattr__(self, 'lr_mult', {str(k): float(v) for k, v in self.lr_mult.items()})
        _check(isinstance(self.freeze, (list, tuple)),
               f'train.freeze must be a list of model parts, got {self.freeze!r}')
        object.__setattr__(self, 'freeze', tuple(str(part) for part in self.freeze))
        object.__setattr__(self, 'time_budget_s', float(self.time_budget_s or 0.0))
        _check(isinstance(self.init_model, dict),
               f'train.init_model must be a mapping model field -> value, got {self.init_model!r}')
        _check(not self.init_model or self.init_weights,
               'train.init_model needs train.init_weights (it changes the architecture of that '
               'checkpoint); put architecture fields in the model section otherwise')
        model_fields = set(TarFuseConfig().to_dict()) - set(_FROM_DATA)
        for key in self.init_model:
            _check(key in model_fields,
                   f'train.init_model.{key} is not a model field (fields: '
                   f'{", ".join(sorted(model_fields))})')
        try:
            TarFuseConfig.from_dict(dict(TarFuseConfig().to_dict(), **self.init_model))
        except (TypeError, ValueError) as exc:
            raise ValueError(f'train.init_model: {exc}') from None
        for name in ('epochs', 'batch'):
            _check(getattr(self, name) >= 1,
                   f'train.{name} must be >= 1, got {getattr(self, name)!r}')
        _check(self.lr > 0 and math.isfinite(self.lr),
               f'train.lr must be a finite number > 0, got {self.lr!r}')
        _check(0 <= self.min_lr_ratio <= 1,
               f'train.min_lr_ratio must be in [0, 1] (a fraction of train.lr), got '
               f'{self.min_lr_ratio!r}')
        _check(isinstance(self.seed, int) and not isinstance(self.seed, bool)
               and 0 <= self.seed < 2**32,
               f'train.seed must be an integer >= 0 and < 2**32, got {self.seed!r}')
        _check(self.schedule in SCHEDULES,
               f'train.schedule must be constant or cosine, got {self.schedule!r}')
        _check(0 <= self.ema < 1, f'train.ema must lie in [0, 1) (0: no average), got '
               f'{self.ema!r}')
        for name in ('weight_decay', 'min_lr_ratio', 'warmup_epochs', 'grad_clip', 'val_every',
                     'threads', 'time_budget_s', 'ema_tau'):
            _check(getattr(self, name) >= 0,
                   f'train.{name} must be >= 0, got {getattr(self, name)!r}')
        _check(self.deform_in_workers in ('auto', True, False),
               f'train.deform_in_workers must be auto, true or false, got '
               f'{self.deform_in_workers!r}')
        _check(isinstance(self.device, str), f'train.device must be a string, got {self.device!r}')

    def to_dict(self):
        out = asdict(self)
        out['betas'] = list(self.betas)
        out['freeze'] = list(self.freeze)
        if self.detect_scale_range is not None:
            out['detect_scale_range'] = list(self.detect_scale_range)
        return out


@dataclass(frozen=True)
class TrainingConfig:
    """A whole training configuration (one attribute per section, see the module docstring)."""

    data: DataConfig
    train: TrainConfig
    deformation: DeformConfig = field(default_factory=DeformConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    model: TarFuseConfig = field(default_factory=TarFuseConfig)

    @classmethod
    def from_dict(cls, raw):
        """Parse a raw mapping (YAML); raise ``ValueError`` naming any bad or unknown key."""
        if not isinstance(raw, dict):
            raise ValueError(f'a training config must be a mapping, got {type(raw).__name__}')
        unknown = sorted(set(raw) - set(SECTIONS))
        if unknown:
            raise ValueError(f'unknown config section {unknown[0]!r} (sections: {SECTIONS})')
        section = {name: raw.get(name) or {} for name in SECTIONS}
        for name, values in section.items():
            if not isinstance(values, dict):
                raise ValueError(f'config section {name!r} must be a mapping, got {values!r}')
        # Every required key at once: a config written from scratch lacks several.
        missing = [f'{name}.{f.name}' for name, kind in (('data', DataConfig),
                                                         ('train', TrainConfig))
                   for f in fields(kind) if f.default is MISSING and f.default_factory is
                   MISSING and section[name].get(f.name) is None]
        if missing:
            raise ValueError(
                f'{", ".join(missing)} must be set (a --config file replaces the shipped '
                f'config/train.yaml as a whole, and a --set SECTION={{...}} item a whole '
                f'section of it: start from a copy of the file, or keep it and change single '
                f'keys with --set SECTION.KEY=VALUE)')
        data = _parse_fields(DataConfig, 'data', section['data'])
        train = _parse_fields(TrainConfig, 'train', section['train'])
        deformation = _numbers(DeformConfig, 'deformation', section['deformation'])
        loss = _numbers(LossWeights, 'loss', section['loss'])
        try:
            deformation = DeformConfig.from_dict(deformation)
        except (TypeError, ValueError) as exc:
            raise ValueError(f'deformation: {exc}') from None
        try:
            loss = LossWeights.from_dict(loss)
        except (TypeError, ValueError) as exc:
            raise ValueError(f'loss: {exc}') from None
        return cls(data, train, deformation, loss, _model_config(section['model'], data))

    def to_dict(self):
        """Return the plain mapping :meth:`from_dict` reads back (the run's saved config)."""
        default = TarFuseConfig().to_dict()
        model = {key: value for key, value in self.model.to_dict().items()
                 if key not in _FROM_DATA and value != default[key]}
        return {'data': self.data.to_dict(), 'deformation': self.deformation.to_dict(),
                'model': model, 'loss': self.loss.to_dict(), 'train': self.train.to_dict()}


def _model_config(overrides, data):
    """Return the TarFuseConfig of the ``model`` section, with the data's class names."""
    taken = sorted(set(overrides) & set(_FROM_DATA))
    if taken:
        raise ValueError(f'model.{taken[0]} comes from data.class_map; remove it from model')
    names = data.class_names
    values = dict(TarFuseConfig().to_dict(), **overrides)
    if values.get('detect') is False:
        if names:
            raise ValueError('data.class_map must be left out (or {}) with model.detect: false '
                             f'(a model without detection has no classes), got {names}')
    elif not names:
        raise ValueError('data.class_map must be set: it maps label class names to the '
                         'detection classes (or set model.detect: false for a fusion-only model)')
    values.update(class_names=names, num_classes=len(names))
    try:
        return TarFuseConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f'model: {exc}') from None


def load_config(path=None):
    """Read a training YAML file (default: the shipped ``config/train.yaml``) into a mapping.

    Raises:
        ValueError: the file is missing, a directory, unreadable, not UTF-8, not YAML (with
            the line and column of the problem), empty or not a mapping; one line naming it.

    """
    path = Path(path) if path is not None else config_path('train.yaml')
    name = f'training config {str(path)!r}'
    if path.is_dir():
        raise ValueError(f'{name} is a directory, not a YAML file')
    if not path.is_file():
        raise ValueError(f'{name} does not exist')
    try:
        text = path.read_text(encoding='utf-8')
    except UnicodeDecodeError as exc:
        raise ValueError(f'{name} is not UTF-8 text (byte {exc.start}: {exc.reason})') from None
    except OSError as exc:
        raise ValueError(f'{name} cannot be read: {exc.strerror or exc}') from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, 'problem_mark', None)
        where = f' at line {mark.line + 1}, column {mark.column + 1}' if mark else ''
        problem = ' '.join(str(getattr(exc, 'problem', None) or exc).split())
        lines = text.splitlines()
        if mark and mark.line < len(lines) and '\t' in lines[mark.line]:
            problem += ' (a tab: YAML indents with spaces)'
        raise ValueError(f'{name} is not valid YAML{where}: {problem}') from None
    if raw is None:
        raise ValueError(f'{name} is empty: a training config is a YAML mapping of sections '
                         f'({", ".join(SECTIONS)})')
    if not isinstance(raw, dict):
        raise ValueError(f'{name} must hold a mapping of sections ({", ".join(SECTIONS)}), '
                         f'got a {type(raw).__name__}')
    return raw


def set_by_path(raw, dotted, value):
    """Set ``raw['a']['b'] = value`` for ``dotted == 'a.b'`` (creating missing mappings)."""
    keys = dotted.split('.')
    if not all(keys):
        raise ValueError(f'bad config key {dotted!r}')
    node = raw
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def apply_overrides(raw, items):
    """Apply ``KEY=VALUE`` overrides (values read as YAML) to a raw mapping, in place.

    Raises:
        ValueError: an item without ``=`` or whose value is not YAML. Unknown keys are
            reported when the mapping is parsed (:meth:`TrainingConfig.from_dict`).

    """
    for item in items:
        key, sep, value = item.partition('=')
        if not sep:
            raise ValueError(f'--set expects KEY=VALUE, got {item!r}')
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, 'problem', None) or str(exc).splitlines()[0]
            raise ValueError(f'--set {item!r}: the value is not valid YAML ({problem}); a '
                             f'string holding [ ] {{ }} : @ or quotes goes in YAML quotes, e.g. '
                             f'"{key.strip()}=\'...\'"') from None
        set_by_path(raw, key.strip(), parsed)
    return raw

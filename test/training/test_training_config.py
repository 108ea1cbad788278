"""The training config: strict sections, defaults in one place, every shipped key honoured."""

from pathlib import Path

import pytest
from tarfuse_ros.core.data import DataSource
from tarfuse_ros.core.deform import DeformConfig
from tarfuse_ros.core.losses import LossWeights
from tarfuse_ros.core.model.tarfuse import TarFuseConfig
from tarfuse_ros.training.config import (apply_overrides, load_config, SECTIONS, TrainConfig,
                                         TrainingConfig)

REPO = Path(__file__).resolve().parents[2]


def _minimal():
    return {'data': {'train': ['roadscene:train'], 'crop': 64, 'class_map': {'person': 0}},
            'train': {'epochs': 1, 'batch': 2, 'lr': 1e-3}}


def test_shipped_config_parses_with_every_key_it_sets():
    raw = load_config()
    config = TrainingConfig.from_dict(raw)
    # Every key of the YAML reaches its dataclass (none ignored, none renamed).
    for section in ('data', 'deformation', 'loss', 'train'):
        parsed = getattr(config, section).to_dict()
        for key, value in raw[section].items():
            if section == 'data' and key in ('train', 'val'):
                continue
            expected = list(value) if isinstance(value, (list, tuple)) else value
            assert parsed[key] == expected, f'{section}.{key}'
    deformation = config.deformation
    assert (deformation.translation_px, deformation.aspect, deformation.shear_deg,
            deformation.perspective, deformation.elastic_sigma_max_px,
            deformation.elastic_downsample) == (32.0, 0.1, 4.0, 0.03, 32.0, 4)
    assert config.data.val_crop == 0 and config.data.eval_crop == 0  # whole frames
    assert config.data.context == 64  # deformed crops cut from a deformed context
    assert config.loss.reg_levels == 0.5
    assert config.model.registration == 'match' and config.model.global_stage is True
    assert config.model.global_features == 'orientation'
    assert config.model.class_names == ('person', 'bicycle', 'car')
    assert config.data.train[0] == DataSource('roadscene', 'det_labelled', ('test',), 'labels')
    assert TrainingConfig.from_dict(config.to_dict()) == config


def test_sections_reuse_the_core_dataclasses():
    config = TrainingConfig.from_dict(_minimal())
    assert isinstance(config.deformation, DeformConfig) and config.deformation == DeformConfig()
    assert isinstance(config.loss, LossWeights) and config.loss == LossWeights()
    assert isinstance(config.model, TarFuseConfig)
    assert config.to_dict()['model'] == {}  # only what differs from TarFuseConfig's defaults
    # Defaults of the train section live in TrainConfig only.
    assert config.train == TrainConfig(epochs=1, batch=2, lr=1e-3)
    assert config.data.eval_crop == 64 and config.data.hflip == 0.5


@pytest.mark.parametrize('key, value, message', [
    ('train.warmup_epoch', '2', 'unknown key train.warmup_epoch'),
    ('data.crops', '64', 'unknown key data.crops'),
    ('model.width', '8', 'model: unknown TarFuseConfig keys'),
    ('model.class_names', '[a]', 'model.class_names comes from data.class_map'),
    ('deformation.bogus', '1', 'deformation: unknown DeformConfig keys'),
    ('loss.regs', '1', 'loss: unknown LossWeights keys'),
    ('loss.det', '-1', r'loss: det must be >= 0 \(0 switches the term off\), got -1.0'),
    ('loss.beta', '-0.5', 'loss: beta must be >= 0'),
    ('optim.lr', '1', "unknown config section 'optim'"),
    ('train.amp', '1', 'train.amp must be true or false'),
    ('train.epochs', '1.5', 'train.epochs must be an integer'),
    ('train.schedule', 'linear', 'train.schedule must be constant or cosine'),
    ('data.val_crop', '48', 'data.val_crop must be a multiple of 32'),
    ('data.context', '-8', 'data.context must be an integer >= 0'),
    ('data.scale_range', '[1.5, 0.5]', r'data.scale_range must satisfy 0 < low <= high'),
    ('data.scale_range', '0.8', r'data.scale_range must be \(low, high\)'),
    ('data.photometric', '1.5', r'data.photometric must be in \[0, 1\]'),
    ('data.photometric', 'often', 'data.photometric must be a number'),
    ('data.mosaic', '-0.5', r'data.mosaic must be in \[0, 1\]'),
    ('train.lr_mult', '{neck: 0}', 'train.lr_mult.neck must be a number > 0'),
    ('train.lr_mult', '[neck]', 'train.lr_mult must be a mapping'),
    ('train.freeze', 'registration', 'train.freeze must be a list'),
    ('model.neck_blocks', '-1', 'neck_blocks must be an integer >= 0'),
    ('train.init_model', '{global_stage: false}', 'train.init_model needs train.init_weights'),
    ('train.init_model', '[global_stage]', 'train.init_model must be a mapping'),
    # Numbers are finite; train.lr, min_lr_ratio, seed and betas within their ranges.
    ('train.epochs', '.inf', 'train.epochs must be a finite number, got inf'),
    ('train.epochs', '.nan', 'train.epochs must be a finite number, got nan'),
    ('train.epochs', '1e400', "train.epochs must be a finite number, got '1e400'"),
    ('train.lr', '.inf', 'train.lr must be a finite number, got inf'),
    ('train.lr', 'null', 'train.lr must be set'),  # null: left out (a TypeError traceback)
    ('train.weight_decay', '-.inf', 'train.weight_decay must be a finite number'),
    ('train.min_lr_ratio', '5', r'train.min_lr_ratio must be in \[0, 1\]'),
    ('train.seed', '-1', r'train.seed must be an integer >= 0 and < 2\*\*32, got -1'),
    ('train.seed', '4294967296', r'train.seed must be an integer >= 0 and < 2\*\*32'),
    ('train.betas', '0.9', r'train.betas must be two numbers in \[0, 1\).*got 0.9'),
    ('train.betas', '[a, b]', r'train.betas must be two numbers in \[0, 1\)'),
    ('train.betas', '[0.9, 1.5]', r'train.betas must be two numbers in \[0, 1\)'),
    ('train.betas', '[0.9, 0.99, 0.999]', r'train.betas must be two numbers in \[0, 1\)'),
    # data.train / data.val are lists (a string is not read letter by letter).
    ('data.train', 'roadscene', 'data.train must be a list of data sources'),
    ('data.val', 'roadscene:val', 'data.val must be a list of data sources'),
    # Every bool field of the model is a bool, every int field an integer.
    ('model.global_stage', '"false"', "model: global_stage must be true or false, got 'false'"),
    ('model.detect_legacy', '1', 'model: detect_legacy must be true or false, got 1'),
    ('model.feature_channels', '8.5', 'model: feature_channels must be an integer, got 8.5'),
    ('model.corr_radius', '"4"', "model: corr_radius must be an integer, got '4'"),
    ('model.leaky_slope', 'abc', "model: leaky_slope must be a finite number, got 'abc'"),
    # Numeric fields of the deformation and loss sections are numbers, named by their key.
    ('deformation.prob', 'abc', "deformation.prob must be a number, got 'abc'"),
    ('deformation.prob', '[1]', r'deformation.prob must be a number, got \[1\]'),
    ('deformation.rotation_deg', '.nan', 'deformation.rotation_deg must be a finite number'),
    ('deformation.elastic_downsample', '2.5',
     'deformation.elastic_downsample must be an integer, got 2.5'),
    ('deformation.scale', 'abc', r'deformation: scale must be \(low, high\)'),
    ('deformation.scale', '0.9', r'deformation: scale must be \(low, high\)'),
    ('loss.det', 'abc', "loss.det must be a number, got 'abc'"),
    ('loss.det', '.inf', 'loss.det must be a finite number, got inf'),
    ('loss.reg', 'true', 'loss.reg must be a number, got True'),
])
def test_bad_or_unknown_keys_are_errors_that_name_the_key(key, value, message):
    raw = apply_overrides(_minimal(), [f'{key}={value}'])
    with pytest.raises(ValueError, match=message):
        TrainingConfig.from_dict(raw)


@pytest.mark.parametrize('value, message', [
    ('{width: 8}', 'train.init_model.width is not a model field'),
    ('{num_classes: 2}', 'train.init_model.num_classes is not a model field'),
    ('{global_features: sift}', "train.init_model: global_features must be 'learned' or"),
])
def test_init_model_names_fields_of_the_model(value, message):
    raw = apply_overrides(_minimal(), ['train.init_weights=x.safetensors',
                                       f'train.init_model={value}'])
    with pytest.raises(ValueError, match=message):
        TrainingConfig.from_dict(raw)
    raw = apply_overrides(_minimal(), ['train.init_weights=x.safetensors',
                                       'train.init_model={global_stage: false}'])
    config = TrainingConfig.from_dict(raw)
    assert config.train.init_model == {'global_stage': False}
    assert TrainingConfig.from_dict(config.to_dict()) == config


def test_a_config_written_from_scratch_is_told_every_missing_key_at_once(tmp_path, capsys):
    # A user's --config of a data section alone was told 'train.lr must be set', then, once
    # that was added, the next key: one run per missing key, and no word of the shipped file.
    from tarfuse_ros.tools import train as train_tool
    config = tmp_path / 'mine.yaml'
    config.write_text('data:\n  train: [{path: /my/set, split: train}]\n'
                      'train:\n  lr: 0.0005\n')
    assert train_tool.main(['--config', str(config), '--out', str(tmp_path / 'run')]) == 2
    assert capsys.readouterr().err == (
        'tarfuse-train: error: data.crop, train.epochs, train.batch must be set (a --config '
        'file replaces the shipped config/train.yaml as a whole, and a --set SECTION={...} '
        'item a whole section of it: start from a copy of the file, or keep it and change '
        'single keys with --set SECTION.KEY=VALUE)\n')
    assert not (tmp_path / 'run').exists()


def test_a_set_section_that_leaves_out_a_required_key_is_told_so(tmp_path, capsys):
    # --set 'data={train: [roadscene]}' replaces the data section as a whole; the message
    # blamed a --config file the command line did not give.
    from tarfuse_ros.tools import train as train_tool
    assert train_tool.main(['--data', 'roadscene', '--set', 'data={train: [roadscene]}',
                            '--out', str(tmp_path / 'run')]) == 2
    assert capsys.readouterr().err == (
        'tarfuse-train: error: data.crop must be set (a --config file replaces the shipped '
        'config/train.yaml as a whole, and a --set SECTION={...} item a whole section of it: '
        'start from a copy of the file, or keep it and change single keys with --set '
        'SECTION.KEY=VALUE)\n')
    assert not (tmp_path / 'run').exists()


def test_required_keys_and_overrides():
    raw = _minimal()
    del raw['train']['lr']
    with pytest.raises(ValueError, match='train.lr must be set'):
        TrainingConfig.from_dict(raw)
    raw = apply_overrides(_minimal(), ['train.lr=5e-4', 'model.feature_channels=6',
                                       'deformation.scale=[0.9, 1.1]', 'data.val_crop=0',
                                       'data.scale_range=[0.7, 1.4]', 'data.photometric=0.5',
                                       'data.mosaic=0.25'])
    config = TrainingConfig.from_dict(raw)
    assert config.train.lr == 5e-4  # YAML reads 5e-4 as a string; the config reads a number
    assert config.model.feature_channels == 6 and config.to_dict()['model'] == {
        'feature_channels': 6}
    assert config.deformation.scale == (0.9, 1.1) and config.data.eval_crop == 0
    assert config.data.scale_range == (0.7, 1.4) and config.data.photometric == 0.5
    assert config.data.mosaic == 0.25
    assert TrainingConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match='KEY=VALUE'):
        apply_overrides(raw, ['train.lr'])
    with pytest.raises(ValueError, match='PATH or PATH:SPLIT'):
        TrainingConfig.from_dict(dict(raw, data=dict(raw['data'], train=['x:'])))
    with pytest.raises(ValueError, match='unknown keys'):
        TrainingConfig.from_dict(dict(raw, data=dict(raw['data'], train=[{'path': 'x',
                                                                          'spilt': 'a'}])))


def test_config_sections_are_frozen():
    config = TrainingConfig.from_dict(_minimal())
    for section in (config, config.data, config.train, config.deformation, config.loss):
        with pytest.raises(AttributeError):
            section.seed = 1


def test_numbers_in_strings_and_integral_floats_are_read_as_before():
    # YAML reads 5e-4 (no dot) as a string: every section reads such strings as numbers.
    raw = apply_overrides(_minimal(), ['train.betas=[0.5, 9e-1]', 'deformation.prob="1"',
                                       'deformation.elastic_downsample=4.0', 'loss.det=5e-1',
                                       'train.seed=4294967295', 'model.feature_channels=8.0'])
    config = TrainingConfig.from_dict(raw)
    assert config.train.betas == (0.5, 0.9) and config.train.seed == 2**32 - 1
    assert config.deformation.prob == 1.0 and config.deformation.elastic_downsample == 4
    assert config.loss.det == 0.5
    assert config.model.feature_channels == 8 and isinstance(config.model.feature_channels, int)
    assert TrainingConfig.from_dict(config.to_dict()) == config
    # null is a key left out: its default (time_budget_s: null was read as 0 before).
    raw = apply_overrides(_minimal(), ['train.seed=null', 'train.time_budget_s=null',
                                       'data.val_crop=null', 'deformation.prob=null',
                                       'loss.det=null'])
    config = TrainingConfig.from_dict(raw)
    assert config.train.seed == 0 and config.train.time_budget_s == 0.0
    assert config.data.val_crop is None and config.deformation.prob == 1.0
    assert config.loss.det == 1.0


def test_core_dataclasses_check_their_types():
    with pytest.raises(ValueError, match="prob must be a finite number, got '1'"):
        DeformConfig(prob='1')
    with pytest.raises(ValueError, match='inverse_iterations must be an integer'):
        DeformConfig(inverse_iterations=2.5)
    with pytest.raises(ValueError, match="det must be a finite number, got 'abc'"):
        LossWeights.from_dict({'det': 'abc'})
    assert LossWeights.from_dict({'det': '0.5', 'reg': 2}) == LossWeights(det=0.5, reg=2.0)
    for name in ('global_stage', 'detect', 'flip_average', 'neck_top_down', 'detect_legacy',
                 'global_support_mask', 'global_fine_check'):
        with pytest.raises(ValueError, match=f"{name} must be true or false, got 'false'"):
            TarFuseConfig(**{name: 'false'})
    with pytest.raises(ValueError, match='reg_max must be an integer, got 16.5'):
        TarFuseConfig(reg_max=16.5)
    with pytest.raises(ValueError, match='leaky_slope must be a finite number, got nan'):
        TarFuseConfig(leaky_slope=float('nan'))


@pytest.mark.parametrize('name, content, message', [
    ('syntax.yaml', b'data: {train: [roadscene\n', 'is not valid YAML at line 2, column 1: '
     r"expected ',' or '\]'"),
    ('tab.yaml', b'data:\n\ttrain: x\n', 'is not valid YAML at line 2, column 1: found '
     r"character '\\t' that cannot start any token \(a tab: YAML indents with spaces\)$"),
    ('binary.yaml', b'\xff\xfe bad', r'is not UTF-8 text \(byte 0: invalid start byte\)'),
    ('empty.yaml', b'', 'is empty'),
    ('comments.yaml', b'# nothing yet\n', 'is empty'),
    ('list.yaml', b'- a\n- b\n', 'must hold a mapping of sections .* got a list$'),
])
def test_load_config_errors_are_one_line_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        load_config(path)
    assert str(info.value).startswith(f'training config {str(path)!r} ')
    assert '\n' not in str(info.value)


def test_load_config_directory_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match='is a directory, not a YAML file'):
        load_config(tmp_path)
    with pytest.raises(ValueError, match='does not exist'):
        load_config(tmp_path / 'missing.yaml')


def test_config_errors_stop_tarfuse_train_before_training(tmp_path, capsys):
    from tarfuse_ros.tools.train import main
    common = ['--data', 'm3fd_samples:all', '--val-data', 'none', '--workers', '0', '--batch',
              '1', '--crop', '128', '--device', 'cpu', '--max-steps', '1', '--out',
              str(tmp_path / 'run')]
    for extra, message in (
            (['--config', str(tmp_path)], 'is a directory'),
            (['--set', 'train.epochs=.inf'], 'train.epochs must be a finite number, got inf'),
            (['--set', 'train.betas=0.9'], 'train.betas must be two numbers in [0, 1)')):
        assert main(common + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith('tarfuse-train: error: ') and message in err
        assert '\n' not in err and 'Traceback' not in err
    assert not (tmp_path / 'run').exists()


def _training_yamls():
    paths = sorted((REPO / 'config').glob('*.yaml'))
    for pattern in ('training/*cfg/*.yaml', 'training/*cfg/*.yml', 'training/*/config.yaml'):
        paths += sorted(REPO.glob(pattern))
    return paths


def test_every_config_in_the_repository_parses():
    parsed = 0
    for path in _training_yamls():
        raw = load_config(path)
        if not set(raw) & set(SECTIONS):
            assert 'ros__parameters' in path.read_text(), path  # a node's parameters file
            continue
        config = TrainingConfig.from_dict(raw)  # names no data set folder: reads no data
        assert TrainingConfig.from_dict(config.to_dict()) == config, path
        parsed += 1
    assert parsed >= 2  # config/train.yaml and config/train_medical.yaml at least


def test_the_shipped_loader_workers_fit_the_cpus_without_a_warning():
    """``workers: 4`` made PyTorch warn of too many workers on every 2-CPU machine."""
    import warnings

    import torch
    from tarfuse_ros.core.cpus import usable_cpus
    from tarfuse_ros.training.distributed import DistInfo
    from tarfuse_ros.training.loaders import train_loader
    config = TrainingConfig.from_dict(load_config())
    assert config.data.workers == 'auto'
    assert config.data.loader_workers == min(4, usable_cpus())
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # PyTorch's is a UserWarning
        loader, _ = train_loader(list(range(8)), config, DistInfo(), torch.device('cpu'))
    assert loader.num_workers == config.data.loader_workers
    for value, workers in (('auto', min(4, usable_cpus())), (3, 3), ('2', 2), (0, 0)):
        raw = _minimal()
        raw['data']['workers'] = value
        assert TrainingConfig.from_dict(raw).data.loader_workers == workers


@pytest.mark.parametrize('value', [-1, 'many', '', True, 1.5])
def test_bad_loader_workers_are_refused(value):
    raw = _minimal()
    raw['data']['workers'] = value
    with pytest.raises(ValueError, match='data.workers must be'):
        TrainingConfig.from_dict(raw)

"""The training config: strict sections, defaults in one place, every shipped key honoured."""

import pytest
from tarfuse_ros.core.data import DataSource
from tarfuse_ros.core.deform import DeformConfig
from tarfuse_ros.core.losses import LossWeights
from tarfuse_ros.core.model.tarfuse import TarFuseConfig
from tarfuse_ros.training.config import (apply_overrides, load_config, TrainConfig,
                                         TrainingConfig)


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

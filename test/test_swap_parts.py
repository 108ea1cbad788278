"""benchmarks/swap_parts.py: a stage run's part put into the previous model."""

from pathlib import Path
import sys

import pytest
from tarfuse_ros.core.checkpoint import load_checkpoint, save_checkpoint
from tarfuse_ros.core.model.tarfuse import build_model, TarFuseConfig
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
import swap_parts  # noqa: E402, I100

CONFIG = TarFuseConfig(registration='paper', detect=False)


def _save(path, model, provenance):
    save_checkpoint(path, model.eval(), provenance)
    return path


def _perturbed(model, prefix):
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.startswith(prefix) and tensor.is_floating_point():
                tensor.add_(0.5)
    return model


def test_takes_the_part_and_keeps_everything_else(tmp_path):
    torch.manual_seed(0)
    base = build_model(CONFIG)
    run = build_model(CONFIG)
    run.load_state_dict(base.state_dict())
    _perturbed(run, 'reconstruction.')
    base_path = _save(tmp_path / 'base.safetensors', base, {'after_training': 'base note'})
    run_path = _save(tmp_path / 'run.safetensors', run, {'command': 'the run'})
    out = tmp_path / 'out.safetensors'
    taken = swap_parts.swap_parts(base_path, run_path, out, ('reconstruction.',))
    merged = load_checkpoint(out).state_dict()
    expected = sum(1 for name in merged if name.startswith('reconstruction.'))
    assert taken == expected > 0
    for name, tensor in merged.items():
        source = run if name.startswith('reconstruction.') else base
        assert tensor.equal(source.state_dict()[name]), name
    provenance = load_checkpoint(out).checkpoint_config['provenance']
    assert provenance['command'] == 'the run'
    assert 'reconstruction.*' in provenance['after_training']
    assert 'base note' in provenance['after_training']


def test_a_wider_head_follows_the_run(tmp_path):
    torch.manual_seed(0)
    base = build_model(CONFIG)
    wide_config = TarFuseConfig(registration='paper', detect=False,
                                reconstruction_channels=(32, 16))
    run = build_model(wide_config)
    state = run.state_dict()
    state.update({k: v for k, v in base.state_dict().items()
                  if not k.startswith('reconstruction.')})
    run.load_state_dict(state)
    base_path = _save(tmp_path / 'base.safetensors', base, {})
    run_path = _save(tmp_path / 'run.safetensors', run, {})
    out = tmp_path / 'out.safetensors'
    swap_parts.swap_parts(base_path, run_path, out, ('reconstruction.',))
    merged = load_checkpoint(out)
    assert merged.config.reconstruction_channels == (32, 16)
    image = torch.rand(1, 1, 64, 64)
    assert torch.equal(merged.predict_raw(image, image)['fused'],
                       run.predict_raw(image, image)['fused'])


def test_refuses_a_run_that_trained_another_part(tmp_path):
    torch.manual_seed(0)
    base = build_model(CONFIG)
    run = build_model(CONFIG)
    run.load_state_dict(base.state_dict())
    _perturbed(run, 'vi_common.')
    base_path = _save(tmp_path / 'base.safetensors', base, {})
    run_path = _save(tmp_path / 'run.safetensors', run, {})
    with pytest.raises(SystemExit, match='vi_common.*not under'):
        swap_parts.swap_parts(base_path, run_path, tmp_path / 'out.safetensors',
                              ('reconstruction.',))
    assert not (tmp_path / 'out.safetensors').exists()

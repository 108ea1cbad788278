"""benchmarks/swap_parts.py: a stage run's part put into the previous model."""

from dataclasses import replace
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
    # The base's inference settings (no weights) are kept, not the run's.
    base = build_model(replace(CONFIG, flip_average=True))
    run = build_model(CONFIG)
    run.load_state_dict(base.state_dict())
    _perturbed(run, 'reconstruction.')
    base_path = _save(tmp_path / 'base.safetensors', base, {'after_training': 'base note'})
    run_path = _save(tmp_path / 'run.safetensors', run, {'command': 'the run'})
    out = tmp_path / 'out.safetensors'
    taken = swap_parts.swap_parts(base_path, run_path, out, ('reconstruction',))
    merged = load_checkpoint(out).state_dict()
    expected = sum(1 for name in merged if name.startswith('reconstruction.'))
    assert taken == expected > 0
    for name, tensor in merged.items():
        source = run if name.startswith('reconstruction.') else base
        assert tensor.equal(source.state_dict()[name]), name
    assert load_checkpoint(out).config.flip_average is True
    provenance = load_checkpoint(out).checkpoint_config['provenance']
    assert provenance['command'] == 'the run'
    assert 'reconstruction.*' in provenance['after_training']
    assert swap_parts.file_sha256(base_path)[:8] in provenance['after_training']
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
    swap_parts.swap_parts(base_path, run_path, out, ('reconstruction',))
    merged = load_checkpoint(out)
    assert merged.config.reconstruction_channels == (32, 16)
    image = torch.rand(1, 1, 64, 64)
    assert torch.equal(merged.predict_raw(image, image)['fused'],
                       run.predict_raw(image, image)['fused'])


def test_a_neck_with_a_top_down_path_follows_the_run(tmp_path):
    """A run that added neck layers (model.neck_top_down): its neck and head go in whole."""
    torch.manual_seed(0)
    config = TarFuseConfig(registration='paper', detect_channels=(16, 16, 16), reg_max=4)
    base = build_model(replace(config, flip_average=True))
    run = build_model(replace(config, neck_top_down=True))
    state = run.state_dict()
    state.update(base.state_dict())
    run.load_state_dict(state)
    _perturbed(run, 'neck.')
    _perturbed(run, 'detect.')
    base_path = _save(tmp_path / 'base.safetensors', base, {})
    run_path = _save(tmp_path / 'run.safetensors', run, {})
    out = tmp_path / 'out.safetensors'
    swap_parts.swap_parts(base_path, run_path, out, ('neck', 'detect'))
    merged = load_checkpoint(out)
    assert merged.config.neck_top_down is True and merged.config.flip_average is True
    assert 'neck_top_down true' in merged.checkpoint_config['provenance']['after_training']
    image = torch.rand(1, 1, 64, 64)
    assert torch.equal(merged.predict_raw(image, image)['det'],
                       run.predict_raw(image, image)['det'])
    # The neck alone cannot go in: the run's head is not the base's.
    with pytest.raises(ValueError, match='detect.*not in the parts neck'):
        swap_parts.swap_parts(base_path, run_path, tmp_path / 'neck.safetensors', ('neck',))
    # Without the neck, the base (no top-down path) and the run are not one architecture.
    with pytest.raises(ValueError, match='different tensors'):
        swap_parts.swap_parts(base_path, run_path, tmp_path / 'head.safetensors', ('detect',))


def test_refuses_a_run_that_trained_another_part(tmp_path):
    torch.manual_seed(0)
    base = build_model(CONFIG)
    run = build_model(CONFIG)
    run.load_state_dict(base.state_dict())
    _perturbed(run, 'vi_common.')
    base_path = _save(tmp_path / 'base.safetensors', base, {})
    run_path = _save(tmp_path / 'run.safetensors', run, {})
    with pytest.raises(ValueError, match='vi_common.*not in the parts reconstruction'):
        swap_parts.swap_parts(base_path, run_path, tmp_path / 'out.safetensors',
                              ('reconstruction',))
    assert not (tmp_path / 'out.safetensors').exists()


@pytest.mark.parametrize('parts, message', [
    ((), 'parts must be among'),
    (('',), 'parts must be among'),
    (('reconstruction.',), 'parts must be among'),
    (('ir',), 'parts must be among'),
])
def test_refuses_unknown_parts(tmp_path, parts, message):
    model = build_model(CONFIG)
    path = _save(tmp_path / 'model.safetensors', model, {})
    with pytest.raises(ValueError, match=message):
        swap_parts.swap_parts(path, path, tmp_path / 'out.safetensors', parts)


def test_refuses_other_architectures_and_overwriting_an_input(tmp_path):
    base_path = _save(tmp_path / 'base.safetensors', build_model(CONFIG), {})
    with_detection = build_model(TarFuseConfig(registration='paper'))
    run_path = _save(tmp_path / 'run.safetensors', with_detection, {})
    with pytest.raises(ValueError, match='different tensors'):
        swap_parts.swap_parts(base_path, run_path, tmp_path / 'out.safetensors',
                              ('reconstruction',))
    with pytest.raises(ValueError, match='one of the inputs'):
        swap_parts.swap_parts(base_path, base_path, base_path, ('reconstruction',))


def test_the_command_line_exits_with_the_message(tmp_path, capsys):
    path = _save(tmp_path / 'model.safetensors', build_model(CONFIG), {})
    with pytest.raises(SystemExit, match='swap_parts: parts must be among'):
        swap_parts.main([str(path), str(path), str(tmp_path / 'out.safetensors'),
                         '--parts', 'nothing'])
    swap_parts.main([str(path), str(path), str(tmp_path / 'out.safetensors'),
                     '--parts', 'reconstruction'])
    assert 'tensors taken' in capsys.readouterr().out

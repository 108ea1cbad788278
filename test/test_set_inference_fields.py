"""benchmarks/set_inference_fields.py: inference settings changed after training."""

from pathlib import Path
import sys

import pytest
from tarfuse_ros.core.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint
from tarfuse_ros.core.model.tarfuse import build_model, TarFuseConfig
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
import set_inference_fields as tool  # noqa: E402, I100

CONFIG = TarFuseConfig(registration='paper')


@pytest.fixture()
def base(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / 'base.safetensors'
    save_checkpoint(path, build_model(CONFIG).eval(), {'after_training': 'base note'})
    return path


def test_sets_the_fields_and_keeps_every_tensor(base, tmp_path, capsys):
    out = tmp_path / 'out.safetensors'
    tool.main([str(base), str(out), '--set', 'detect_min_long_side=640',
               '--set', 'flip_average=true'])
    assert 'detect_min_long_side 640, flip_average true' in capsys.readouterr().out
    before, after = load_checkpoint(base), load_checkpoint(out)
    assert (after.config.detect_min_long_side, after.config.flip_average) == (640, True)
    assert after.config.input_min_long_side == before.config.input_min_long_side == 0
    for name, tensor in before.state_dict().items():
        assert torch.equal(tensor, after.state_dict()[name]), name
    note = read_checkpoint_config(out)['provenance']['after_training']
    assert note.startswith('base note; then model.detect_min_long_side set to 640, '
                           'model.flip_average set to true after training')


@pytest.mark.parametrize('items, message', [
    (['reg_max=8'], 'not an inference setting'),
    (['detect_min_long_side'], 'KEY=VALUE'),
    (['detect_min_long_side=big'], 'not JSON'),
    (['detect_min_long_side=-5'], 'detect_min_long_side must be an integer >= 0'),
    (['detect_min_long_side=64000'], 'detect_min_long_side must be at most 16384'),
    (['input_min_long_side=20000'], 'input_min_long_side must be at most 16384'),
    ([], 'nothing to set'),
])
def test_refuses_what_it_cannot_set(base, tmp_path, items, message):
    out = tmp_path / 'out.safetensors'
    argv = [str(base), str(out)] + [arg for item in items for arg in ('--set', item)]
    with pytest.raises(SystemExit, match=message):
        tool.main(argv)
    assert not out.exists()
    with pytest.raises(SystemExit, match='is the base'):
        tool.main([str(base), str(base), '--set', 'detect_min_long_side=640'])

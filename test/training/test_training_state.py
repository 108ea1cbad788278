"""Resumable state: the recorded format reads back; a failed save leaves the last state whole."""

import json

import loss_fixture
import pytest
from tarfuse_ros.core.files import atomic_output
from tarfuse_ros.training import state
import torch


def _model_and_optimizer():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.01, betas=(0.8, 0.9))
    layer(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return layer, optimizer


def test_state_written_before_the_training_package_reads_back():
    meta = state.read_state_meta(loss_fixture.STATE)
    assert meta['format_version'] == state.FORMAT_VERSION and meta['epoch'] == 1
    assert state.find_state_dir(loss_fixture.STATE) == loss_fixture.STATE.resolve()
    assert {'config', 'model_config', 'optimizer', 'rng', 'epochs_planned'} <= set(meta)


def test_save_replaces_the_folder_and_a_failed_save_keeps_the_old_one(tmp_path):
    layer, optimizer = _model_and_optimizer()
    folder = tmp_path / 'state'
    state.save_state(folder, layer, optimizer, {'epoch': 1})
    state.save_state(folder, layer, optimizer, {'epoch': 2})
    assert state.read_state_meta(folder)['epoch'] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ['state']
    with pytest.raises(RuntimeError, match='disk full'):
        with atomic_output(folder, folder=True) as temporary:
            (temporary / 'state.json').write_text('{}')
            raise RuntimeError('disk full')
    assert state.read_state_meta(folder)['epoch'] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ['state']
    fresh = torch.nn.Linear(3, 2)
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=0.5)
    meta = state.load_state(folder, fresh, fresh_optimizer)
    assert meta['epoch'] == 2 and fresh_optimizer.param_groups[0]['betas'] == (0.8, 0.9)
    torch.testing.assert_close(fresh.weight, layer.weight)


def test_other_format_versions_are_refused(tmp_path):
    (tmp_path / 'state.json').write_text(json.dumps({'format_version': 99}))
    with pytest.raises(ValueError, match='format_version 99'):
        state.read_state_meta(tmp_path)


def test_atomic_file_output(tmp_path):
    target = tmp_path / 'a.txt'
    with atomic_output(target) as temporary:
        temporary.write_text('one')
    with pytest.raises(KeyError):
        with atomic_output(target) as temporary:
            temporary.write_text('two')
            raise KeyError('stop')
    assert target.read_text() == 'one' and sorted(tmp_path.iterdir()) == [target]


def test_single_group_state_resumes_into_per_part_groups(tmp_path):
    """States written before per-part groups (one Adam group) load into several groups."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    state.save_state(tmp_path / 'state', model, optimizer, {'epoch': 1})
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    groups = [{'params': list(fresh[0].parameters()), 'lr_mult': 1.0, 'part': '0'},
              {'params': list(fresh[1].parameters()), 'lr_mult': 3.0, 'part': '1'}]
    split = torch.optim.Adam(groups, lr=0.01)
    state.load_state(tmp_path / 'state', fresh, split)
    assert [g['lr_mult'] for g in split.param_groups] == [1.0, 3.0]
    old_slots = optimizer.state_dict()['state']
    new_slots = split.state_dict()['state']
    for index in old_slots:
        torch.testing.assert_close(new_slots[index]['exp_avg'], old_slots[index]['exp_avg'])
    other = torch.optim.Adam([{'params': list(fresh[0].parameters())}], lr=0.01)
    with pytest.raises(ValueError, match='parameter group'):
        state.load_state(tmp_path / 'state', fresh, other)

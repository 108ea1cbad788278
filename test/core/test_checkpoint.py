"""Tests of safetensors checkpoints: identical round trip, strict loading, clear errors."""

import json
import os
import struct
import zipfile

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tarfuse_ros.core.checkpoint import (CheckpointError, FORMAT_VERSION, load_checkpoint,
                                         METADATA_KEY, read_checkpoint_config, save_checkpoint)
from tarfuse_ros.core.engine import FusionEngine
from tarfuse_ros.core.model import build_model, TarFuseConfig
from tarfuse_ros.core.onnx_backend import OnnxFusionEngine, OnnxModelError
from tarfuse_ros.core.paths import default_weights_path
from tarfuse_ros.core.runtime import DeviceUnavailableError
import torch

DEFAULT = default_weights_path()
CONFIG = TarFuseConfig(registration='paper', msrb_channels=(8, 16, 16),
                       detect_channels=(16, 24, 32), reg_max=8, num_classes=2,
                       class_names=('person', 'car'))


@pytest.fixture(scope='module')
def trained_like_model():
    """Return a model whose weights and BatchNorm statistics differ from a fresh one."""
    torch.manual_seed(0)
    model = build_model(CONFIG)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
        model.train()
        model(torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64))  # updates running stats
    model.eval()
    return model


def _inputs():
    generator = torch.Generator().manual_seed(1)
    return torch.rand(1, 1, 64, 96, generator=generator), torch.rand(1, 1, 64, 96,
                                                                     generator=generator)


def _tensors(model):
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def test_round_trip_gives_bit_identical_outputs(tmp_path, trained_like_model):
    path = save_checkpoint(tmp_path / 'model.safetensors', trained_like_model,
                           provenance={'data': ['roadscene'], 'epochs': 3})
    loaded = load_checkpoint(path)
    assert not loaded.training
    assert loaded.config == CONFIG
    ir, vi = _inputs()
    expected = trained_like_model.predict_raw(ir, vi)
    actual = loaded.predict_raw(ir, vi)
    assert expected['flow'].abs().max() > 0  # the comparison is not between zero flows
    for key in ('fused', 'flow', 'registered_ir', 'det'):
        assert torch.equal(expected[key], actual[key]), key
    for name, tensor in trained_like_model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_a_checkpoint_is_readable_as_a_file_written_by_open(tmp_path, trained_like_model):
    # It was 0o600 (written through tempfile.mkstemp): a node run as another user (a service,
    # a container user) could not read the weights tarfuse-train saved.
    previous = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / 'model.safetensors', trained_like_model)
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644


def test_config_metadata_content(tmp_path, trained_like_model):
    path = save_checkpoint(tmp_path / 'm.safetensors', trained_like_model,
                           provenance={'command': 'tarfuse-train --epochs 3'})
    config = read_checkpoint_config(path)
    assert config['format_version'] == FORMAT_VERSION
    assert config['model']['class_names'] == ['person', 'car']
    assert config['provenance'] == {'command': 'tarfuse-train --epochs 3'}
    assert config['input']['size_multiple'] == 32
    # A safetensors file: an 8-byte header length, then a JSON header (no pickle anywhere).
    raw = path.read_bytes()
    (length,) = struct.unpack('<Q', raw[:8])
    header = json.loads(raw[8:8 + length])
    assert METADATA_KEY in header['__metadata__']
    assert load_checkpoint(path).checkpoint_config == config


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match='does not exist'):
        load_checkpoint(tmp_path / 'nope.safetensors')
    with pytest.raises(CheckpointError, match='does not exist'):
        read_checkpoint_config(tmp_path / 'nope.safetensors')


@pytest.mark.parametrize('keep', [0.5, 0.999, 30])
def test_truncated_file(tmp_path, trained_like_model, keep):
    path = save_checkpoint(tmp_path / 'm.safetensors', trained_like_model)
    raw = path.read_bytes()
    cut = int(len(raw) * keep) if keep < 1 else keep
    path.write_bytes(raw[:cut])
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        load_checkpoint(path)


def test_corrupt_file(tmp_path):
    path = tmp_path / 'garbage.safetensors'
    path.write_bytes(b'\x00\x01 this is not a checkpoint' * 10)
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        load_checkpoint(path)


@pytest.mark.parametrize('empty', ['', ' '])
def test_an_empty_path_is_named_as_such(empty):
    # It said '. is a directory, not a weights file' (Path('') is the current folder).
    for load in (load_checkpoint, FusionEngine):
        with pytest.raises(CheckpointError) as raised:
            load(empty)
        message = str(raised.value)
        assert message.startswith(f'the checkpoint path is empty ({empty!r}): pass the path of '
                                  f'a .safetensors file'), message
        assert 'None for the shipped' in message
    with pytest.raises(OnnxModelError, match='the onnxruntime backend needs an .onnx file'):
        OnnxFusionEngine(empty)


def test_a_zip_archive_of_weights_is_named_as_such_not_as_a_pytorch_checkpoint(tmp_path):
    # Weights downloaded as a zip were called 'a PyTorch pickle/zip checkpoint' to convert,
    # 'only if you trust its source: unpickling runs code'.
    archive = tmp_path / 'tarfuse_default.zip'
    with zipfile.ZipFile(archive, 'w') as handle:
        handle.write(DEFAULT, 'tarfuse_default.safetensors')
    with pytest.raises(CheckpointError) as raised:
        FusionEngine(archive)
    assert str(raised.value) == (
        f'{archive} is a zip archive (holding tarfuse_default.safetensors), not a .safetensors '
        f'checkpoint: extract the .safetensors file from it and pass that')
    pytorch = tmp_path / 'model.pt'
    torch.save({'weight': torch.zeros(2)}, pytorch)  # a zip too, with data.pkl: still named
    with pytest.raises(CheckpointError, match='is a PyTorch pickle/zip checkpoint'):
        FusionEngine(pytorch)


def test_a_directory_is_named_as_such(tmp_path):
    # It was reported as "does not exist" (e.g. FusionEngine('/tmp'), weights:=/tmp).
    for load in (load_checkpoint, read_checkpoint_config, FusionEngine):
        with pytest.raises(CheckpointError) as raised:
            load(tmp_path)
        assert str(raised.value).startswith(f'{tmp_path} is a directory, not a weights file')


class _Trap:
    """Makes a folder when unpickled: proof that a file holding it was never unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.mark.parametrize('zipped', [True, False], ids=['zip', 'legacy-pickle'])
def test_a_pytorch_checkpoint_is_named_as_such_and_never_unpickled(tmp_path, zipped):
    # It was reported as "truncated or corrupt".
    path = tmp_path / 'model.pt'
    trap = tmp_path / 'unpickled'
    torch.save({'weight': torch.zeros(3), 'trap': _Trap(trap)}, str(path),
               _use_new_zipfile_serialization=zipped)
    head = path.read_bytes()[:4]
    assert head == b'PK\x03\x04' if zipped else head[:2] == b'\x80\x02'
    for load in (load_checkpoint, read_checkpoint_config, FusionEngine):
        with pytest.raises(CheckpointError) as raised:
            load(path)
        message = str(raised.value)
        assert message.startswith(f'{path} is a PyTorch pickle/zip checkpoint, not safetensors: '
                                  'convert it (safetensors.torch.save_file'), message
        assert 'truncated' not in message and '\n' not in message
    assert not trap.exists()


@pytest.mark.parametrize('name', ['model.onnx', 'model.bin'])
def test_an_onnx_file_is_named_as_such(tmp_path, name):
    # It was reported as "truncated or corrupt ... copy or re-export it again" (backend torch
    # or tarfuse-export given the .onnx file that tarfuse-export wrote).
    import onnx
    from onnx import helper, TensorProto
    model = helper.make_model(helper.make_graph(
        [helper.make_node('Identity', ['x'], ['y'])], 'other',
        [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1])]),
        producer_name='tarfuse_ros', opset_imports=[helper.make_opsetid('', 17)])
    path = tmp_path / name
    onnx.save(model, str(path))
    for load in (load_checkpoint, read_checkpoint_config, FusionEngine):
        with pytest.raises(CheckpointError) as raised:
            load(path)
        message = str(raised.value)
        assert message.startswith(f'{path} is an ONNX model (tarfuse-export writes them), not a '
                                  f'.safetensors checkpoint: run it with the onnxruntime '
                                  f'backend'), message
        assert 'truncated' not in message and '\n' not in message


def test_wrong_format_version(tmp_path, trained_like_model):
    header = {'format_version': 99, 'model': CONFIG.to_dict(), 'input': {}, 'provenance': {}}
    path = tmp_path / 'future.safetensors'
    save_file(_tensors(trained_like_model), str(path), metadata={METADATA_KEY: json.dumps(header)})
    with pytest.raises(CheckpointError, match='format_version 99'):
        load_checkpoint(path)


def test_file_without_tarfuse_metadata(tmp_path, trained_like_model):
    path = tmp_path / 'plain.safetensors'
    save_file(_tensors(trained_like_model), str(path))
    with pytest.raises(CheckpointError, match='not a TarFuse checkpoint'):
        load_checkpoint(path)


def test_mismatched_tensors(tmp_path, trained_like_model):
    header = {'format_version': FORMAT_VERSION, 'model': CONFIG.to_dict(), 'input': {},
              'provenance': {}}
    metadata = {METADATA_KEY: json.dumps(header)}
    # Weights of another architecture under this config: shapes differ.
    other = build_model(TarFuseConfig(registration='paper', msrb_channels=(8, 16, 24),
                                      detect_channels=(16, 24, 32), reg_max=8, num_classes=2,
                                      class_names=('person', 'car')))
    path = tmp_path / 'other.safetensors'
    save_file(_tensors(other), str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match='shape mismatch'):
        load_checkpoint(path)
    # A tensor removed and one added.
    tensors = _tensors(trained_like_model)
    tensors.pop('reconstruction.layers.2.weight')
    tensors['extra.weight'] = torch.zeros(3)
    path = tmp_path / 'edited.safetensors'
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match='missing: reconstruction.layers.2.weight'):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match='unexpected: extra.weight'):
        load_checkpoint(path)


def test_integer_or_non_finite_weights_are_refused_by_name(tmp_path):
    # Both loaded: load_state_dict cast an int32 tensor into the float weights, and NaN
    # weights (a diverged run) gave an engine with black fused images and no detections.
    from safetensors import safe_open
    from safetensors.torch import load_file
    from tarfuse_ros.core.paths import default_weights_path
    shipped = str(default_weights_path())
    with safe_open(shipped, framework='pt') as handle:
        metadata = handle.metadata()
    name = 'reconstruction.layers.2.weight'
    cases = {'int32': ('integer and float dtypes swapped (file != model): '
                       f'{name} torch.int32 != torch.float32'),
             'nan': f'tensors hold NaN or infinite values ({name})',
             'inf': f'tensors hold NaN or infinite values ({name})'}
    for case, words in cases.items():
        tensors = load_file(shipped)
        assert name in tensors
        if case == 'int32':
            tensors[name] = (tensors[name] * 100).to(torch.int32)
        else:
            tensors[name][0] = float(case)
        path = tmp_path / f'{case}.safetensors'
        save_file(tensors, str(path), metadata=metadata)
        with pytest.raises(CheckpointError) as raised:
            FusionEngine(path)
        assert words in str(raised.value), str(raised.value)


def test_invalid_stored_config(tmp_path, trained_like_model):
    header = {'format_version': FORMAT_VERSION, 'model': {'no_such_field': 1}}
    path = tmp_path / 'badconfig.safetensors'
    save_file(_tensors(trained_like_model), str(path),
              metadata={METADATA_KEY: json.dumps(header)})
    with pytest.raises(CheckpointError, match='config is invalid'):
        load_checkpoint(path)


@pytest.mark.parametrize('model, words', [
    # A typo was named among the 44 known keys only.
    ({'num_clases': 2}, "unknown TarFuseConfig keys ['num_clases'] (a typo? 'num_clases' -> "
                        "'num_classes')"),
    # A string loaded as one-letter class names ('pc': p and c) with num_classes 2.
    ({'class_names': 'pc'}, "class_names must be a list of names, got 'pc' (one name: write "
                            'it as a list, [name])'),
    ({'class_names': 2}, 'class_names must be a list of names, got 2)')])
def test_a_stored_config_key_of_a_wrong_name_or_type_is_named(tmp_path, trained_like_model,
                                                              model, words):
    header = {'format_version': FORMAT_VERSION, 'model': {**CONFIG.to_dict(), **model}}
    header['model'].pop('num_classes' if 'num_clases' in model else 'no such key', None)
    path = tmp_path / 'edited.safetensors'
    save_file(_tensors(trained_like_model), str(path),
              metadata={METADATA_KEY: json.dumps(header)})
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(path)
    assert words in str(raised.value), str(raised.value)


def test_a_stored_config_the_network_cannot_be_built_from_names_the_file(tmp_path):
    # Valid field by field, refused when the network is built: a plain ValueError that named
    # neither the file nor what to do (the node called it a bad parameter of its own).
    tensors = load_file(str(DEFAULT))
    with safe_open(str(DEFAULT), framework='pt') as handle:
        header = json.loads(handle.metadata()[METADATA_KEY])
    header['model']['registration_skip_levels'] = [7]
    path = tmp_path / 'skip7.safetensors'
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(header)})
    with pytest.raises(CheckpointError) as raised:
        FusionEngine(path)
    assert str(raised.value).startswith(
        f'{path}: the stored model config is invalid for this version of tarfuse_ros '
        f'(registration_skip_levels [7] must name learnt levels 0..2'), str(raised.value)
    assert str(raised.value).endswith('re-export the checkpoint')


@pytest.mark.skipif(torch.cuda.is_available(), reason='CUDA is here: no error to name')
def test_a_device_that_is_absent_or_unknown_is_named_not_the_file(tmp_path, trained_like_model):
    # map_location 'cuda' without a GPU said the file was truncated or corrupt ('copy or
    # re-export it again'), 'CPU' "Expected one of cpu, cuda, ... device type".
    path = save_checkpoint(tmp_path / 'model.safetensors', trained_like_model)
    for device in ('cuda', 'cuda:1'):
        with pytest.raises(DeviceUnavailableError, match=f"device '{device}' was requested but "
                                                         f'CUDA is not available') as raised:
            load_checkpoint(path, map_location=device)
        assert 'corrupt' not in str(raised.value)
    with pytest.raises(ValueError, match="device must be cpu, cuda or cuda:N, got 'mps'"):
        load_checkpoint(path, map_location='mps')
    for device in ('CPU', torch.device('cpu')):
        model = load_checkpoint(path, map_location=device)
        assert next(model.parameters()).device.type == 'cpu'


def test_checkpoint_error_is_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_unserialisable_provenance(tmp_path, trained_like_model):
    with pytest.raises(ValueError, match='JSON'):
        save_checkpoint(tmp_path / 'x.safetensors', trained_like_model,
                        provenance={'bad': object()})
    assert not list(tmp_path.iterdir())


def test_checkpoint_from_before_the_matching_registration_loads_as_paper(
        tmp_path, trained_like_model):
    model_dict = CONFIG.to_dict()
    del model_dict['registration']
    for key in ('pyramid_channels', 'estimator_channels', 'corr_radius', 'corr_radius_finest',
                'global_stage'):
        del model_dict[key]
    header = {'format_version': FORMAT_VERSION, 'model': model_dict, 'input': {},
              'provenance': {}}
    path = tmp_path / 'old.safetensors'
    save_file(_tensors(trained_like_model), str(path),
              metadata={METADATA_KEY: json.dumps(header)})
    loaded = load_checkpoint(path)
    assert loaded.config.registration == 'paper'
    for name, value in trained_like_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_matching_checkpoint_with_paper_tensors_names_the_mismatch(
        tmp_path, trained_like_model):
    header = {'format_version': FORMAT_VERSION,
              'model': {**CONFIG.to_dict(), 'registration': 'match'}, 'input': {},
              'provenance': {}}
    path = tmp_path / 'confused.safetensors'
    save_file(_tensors(trained_like_model), str(path),
              metadata={METADATA_KEY: json.dumps(header)})
    with pytest.raises(CheckpointError, match='missing: registration.estimators'):
        load_checkpoint(path)

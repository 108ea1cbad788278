"""Mirror averaging of the flow (``model.flip_average``; the shipped medical model, issue 14).

The real pair needs the shared Harvard MRI-PET set (skipped with the reason otherwise).
"""

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from tarfuse_ros.core.checkpoint import load_checkpoint, save_checkpoint
from tarfuse_ros.core.export import export_onnx, VERIFY_TOLERANCES
from tarfuse_ros.core.model.tarfuse import build_model, TarFuseConfig
from tarfuse_ros.core.paths import share_dir, shared_datasets_dir
import torch


def _mirror_flow(flow):
    """Mirror a (B, 2, H, W) flow left-right: columns reversed, x component negated."""
    flow = torch.flip(flow, dims=(3,))
    return torch.cat((-flow[:, :1], flow[:, 1:]), dim=1)


def _pet_pair():
    base = shared_datasets_dir()
    folder = None if base is None else Path(base) / 'harvard_mri_pet'
    if folder is None or not (folder / 'ir' / '11.png').is_file():
        pytest.skip('the shared harvard_mri_pet set is absent (set TARFUSE_SHARED to the folder '
                    'holding datasets/harvard_mri_pet)')
    pet = cv2.cvtColor(cv2.imread(str(folder / 'ir' / '11.png'), cv2.IMREAD_COLOR),
                       cv2.COLOR_BGR2GRAY)
    mri = cv2.imread(str(folder / 'vi' / '11.png'), cv2.IMREAD_GRAYSCALE)
    # A known misalignment: 6 deg about the centre and (7, -4) px.
    matrix = cv2.getRotationMatrix2D((127.5, 127.5), 6.0, 1.0)
    matrix[:, 2] += (7.0, -4.0)
    pet = cv2.warpAffine(pet, matrix, pet.shape[::-1])
    return tuple(torch.from_numpy(image.astype(np.float32) / 255.0)[None, None]
                 for image in (pet, mri))


def test_flip_average_config_is_checked_and_old_configs_have_it_off():
    assert TarFuseConfig().flip_average is False
    old = TarFuseConfig().to_dict()
    del old['flip_average']  # checkpoints written before the field existed
    assert TarFuseConfig.from_dict(old).flip_average is False
    config = TarFuseConfig(global_stage=False, flip_average=True)
    assert TarFuseConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match='flip_average needs a model without the orientation'):
        TarFuseConfig(global_features='orientation', flip_average=True)
    with pytest.raises(ValueError, match='flip_average must be true or false'):
        TarFuseConfig(global_stage=False, flip_average=1)


def test_shipped_medical_model_averages_the_mirrored_flow_on_a_real_pair():
    ir, vi = _pet_pair()
    model = load_checkpoint(share_dir() / 'models' / 'tarfuse_medical.safetensors').eval()
    assert model.config.flip_average is True
    mirrored_ir, mirrored_vi = torch.flip(ir, dims=(3,)), torch.flip(vi, dims=(3,))
    with torch.no_grad():
        averaged = model(ir, vi)['flow']
        averaged_of_mirror = model(mirrored_ir, mirrored_vi)['flow']
        model.config = replace(model.config, flip_average=False)
        plain = model(ir, vi)['flow']
        plain_of_mirror = model(mirrored_ir, mirrored_vi)['flow']
    # The network alone is not mirror-symmetric; the average is, exactly (up to float32),
    # which a wrong sign or a missing flip of the second pass would break.
    assert float((_mirror_flow(plain_of_mirror) - plain).abs().max()) > 0.1
    assert float((_mirror_flow(averaged_of_mirror) - averaged).abs().max()) < 1e-3
    assert torch.allclose(averaged, 0.5 * (plain + _mirror_flow(plain_of_mirror)), atol=1e-4)
    # It still registers: the mean flow moves the PET back by about the known shift.
    assert float(averaged.abs().mean()) > 2.0


def test_a_flip_average_model_exports_to_onnx_with_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = build_model(TarFuseConfig(global_stage=False, detect=False,
                                      flip_average=True)).eval()
    path = tmp_path / 'flip.safetensors'
    save_checkpoint(path, model, provenance={'note': 'random init, flip_average export test'})
    report = export_onnx(path, tmp_path / 'flip.onnx')
    assert report.max_abs_diff
    for name, value in report.max_abs_diff.items():
        assert value <= VERIFY_TOLERANCES['float32'][name], (name, value)

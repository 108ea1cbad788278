"""Tests of the TarFuse network: shapes, identity start, modes, config, gradients."""

import json

import pytest
from tarfuse_ros.core.model import (build_model, parameter_counts, TarFuse, TarFuseConfig,
                                    warp)
import torch

H, W = 64, 96


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return build_model()


def _inputs(batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 1, H, W, generator=generator),
            torch.rand(batch, 1, H, W, generator=generator))


def _anchors(height, width):
    return sum((height // s) * (width // s) for s in (8, 16, 32))


def test_default_model_has_about_one_million_parameters(model):
    counts = parameter_counts(model)
    assert 0.9e6 <= counts['total'] <= 1.2e6, counts
    assert sum(v for k, v in counts.items() if k != 'total') == counts['total']
    assert counts['cseb_ir'] == counts['cseb_vi'] > 0  # two unshared CSEBs of one design
    assert model.registration.cseb_ir is not model.registration.cseb_vi


def test_forward_shapes_and_ranges_in_training_mode(model):
    model.train()
    ir, vi = _inputs()
    out = model(ir, vi, ir_aligned=ir)
    assert out['fused'].shape == (2, 1, H, W)
    assert 0 <= out['fused'].min() and out['fused'].max() <= 1
    assert out['flow'].shape == (2, 2, H, W)
    assert out['registered_ir'].shape == (2, 1, H, W)
    assert set(out['det']) == {'boxes', 'scores', 'feats'}
    assert out['det']['scores'].shape == (2, 3, _anchors(H, W))
    assert [tuple(f.shape[2:]) for f in out['det']['feats']] == [(8, 12), (4, 6), (2, 3)]
    features = out['features']
    for name in ('c_ir', 's_ir', 'c_vi', 's_vi', 'c_ir_registered', 's_ir_registered',
                 'c_ir_aligned', 's_ir_aligned'):
        assert features[name].shape == (2, model.config.feature_channels, H, W), name
    # The IR extractors are shared between the deformed and the aligned IR.
    assert torch.allclose(features['c_ir_aligned'], features['c_ir'])


def test_aligned_features_only_when_aligned_ir_given(model):
    out = model(*_inputs())
    assert 'c_ir_aligned' not in out['features']


def test_untrained_flow_is_identity(model):
    ir, vi = _inputs()
    out = model.predict_raw(ir, vi)
    # Zero up to the float rounding of the global stage's affine fit of a zero flow.
    assert out['flow'].abs().max() < 1e-4
    assert torch.allclose(out['registered_ir'], ir, atol=1e-5)


def test_registered_ir_is_ir_warped_by_flow(model):
    model.train()
    ir, vi = _inputs()
    with torch.no_grad():
        head = model.registration.estimators[0].head  # the finest residual flow
        head.bias.fill_(0.75)  # a non-zero flow
        out = model(ir, vi)
        head.bias.zero_()
    assert out['flow'].abs().min() > 0.1
    assert torch.allclose(out['registered_ir'], warp(ir, out['flow']), atol=1e-6)


def test_eval_mode_det_tuple_and_predict_raw(model):
    model.train()
    ir, vi = _inputs()
    raw = model.predict_raw(ir, vi)
    assert model.training  # mode restored
    assert raw['det'].shape == (2, 4 + 3, _anchors(H, W))
    assert not raw['det'].requires_grad and not raw['fused'].requires_grad
    probs = raw['det'][:, 4:]
    assert (probs >= 0).all() and (probs <= 1).all()
    model.eval()
    with torch.no_grad():
        out = model(ir, vi)
    assert isinstance(out['det'], tuple)
    assert torch.allclose(out['det'][0], raw['det'])
    model.train()


def test_batch_samples_are_independent_in_eval(model):
    ir, vi = _inputs(batch=2)
    both = model.predict_raw(ir, vi)
    single = model.predict_raw(ir[1:], vi[1:])
    assert torch.allclose(both['fused'][1:], single['fused'], atol=1e-5)
    assert torch.allclose(both['det'][1:], single['det'], atol=1e-3)


def test_every_parameter_receives_a_gradient():
    torch.manual_seed(1)
    net = build_model(TarFuseConfig(msrb_channels=(8, 8, 8), detect_channels=(16, 16, 16),
                                    reg_max=4))
    net.train()
    ir, vi = _inputs()
    out = net(ir, vi, ir_aligned=ir)
    total = out['fused'].mean() + out['flow'].mean() + out['registered_ir'].mean()
    total = total + out['det']['boxes'].mean() + out['det']['scores'].mean()
    total.backward()
    # (ultralytics' DFL projection is a fixed, non-trainable convolution.)
    missing = [name for name, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


def test_cast_and_move_reset_detect_anchors(model):
    ir, vi = _inputs(batch=1)
    model.predict_raw(ir, vi)
    double = build_model().double()
    double.predict_raw(ir.double(), vi.double())
    out = double.float().predict_raw(ir, vi)
    assert out['det'].dtype == torch.float32


@pytest.mark.parametrize('ir_shape, vi_shape, message', [
    ((1, 1, 60, 96), (1, 1, 60, 96), 'multiples of 32'),
    ((1, 3, 64, 96), (1, 3, 64, 96), r'\(B, 1, H, W\)'),
    ((1, 1, 64, 96), (1, 1, 64, 128), 'same shape'),
    ((1, 1, 64), (1, 1, 64), r'\(B, 1, H, W\)'),
])
def test_bad_inputs_raise_value_error(model, ir_shape, vi_shape, message):
    with pytest.raises(ValueError, match=message):
        model(torch.rand(ir_shape), torch.rand(vi_shape))


def test_integer_input_rejected(model):
    with pytest.raises(ValueError, match='floating point'):
        model(torch.zeros(1, 1, 64, 64, dtype=torch.uint8), torch.zeros(1, 1, 64, 64))


def test_config_round_trip_through_json():
    config = TarFuseConfig(num_classes=2, class_names=('car', 'person'), reg_max=8,
                           msrb_channels=[16, 24, 32])
    restored = TarFuseConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert isinstance(restored.msrb_channels, tuple)
    net = build_model(config.to_dict())
    assert isinstance(net, TarFuse) and net.detect.nc == 2 and net.detect.reg_max == 8
    assert net.class_names == ('car', 'person')


def test_config_validation():
    with pytest.raises(ValueError, match='num_classes'):
        TarFuseConfig(num_classes=2)
    with pytest.raises(ValueError, match='unknown TarFuseConfig keys'):
        TarFuseConfig.from_dict({'width': 3})
    assert TarFuseConfig.from_dict({'class_names': ['a']}).num_classes == 1


def test_detect_head_is_ultralytics_detect_with_strides(model):
    from ultralytics.nn.modules.head import Detect
    assert isinstance(model.detect, Detect)
    assert model.detect.stride.tolist() == [8.0, 16.0, 32.0]
    legacy = build_model(TarFuseConfig(detect_legacy=True))
    assert legacy.detect.legacy and isinstance(legacy.detect, Detect)


def test_added_neck_blocks_start_as_the_identity():
    """A deeper neck built from a trained one gives the same outputs until it is trained."""
    torch.manual_seed(3)
    config = TarFuseConfig(detect_channels=(16, 24, 32), reg_max=4)
    shallow = build_model(config)
    for param in shallow.parameters():
        param.data.add_(0.01 * torch.randn_like(param))
    deeper = build_model(TarFuseConfig.from_dict(dict(config.to_dict(), neck_blocks=2)))
    state = deeper.state_dict()
    state.update(shallow.state_dict())
    deeper.load_state_dict(state)
    assert sum(p.numel() for p in deeper.parameters()) > \
        sum(p.numel() for p in shallow.parameters())
    ir, vi = _inputs(batch=1)
    a, b = shallow.predict_raw(ir, vi), deeper.predict_raw(ir, vi)
    assert torch.equal(a['det'], b['det']) and torch.equal(a['fused'], b['fused'])
    with pytest.raises(ValueError, match='neck_blocks'):
        TarFuseConfig(neck_blocks=-1)


def test_top_down_neck_starts_as_the_identity_and_then_mixes_the_levels():
    """Check the top-down path: the identity until trained, then P3 sees what only P5 sees.

    Added to a trained neck it changes nothing; once its scales move, P3 depends on P5's context
    and a gradient reaches its weights.
    """
    from tarfuse_ros.core.model.heads import DetectionNeck
    torch.manual_seed(4)
    config = TarFuseConfig(detect_channels=(16, 24, 32), reg_max=4)
    plain = build_model(config)
    for param in plain.parameters():
        param.data.add_(0.01 * torch.randn_like(param))
    top_down = build_model(TarFuseConfig.from_dict(dict(config.to_dict(), neck_top_down=True)))
    state = top_down.state_dict()
    fresh = sorted(set(state) - set(plain.state_dict()))
    assert fresh and all(name.startswith('neck.top_down.') for name in fresh)
    state.update(plain.state_dict())
    top_down.load_state_dict(state)
    added = sum(p.numel() for p in top_down.parameters()) - \
        sum(p.numel() for p in plain.parameters())
    assert added == (16 + 24) * 16 + 2 * 16 + (24 + 32) * 24 + 2 * 24  # two 1x1 convs + BN
    ir, vi = _inputs(batch=1)
    a, b = plain.predict_raw(ir, vi), top_down.predict_raw(ir, vi)
    assert torch.equal(a['det'], b['det']) and torch.equal(a['fused'], b['fused'])
    # Once the path has weight, P3 sees a change that lies outside its receptive field.
    neck = DetectionNeck(4, (8, 8), (8, 8, 8), top_down=True).eval()
    for layer in neck.top_down:
        torch.nn.init.ones_(layer[1].weight)
    x = torch.rand(1, 4, 256, 256)
    y = x.clone()
    y[:, :, 80:112, 80:112] = 0.0  # beyond P3's top-left cells' reach, within P5's
    with torch.no_grad():
        p3x, p3y = neck(x)[0], neck(y)[0]
        plain_neck = DetectionNeck(4, (8, 8), (8, 8, 8)).eval()
        plain_neck.load_state_dict({k: v for k, v in neck.state_dict().items()
                                    if not k.startswith('top_down.')})
        plain_x, plain_y = plain_neck(x)[0], plain_neck(y)[0]
    assert p3x.shape == (1, 8, 32, 32)
    assert torch.equal(plain_x[:, :, :4, :4], plain_y[:, :, :4, :4])
    # (Small in an untrained neck, but the plain path above is bit-identical.)
    assert float((p3x[:, :, :4, :4] - p3y[:, :, :4, :4]).abs().max()) > 0
    with pytest.raises(ValueError, match='neck_top_down'):
        TarFuseConfig(neck_top_down='yes')


def _detect_on_enlarged_features(model, ir, vi, size):
    """Eval-mode ``det`` of ``model``'s neck and head on its fused features resized to size."""
    import torch.nn.functional as F
    with torch.no_grad():
        out = model(ir, vi)
        features = torch.cat([out['features'][k] for k in (
            'c_ir_registered', 's_ir_registered', 'c_vi', 's_vi')], dim=1)
        big = F.interpolate(features, size=size, mode='bilinear', align_corners=False)
        return model.detect(model.neck(big))[0].clone()


def test_detect_min_long_side_enlarges_the_features_of_small_frames_only():
    from dataclasses import replace
    torch.manual_seed(0)
    plain = build_model().eval()
    enlarging = build_model(replace(plain.config, detect_min_long_side=192)).eval()
    enlarging.load_state_dict(plain.state_dict())
    ir, vi = _inputs()  # 64x96: the features go to the neck at 128x192
    raw = enlarging.predict_raw(ir, vi)
    base = plain.predict_raw(ir, vi)
    assert raw['det'].shape == (2, 4 + 3, _anchors(128, 192))
    # The fused image and the registration are those of the frame's own resolution.
    for key in ('fused', 'flow', 'registered_ir'):
        assert torch.equal(raw[key], base[key]), key
    # The same as the neck and head run by hand on the enlarged features, boxes halved.
    by_hand = _detect_on_enlarged_features(plain, ir, vi, (128, 192))
    by_hand[:, :4] /= 2.0
    torch.testing.assert_close(raw['det'], by_hand, rtol=1e-5, atol=1e-4)
    assert float(raw['det'][:, 0].max()) <= W + 8 and float(raw['det'][:, 1].max()) <= H + 8
    # Frames whose longer side reaches the setting, training mode and forward: as before.
    large = build_model(replace(plain.config, detect_min_long_side=96)).eval()
    large.load_state_dict(plain.state_dict())
    assert torch.equal(large.predict_raw(ir, vi)['det'], base['det'])
    with torch.no_grad():
        assert torch.equal(enlarging(ir, vi)['det'][0], plain(ir, vi)['det'][0])
    # Sides are rounded to multiples of 32 (a 64x96 frame, 160 px: 96x160 -> 3x5 cells).
    odd = build_model(replace(plain.config, detect_min_long_side=160)).eval()
    odd.load_state_dict(plain.state_dict())
    assert odd.predict_raw(ir, vi)['det'].shape[2] == _anchors(96, 160)
    # Unequal factors per axis: 96x160 at 256 px runs the neck at 160x256 (x 1.6, y 1.67).
    wide = build_model(replace(plain.config, detect_min_long_side=256)).eval()
    wide.load_state_dict(plain.state_dict())
    generator = torch.Generator().manual_seed(5)
    ir, vi = (torch.rand(1, 1, 96, 160, generator=generator) for _ in range(2))
    raw = wide.predict_raw(ir, vi)
    by_hand = _detect_on_enlarged_features(plain, ir, vi, (160, 256))
    by_hand[:, [0, 2]] *= 160 / 256
    by_hand[:, [1, 3]] *= 96 / 160
    torch.testing.assert_close(raw['det'], by_hand, rtol=1e-5, atol=1e-4)
    for bad in (-1, 100):
        with pytest.raises(ValueError, match='detect_min_long_side'):
            TarFuseConfig(detect_min_long_side=bad)


def test_detect_max_long_side_shrinks_the_features_of_large_frames_only():
    """The converse of detect_min_long_side: large frames' features shrunk before the neck."""
    from dataclasses import replace
    torch.manual_seed(0)
    plain = build_model().eval()
    generator = torch.Generator().manual_seed(7)
    ir, vi = (torch.rand(1, 1, 128, 192, generator=generator) for _ in range(2))
    shrinking = build_model(replace(plain.config, detect_max_long_side=96)).eval()
    shrinking.load_state_dict(plain.state_dict())
    raw, base = shrinking.predict_raw(ir, vi), plain.predict_raw(ir, vi)
    assert raw['det'].shape == (1, 4 + 3, _anchors(64, 96))
    for key in ('fused', 'flow', 'registered_ir'):  # the frame's own resolution
        assert torch.equal(raw[key], base[key]), key
    # The neck and head run by hand on the shrunk features, boxes doubled.
    by_hand = _detect_on_enlarged_features(plain, ir, vi, (64, 96))
    by_hand[:, :4] *= 2.0
    torch.testing.assert_close(raw['det'], by_hand, rtol=1e-5, atol=1e-4)
    # Frames within the setting, and training-mode forward, as before.
    within = build_model(replace(plain.config, detect_max_long_side=192)).eval()
    within.load_state_dict(plain.state_dict())
    assert torch.equal(within.predict_raw(ir, vi)['det'], base['det'])
    with torch.no_grad():
        assert torch.equal(shrinking(ir, vi)['det'][0], plain(ir, vi)['det'][0])
    # Both bounds: a small frame is enlarged, a large one shrunk, by the same model.
    both = build_model(replace(plain.config, detect_min_long_side=96,
                               detect_max_long_side=128)).eval()
    both.load_state_dict(plain.state_dict())
    assert both.predict_raw(ir, vi)['det'].shape[2] == _anchors(96, 128)  # 128x192 shrunk
    small = [torch.rand(1, 1, 64, 64, generator=generator) for _ in range(2)]
    assert both.predict_raw(*small)['det'].shape[2] == _anchors(96, 96)  # 64x64 enlarged
    for bad in (-1, 100):
        with pytest.raises(ValueError, match='detect_max_long_side'):
            TarFuseConfig(detect_max_long_side=bad)
    with pytest.raises(ValueError, match='at least detect_min_long_side'):
        TarFuseConfig(detect_min_long_side=640, detect_max_long_side=320)


def test_a_small_detect_max_long_side_keeps_strips_at_least_32_px():
    """detect_max_long_side 64 (accepted) shrank a 512x64 frame's features to 0x64: RuntimeError.

    The shipped model on a real pair cut into strips of the narrowest shape the engine takes.
    """
    from dataclasses import replace

    import cv2
    from tarfuse_ros.core.checkpoint import load_checkpoint
    from tarfuse_ros.core.paths import default_weights_path, share_dir
    shipped = load_checkpoint(default_weights_path()).eval()
    shipped.config = replace(shipped.config, detect_min_long_side=0, detect_max_long_side=64)
    planes = [cv2.imread(str(share_dir() / 'samples' / kind / 'FLIR_00122.jpg'),
                         cv2.IMREAD_GRAYSCALE) for kind in ('ir', 'vi')]
    wide = [torch.from_numpy(cv2.resize(plane, (512, 64), interpolation=cv2.INTER_AREA))
            .float().div(255)[None, None] for plane in planes]
    for ir, vi in (wide, [plane.transpose(2, 3).contiguous() for plane in wide]):
        det = shipped.predict_raw(ir, vi)['det']  # the neck on 32x64 (64x32) features
        assert det.shape == (1, 4 + shipped.config.num_classes, _anchors(32, 64))
        assert torch.isfinite(det).all()


@pytest.mark.parametrize('field, value', [
    ('detect_channels', 8), ('detect_channels', ['a', 80, 96]),
    ('detect_channels', [64.5, 80, 96]), ('neck_stem_channels', '16, 32'),
    ('global_scale_candidates', [1.0, float('inf')]), ('global_scale_candidates', 1.0),
])
def test_list_fields_that_are_not_lists_of_numbers_name_the_field(field, value):
    with pytest.raises(ValueError, match=f'{field} must be a list of'):
        TarFuseConfig(**{field: value})

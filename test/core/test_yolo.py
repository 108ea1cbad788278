"""The ultralytics adapter against the installed ultralytics: fails loudly on an API change.

Every call the package makes into ultralytics goes through ``tarfuse_ros.core.model.yolo``; this
test pins the version it was checked against and exercises each call, so an upgrade shows here
what moved before anything else breaks.
"""

import json
import os
import subprocess
import sys

import pytest
from tarfuse_ros.core.model import yolo
import torch
import ultralytics


def test_installed_ultralytics_is_the_checked_version():
    assert ultralytics.__version__ == yolo.ULTRALYTICS_VERSION, (
        f'ultralytics {ultralytics.__version__} is installed but tarfuse_ros.core.model.yolo was '
        f'checked against {yolo.ULTRALYTICS_VERSION}: re-check Detect (outputs, stride, '
        f'bias_init, legacy, shape), v8DetectionLoss (args, model[-1], parameters) and '
        f'utils.nms.non_max_suppression, then update ULTRALYTICS_VERSION and the pin in '
        f'tools/ros_env/requirements.txt and the README')


def _detect(legacy=False):
    torch.manual_seed(0)
    return yolo.build_detect(3, reg_max=4, channels=(8, 8, 8), legacy=legacy)


def _features(batch=2, size=64):
    return [torch.randn(batch, 8, size // s, size // s) for s in (8, 16, 32)]


def test_detect_outputs_in_train_and_eval_mode():
    detect = _detect()
    assert detect.stride.tolist() == list(yolo.DETECT_STRIDES)
    assert yolo.LegacyDetect.legacy and isinstance(_detect(True), yolo.Detect)
    train = detect.train()(_features())
    assert {'boxes', 'scores', 'feats'} <= set(train)
    anchors = 8 * 8 + 4 * 4 + 2 * 2
    y, preds = detect.eval()(_features())
    assert y.shape == (2, 4 + 3, anchors) and {'boxes', 'scores', 'feats'} <= set(preds)
    assert float(y[:, 4:].detach().min()) >= 0 and float(y[:, 4:].detach().max()) <= 1
    # Anchors are cached per feature shape; forgetting them rebuilds them.
    assert detect.shape is not None
    yolo.forget_anchors(detect)
    assert detect.shape is None
    detect.export = True
    assert detect(_features()).shape == (2, 7, anchors)


def test_anchors_every_call_keeps_a_traced_detect_valid_at_other_sizes():
    detect = _detect().eval().requires_grad_(False)
    yolo.anchors_every_call(detect)
    with torch.no_grad():
        traced = torch.jit.trace(lambda *feats: detect(list(feats))[0], tuple(_features(1, 64)),
                                 check_trace=False)
        larger = _features(1, 96)
        assert torch.allclose(traced(*larger), detect(larger)[0])


def test_loss_reads_the_host_and_scales_with_the_batch():
    detect = _detect().train()
    criterion = yolo.detection_criterion(detect, box=7.5, cls=0.5, dfl=1.5)
    targets = {'batch_idx': torch.tensor([0.0, 1.0]), 'cls': torch.tensor([[0.0], [2.0]]),
               'bboxes': torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.3, 0.3, 0.2, 0.2]])}
    loss, items = criterion(detect(_features()), targets)
    assert loss.shape == (3,) and bool(torch.isfinite(loss).all())
    assert list(items) == ['box_loss', 'cls_loss', 'dfl_loss']
    # The loss comes multiplied by the batch size (DetectionLoss divides it back).
    torch.testing.assert_close(loss.detach() / 2, torch.stack(list(items.values())))
    loss.sum().backward()
    assert detect.cv2[0][0].conv.weight.grad is not None


def test_nms_returns_corner_boxes_in_input_pixels():
    pred = torch.zeros(1, 4 + 3, 3)
    pred[0, :4, 0] = torch.tensor([50.0, 40.0, 20.0, 10.0])  # cx, cy, w, h
    pred[0, 4 + 2, 0] = 0.9
    pred[0, :4, 1] = torch.tensor([51.0, 40.0, 20.0, 10.0])  # overlaps the first
    pred[0, 4 + 2, 1] = 0.8
    out = yolo.non_max_suppression(pred, conf=0.25, iou=0.45, num_classes=3)
    assert len(out) == 1 and out[0].shape == (1, 6)
    torch.testing.assert_close(out[0][0], torch.tensor([40.0, 35.0, 60.0, 45.0, 0.9, 2.0]))
    assert yolo.non_max_suppression(pred, 0.25, 0.45, classes=[0], num_classes=3)[0].numel() == 0


class _SlowClock:
    """A wall clock that advances 3 s per reading: a process starved of CPU (a loaded robot)."""

    def __init__(self):
        self.now = 0.0

    def time(self):
        self.now += 3.0
        return self.now


def test_nms_keeps_every_image_of_a_batch_on_a_slow_machine(monkeypatch):
    """Ultralytics' NMS stops after 2 s + 0.05 s an image, leaving later images without boxes.

    On a machine busy enough (or at a first CUDA call) FusionEngine.infer_batch returned no
    detections for every pair after the first, with only ultralytics' log line to say so.
    """
    import ultralytics.utils.nms as ultralytics_nms
    monkeypatch.setattr(ultralytics_nms, 'time', _SlowClock())
    pred = torch.zeros(3, 4 + 3, 2)
    pred[:, :4, 0] = torch.tensor([50.0, 40.0, 20.0, 10.0])
    pred[:, 4 + 1, 0] = 0.9
    out = yolo.non_max_suppression(pred, conf=0.25, iou=0.45, num_classes=3)
    assert [len(boxes) for boxes in out] == [1, 1, 1]


_PROBE = """
import json, os, socket
hosts = []
lookup = socket.getaddrinfo
socket.getaddrinfo = lambda host, *args: hosts.append(host) or lookup(host, *args)
from tarfuse_ros.core.model import yolo  # imports ultralytics
import ultralytics.utils
print(json.dumps({'env': os.environ.get('YOLO_OFFLINE'), 'hosts': hosts,
                  'online': ultralytics.utils.ONLINE}))
"""


@pytest.mark.parametrize('given', [None, '0'])
def test_importing_the_package_keeps_ultralytics_offline_unless_told(given):
    """Nothing sets YOLO_OFFLINE on a ROS install: the package must keep ultralytics offline.

    Without it ultralytics resolved two DNS names as the node started (seconds where no DNS
    server answers) and could pip-install packages from inside the running node.
    """
    env = {key: value for key, value in os.environ.items() if key != 'YOLO_OFFLINE'}
    if given is not None:
        env['YOLO_OFFLINE'] = given
    result = subprocess.run([sys.executable, '-c', _PROBE], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    if given is None:
        assert seen == {'env': '1', 'hosts': [], 'online': False}
    else:  # the user's choice stands: the probe sees ultralytics' own lookups then
        assert seen['env'] == '0' and 'one.one.one.one' in seen['hosts'], seen

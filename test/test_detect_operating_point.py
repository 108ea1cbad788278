"""benchmarks/detect_operating_point.py: the node's detections at its confidence threshold."""

import json
from pathlib import Path
import sys

from tarfuse_ros.core.paths import default_weights_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
import detect_operating_point as tool  # noqa: E402, I100


def test_the_node_defaults_come_from_its_parameter_file():
    conf, iou = tool.node_defaults()
    assert 0.0 < conf < 1.0 and 0.0 < iou < 1.0


def test_operating_points_of_the_shipped_model_on_the_roadscene_test_pairs(tmp_path, capsys):
    out = tmp_path / 'points.json'
    assert tool.main(['--weights', str(default_weights_path()), '--select', 'rs_test',
                      '--report', '--thresholds', '0.1', '0.5', '--threads', '2',
                      '--out', str(out)]) == 0
    text = capsys.readouterr().out
    assert 'rs_test (10 pairs, chosen on)' in text and '(node default)' in text
    report = json.loads(out.read_text())
    node_conf = report['node_confidence']
    points = report['sets']['rs_test']['points']
    assert [p['conf'] for p in points] == sorted({0.1, 0.5, node_conf})
    assert report['chosen_confidence'] in {0.1, 0.5, node_conf}
    # 7 people, 1 bicycle, 51 cars (model card); a higher threshold never finds more of them.
    for point in points:
        assert {n: c['num_gt'] for n, c in point['per_class'].items()} == {
            'person': 7, 'bicycle': 1, 'car': 51}
        assert all(c['tp'] <= c['num_gt'] for c in point['per_class'].values())
    found = [sum(c['tp'] for c in p['per_class'].values()) for p in points]
    assert found == sorted(found, reverse=True) and found[0] > 0
    assert points[0]['recall'] >= points[-1]['recall']

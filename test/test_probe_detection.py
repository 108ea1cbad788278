"""benchmarks/probe_detection.py: the held-out detection probe of the selection rules."""

import json
from pathlib import Path
import sys

from tarfuse_ros.core.paths import default_weights_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
import probe_detection as tool  # noqa: E402, I100


def test_probe_scores_the_shipped_model_on_the_labelled_roadscene_test_pairs(tmp_path, capsys):
    out = tmp_path / 'probe.json'
    weights = str(default_weights_path())
    assert tool.main(['--set', 'rs_test', '--weights', weights, '--threads', '2',
                      '--out', str(out)]) == 0
    line = capsys.readouterr().out
    assert 'rs_test' in line and '10 pairs, 59 boxes' in line
    report = json.loads(out.read_text())
    summary = report['summary']
    # The 10 labelled test pairs hold 7 people, 1 bicycle and 51 cars (model card, detection).
    assert {name: c['num_gt'] for name, c in summary['per_class'].items()} == {
        'person': 7, 'bicycle': 1, 'car': 51}
    assert len(report['detections']) == 10
    assert 0.1 < summary['map50'] <= 1.0  # the shipped head finds cars and people
    # Only confident boxes: fewer detections and a lower AP (recall is cut).
    strict, _ = tool.probe('rs_test', weights, conf=0.6)
    assert strict['num_detections'] < summary['num_detections']
    assert strict['map50'] < summary['map50']

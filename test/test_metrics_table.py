"""benchmarks/metrics_table.py: one markdown table of several tarfuse-eval results."""

import json
from pathlib import Path
import subprocess
import sys

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
import metrics_table  # noqa: E402, I100

SCRIPT = Path(__file__).resolve().parents[1] / 'benchmarks' / 'metrics_table.py'
TNO = Path(__file__).resolve().parent / 'data' / 'datasets' / 'tno'


@pytest.fixture(scope='module')
def evaluated(tmp_path_factory):
    """Return the metrics.json of a real tarfuse-eval run (shipped weights, one TNO pair)."""
    from tarfuse_ros.tools.evaluate import main
    out = tmp_path_factory.mktemp('eval')
    assert main(['--data', str(TNO), '--split', 'all', '--out', str(out), '--max-side', '96',
                 '--max-pairs', '1', '--figures', '0', '--no-progress', '--threads', '1']) == 0
    return out / 'metrics.json'


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=60)


def test_a_row_names_the_run_its_set_and_the_size_its_epe_is_in(evaluated, capsys):
    """Each row says which set, split, pairs and size it is; a note gives the units.

    The rows named neither the set, the pairs nor the size the EPE (px) was measured at.
    """
    assert metrics_table.main([f'tno96={evaluated}']) == 0
    lines = capsys.readouterr().out.splitlines()
    result = json.loads(evaluated.read_text())
    assert lines[0].startswith('| run | set | split | pairs | max side | EPE px | EPE cut % |')
    cells = [cell.strip() for cell in lines[2].strip('|').split('|')]
    assert cells[:5] == ['tno96', 'tno', 'all', '1', '96']
    assert float(cells[5]) == pytest.approx(result['registration']['EPE'], abs=5e-3)
    assert cells[-2:] == ['-', '-']  # TNO has no labels: no mAP
    assert lines[3] == '' and lines[4].startswith('EPE: mean end-point error in px of the ')


def test_help_and_bad_arguments_fail_with_one_line(evaluated, tmp_path):
    """--help helps; a bad argument is refused in one line before any output.

    --help raised FileNotFoundError: [Errno 2] No such file or directory: ''; a missing or
    foreign file a traceback after the table's header had been printed.
    """
    done = _run('--help')
    assert done.returncode == 0 and 'NAME=metrics.json' in done.stdout, done.stderr
    (tmp_path / 'other.json').write_text('{"accuracy": 0.9}\n')
    (tmp_path / 'notes.txt').write_text('not json\n')
    for argument, message in [
            (str(evaluated), 'give NAME=path/to/metrics.json'),
            (f'a={tmp_path / "missing.json"}', 'cannot read it (No such file or directory)'),
            (f'a={tmp_path / "notes.txt"}', 'not a JSON file'),
            (f'a={tmp_path / "other.json"}', 'not a tarfuse-eval metrics.json')]:
        done = _run(f'ok={evaluated}', argument)
        assert done.returncode == 2 and done.stdout == '', (argument, done.stdout)
        assert message in done.stderr and 'Traceback' not in done.stderr, done.stderr
    done = _run()
    assert done.returncode == 2 and 'the following arguments are required' in done.stderr

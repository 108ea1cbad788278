"""benchmarks/bench_contention.py: its arguments, and workers that fail."""

from pathlib import Path
import subprocess
import sys
import time

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
import bench_contention as tool  # noqa: E402, I100


def test_bad_arguments_and_a_missing_data_folder_are_refused_before_any_worker(tmp_path, capsys):
    # Each started its workers, which loaded torch and the model and then failed with a
    # traceback apiece ('a worker failed (exit 1)').
    absent = tmp_path / 'absent'
    cases = ((['--size', '640'], '--size: must be WIDTHxHEIGHT in pixels (e.g. 640x512), got '
                                 "'640'"),
             (['--size', '0x512'], "got '0x512'"),
             (['--threads', '0'], "--threads: must be an integer >= 1, got '0'"),
             (['--processes', '2', '-1'], "--processes: must be an integer >= 1, got '-1'"),
             (['--pairs', 'six'], "--pairs: must be an integer >= 1, got 'six'"),
             (['--data', str(absent)], f'data set folder {str(absent)!r} does not exist'),
             (['--data', str(tmp_path)], 'must contain ir/ and vi/ sub-folders'))
    for argv, words in cases:
        with pytest.raises(SystemExit) as raised:
            tool.main(argv)
        assert raised.value.code == 2, argv
        err = capsys.readouterr().err
        assert words in err and 'Traceback' not in err, err


def test_a_failed_worker_stops_the_others():
    # A worker that failed (here killed, as by the OOM killer) ended the benchmark while the
    # other workers ran on, orphaned, for the rest of their runs.
    def python(code):
        return subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)

    killed, sleeper = (python('import time; time.sleep(300)') for _ in range(2))
    killed.kill()
    start = time.monotonic()
    with pytest.raises(SystemExit) as raised:
        tool.collect([killed, sleeper])
    assert 'worker 1 of 2 failed (killed by signal 9;' in str(raised.value.code)
    assert sleeper.poll() is not None and time.monotonic() - start < 60
    with pytest.raises(SystemExit) as raised:
        tool.collect([python('import sys; sys.exit(3)')])
    assert 'worker 1 of 1 failed (exit status 3;' in str(raised.value.code)
    row = 'import json; print("loading"); print(json.dumps({"median_ms": 5.0, "p90_ms": 7.0}))'
    assert tool.collect([python(row), python(row)]) == [{'median_ms': 5.0, 'p90_ms': 7.0}] * 2

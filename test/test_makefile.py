"""The README's two commands (`make demo`, `make test`) from another directory (`make -f`)."""

import json
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys

import pytest

REPO = Path(__file__).resolve().parents[1]
# Run as a child of `make test` too: the parent's flags would print 'Entering directory'.
ENV = {k: v for k, v in os.environ.items() if k not in ('MAKEFLAGS', 'MAKELEVEL', 'MFLAGS')}


@pytest.mark.skipif(shutil.which('make') is None, reason='GNU make is not installed')
def test_make_targets_run_in_the_repository_from_any_directory(tmp_path):
    """`make -f <repo>/Makefile demo test` from elsewhere runs the repository's commands there.

    Before, the recipes used paths relative to the caller's directory (`source
    tools/ros_env/env.sh`: no such file). A dry run (`-n`) prints the recipes without running
    them; ``OUT`` given relative to the caller stays the caller's folder.
    """
    result = subprocess.run(
        ['make', '-n', '-f', str(REPO / 'Makefile'), 'demo', 'test', 'OUT=here/demo'],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True, env=ENV)
    lines = result.stdout.splitlines()
    assert lines[0] == f'bash {REPO}/tools/ros_env/setup_env.sh'
    demo = [line for line in lines if 'tarfuse-demo' in line]
    assert demo == [f'cd {REPO} && source tools/ros_env/env.sh && '
                    f'tarfuse-demo --out {tmp_path}/here/demo']
    tests = [line for line in lines if ' -m pytest ' in line]
    assert len(tests) == 1 and tests[0].startswith(f'cd {REPO} && ')
    assert tests[0].endswith(' test')
    # The default output folder is the repository's, wherever make runs.
    default = subprocess.run(['make', '-n', '-f', str(REPO / 'Makefile'), 'demo'],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60,
                             check=True, env=ENV).stdout
    assert f'--out {REPO}/output/demo' in default


FAILING = """
import time
from pathlib import Path


def test_fails_once_the_other_file_runs():
    started = Path(__file__).parent / 'slow_0'
    deadline = time.monotonic() + 120
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert False, 'the failure that -x stops at'
"""
SLOW = """
import time
from pathlib import Path

import pytest


@pytest.fixture(scope='module')
def started_node():
    yield
    (Path(__file__).parent / 'torn_down').touch()


@pytest.mark.parametrize('index', range(5))
def test_slow(started_node, index):
    (Path(__file__).parent / f'slow_{index}').touch()
    time.sleep(3)
"""


def _two_workers(folder, files, *options):
    """Run pytest -n 2 --dist loadfile on ``files`` ({name: text}) in ``folder``; return it.

    Beside a copy of test/conftest.py, in a pytest of its own (this run's PYTEST_* variables
    left out): ``subprocess.CompletedProcess`` with text stdout and stderr.
    """
    shutil.copy(REPO / 'test' / 'conftest.py', folder / 'conftest.py')
    for name, text in files.items():
        (folder / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith('PYTEST_')}
    return subprocess.run(
        [sys.executable, '-m', 'pytest', '-p', 'no:cacheprovider', '-n', '2', '--dist',
         'loadfile', *options, '-q', *files], cwd=folder, capture_output=True, text=True,
        timeout=300, env=env)


def test_x_stops_the_other_worker_after_its_current_test(tmp_path):
    """`make test PYTEST_ARGS=-x`: both workers stop, not only the one whose test failed.

    pytest-xdist gives each worker a whole test file (--dist loadfile); at the first failure
    the other worker ran the rest of its file (here 5 x 3 s; for the node tests, minutes).
    Run on two files of their own beside a copy of test/conftest.py, in a pytest of its own.
    """
    result = _two_workers(tmp_path, {'test_failing.py': FAILING, 'test_slow.py': SLOW}, '-x')
    output = result.stdout + result.stderr
    assert result.returncode == 2 and 'stopping after 1 failures' in output, output
    ran = sorted(path.name for path in tmp_path.glob('slow_*'))
    assert ran[-1] < 'slow_4', (ran, output)
    assert (tmp_path / 'torn_down').exists(), output


RECORD = """
def record(name):
    import json
    import os
    from pathlib import Path
    keys = ('PYTEST_XDIST_WORKER', 'ROS_DOMAIN_ID', 'TARFUSE_TEST_DOMAINS')
    (Path(__file__).parent / name).write_text(json.dumps([os.environ[key] for key in keys]))
"""
CRASHING = RECORD + """

def test_crashes_the_worker_once():
    import os
    from pathlib import Path
    import signal
    mark = Path(__file__).parent / 'crashed'
    import subprocess
    import sys
    if not mark.exists():
        mark.touch()
        child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])
        (Path(__file__).parent / 'child.pid').write_text(str(child.pid))
        os.kill(os.getpid(), signal.SIGKILL)


def test_on_the_worker_in_its_place():
    record('replacement.json')
"""
WAITING = RECORD + """

def test_beside():
    import time
    from pathlib import Path
    record('other.json')
    deadline = time.monotonic() + 120
    while not (Path(__file__).parent / 'replacement.json').exists() and \\
            time.monotonic() < deadline:
        time.sleep(0.1)
"""


def test_a_worker_in_place_of_a_crashed_one_takes_its_dds_domains(tmp_path):
    """A crashed test process (pytest-xdist worker) is replaced; the new one takes its domains.

    The domains were given by the number in the worker's name: the replacement, gw2, drew the
    node tests' domains from 215-271 (Fast DDS fails above 232; 216-232 are the workers' own).
    The crashed worker's children (the nodes of the node tests) ran on after the session.
    """
    result = _two_workers(tmp_path, {'test_crashing.py': CRASHING, 'test_waiting.py': WAITING})
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "' crashed while running 'test_crashing.py" in output, \
        output
    new, other = (json.loads((tmp_path / name).read_text())
                  for name in ('replacement.json', 'other.json'))
    assert new[0] not in ('gw0', 'gw1') and other[0] in ('gw0', 'gw1'), (new, other)
    assert new[1] != other[1] and 216 <= int(new[1]) <= 232, (new, other)
    ranges = [range(int(low), int(high) + 1)
              for low, high in (new[2].split('-'), other[2].split('-'))]
    assert 101 <= ranges[0][0] and ranges[0][-1] <= 215, new
    assert not set(ranges[0]) & set(ranges[1]), (new, other)
    # What it left running, as a node of a node test, is stopped at the end of the session.
    child = int((tmp_path / 'child.pid').read_text())
    try:
        stat = Path(f'/proc/{child}/stat')
        assert not stat.exists() or stat.read_text().split(')')[1].split()[0] == 'Z', output
    finally:
        if Path(f'/proc/{child}').exists():
            os.kill(child, signal.SIGKILL)

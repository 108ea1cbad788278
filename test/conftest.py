"""Test-session settings shared by every test module."""

import os
from pathlib import Path
import random
import signal
import tempfile

import cv2
import pytest

# Ultralytics must never reach the network; set before anything imports it.
os.environ.setdefault('YOLO_OFFLINE', '1')
# DDS traffic stays on this machine, on a domain of this test run's own, so that test runs
# started at the same time (several developers, CI) never see each other's topics.
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
# `make test` runs the tests in two pytest-xdist workers: each is a test run of its own on DDS.
# The controller draws the run's base once (workers inherit its environment); each worker takes
# the domain base + its index (_worker_index) among 216-232 (the demo's private domains are
# 1-100, the node tests' 101-215, Fast DDS fails above 232) and its own share of the node
# tests' domains (TARFUSE_TEST_DOMAINS, read by node_harness.random_domain_id).
_WORKER = os.environ.get('PYTEST_XDIST_WORKER', '')
_INDEX_LOCKS = []  # this worker's, held until it ends


def _worker_index(count):
    """Return this worker's index among ``count``: the lowest no live worker of the run holds.

    Not the number in its name: pytest-xdist replaces a worker that crashed with one named on
    (gw2 for gw0 or gw1), which took the domains 215-271 (Fast DDS fails above 232, and
    216-232 are the workers' own). Each index is a lock in the run's folder, freed by the
    kernel with the process that held it.
    """
    import fcntl
    for index in range(count):
        handle = open(Path(os.environ['TARFUSE_TEST_RUN_DIR']) / f'worker_{index}.lock', 'w')
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _INDEX_LOCKS.append(handle)
        return index
    raise RuntimeError(f'pytest-xdist worker {_WORKER}: {count} workers of this run still run')


os.environ.setdefault('TARFUSE_TEST_DOMAIN_BASE', str(random.SystemRandom().randint(0, 16)))
if _WORKER.startswith('gw'):
    _COUNT = int(os.environ['PYTEST_XDIST_WORKER_COUNT'])
    _INDEX = _worker_index(_COUNT)
    os.environ['ROS_DOMAIN_ID'] = str(
        216 + (int(os.environ['TARFUSE_TEST_DOMAIN_BASE']) + _INDEX) % 17)
    _SHARE = 115 // _COUNT
    os.environ['TARFUSE_TEST_DOMAINS'] = f'{101 + _INDEX * _SHARE}-{100 + (_INDEX + 1) * _SHARE}'
elif 'ROS_DOMAIN_ID' not in os.environ:
    os.environ['ROS_DOMAIN_ID'] = str(random.SystemRandom().randint(1, 100))
# A test run started in the background (`make test &`, nohup) has SIGINT ignored, and every
# process it starts inherits that: the tests that Ctrl-C a node or the demo, as a terminal or
# ros2 launch does, would see it ignored. Children start with the default again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _signal_handlers_put_back():
    """Put SIGINT's and SIGTERM's handlers back after each test.

    A tool's ``main`` stopped by a signal in this process ignores both from then on (its
    process would be ending): every later test of the process, and every process it started,
    then ignored Ctrl-C (a node started with SIGINT ignored keeps ignoring it).
    """
    numbers = (signal.SIGINT, signal.SIGTERM)
    handlers = {number: signal.getsignal(number) for number in numbers}
    yield
    for number, handler in handlers.items():
        if handler is not None and signal.getsignal(number) is not handler:
            signal.signal(number, handler)


# Real data the tests use, inside the repository (no ../shared needed): samples/ (five RoadScene
# test pairs) and test/data/datasets (small excerpts of the shared sets; sources in its README).
SAMPLES = Path(__file__).resolve().parents[1] / 'samples'


@pytest.fixture(scope='session')
def roadscene_pair():
    """Load the first RoadScene test pair (FLIR_00122): IR uint8 HxW, visible uint8 HxWx3 BGR."""
    stem = 'FLIR_00122'
    ir = cv2.imread(str(SAMPLES / 'ir' / f'{stem}.jpg'), cv2.IMREAD_GRAYSCALE)
    vi = cv2.imread(str(SAMPLES / 'vi' / f'{stem}.jpg'), cv2.IMREAD_COLOR)
    assert ir is not None and vi is not None, f'{stem} missing under {SAMPLES}'
    return ir, vi


# One folder for this test run, made by the process that runs the session (pytest-xdist's
# controller, or pytest alone) and shared by its workers; removed when the session ends.
if not _WORKER:
    os.environ['TARFUSE_TEST_RUN_DIR'] = tempfile.mkdtemp(prefix='tarfuse_test_run_')
RUN_DIR = Path(os.environ['TARFUSE_TEST_RUN_DIR'])


class _BackgroundExport:
    """``tarfuse-export --no-scale-search`` of the shipped weights, in a process of its own.

    Started once the tests are collected, where one of them uses ``shipped_onnx_file``: the
    export (half a minute of tracing on one core, more in a long test session) runs beside the
    tests instead of before the first that needs it. pytest-xdist's workers share one export:
    the first to claim ``RUN_DIR/onnx`` starts it, in a session of its own that outlives that
    worker (another may need it later), and every worker waits for its exit status file; the
    session's end (:func:`pytest_sessionfinish` of the controller) stops it if it still runs.
    """

    folder = RUN_DIR / 'onnx'
    path = folder / 'tarfuse.onnx'
    log = folder / 'export.log'
    status = folder / 'export.status'
    pid = folder / 'export.pid'
    process = None  # the claiming process's handle (kept: no 'still running' warning)

    @classmethod
    def start(cls):
        """Start the export unless another worker of this run has claimed it."""
        import shlex
        import subprocess
        import sys
        from tarfuse_ros.core.paths import default_weights_path
        try:
            cls.folder.mkdir()
        except FileExistsError:
            return
        export = shlex.join([
            sys.executable, '-m', 'tarfuse_ros.tools.export', str(default_weights_path()),
            '--out', str(cls.path), '--no-scale-search', '--no-verify', '--threads', '1'])
        status = shlex.quote(str(cls.status))
        cls.process = subprocess.Popen(
            ['/bin/sh', '-c', f'{export} >{shlex.quote(str(cls.log))} 2>&1 </dev/null; '
                              f'echo $? >{status}.part && mv {status}.part {status}'],
            start_new_session=True)
        cls.pid.write_text(str(cls.process.pid))

    @classmethod
    def result(cls, timeout=900.0):
        """Wait for the export; return the ONNX path (pytest.fail with its log if it failed)."""
        import time
        deadline = time.monotonic() + timeout
        while not cls.status.is_file():
            if time.monotonic() > deadline:
                pytest.fail(f'tarfuse-export took over {timeout:.0f} s: {cls.log.read_text()}')
            time.sleep(0.2)
        code = cls.status.read_text().strip()
        if code != '0' or not cls.path.is_file():
            pytest.fail(f'tarfuse-export exited {code}:\n{cls.log.read_text()}')
        return cls.path

    @classmethod
    def stop(cls):
        """Stop the export if it still runs (its whole process group)."""
        try:
            os.killpg(int(cls.pid.read_text()), signal.SIGKILL)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            pass


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    if any('shipped_onnx_file' in getattr(item, 'fixturenames', ()) for item in session.items):
        _BackgroundExport.start()


# With -x (or --maxfail) pytest-xdist stops handing out test files at the failure, but the other
# worker ran on through the rest of its file (--dist loadfile sends a whole file at once):
# minutes, for the node tests. The controller marks the run's folder; a worker stops after its
# current test once the mark is there (its fixtures torn down as at its own failure).
_STOP = RUN_DIR / 'stop'
_SESSION = []  # the controller's session


def pytest_sessionstart(session):
    """Keep the session (of the controller: the one that counts every worker's failures)."""
    _SESSION.append(session)


@pytest.hookimpl(trylast=True)  # after the session's own, which counts the failures
def pytest_runtest_logreport(report):
    """Mark the run's folder once the controller stops at a failure (-x, --maxfail)."""
    if _WORKER or not _SESSION or not _SESSION[0].config.pluginmanager.hasplugin('dsession'):
        return
    if _SESSION[0].shouldfail or _SESSION[0].shouldstop:
        _STOP.touch()


def pytest_runtest_teardown(item):
    """Stop this worker after its current test where the controller has stopped."""
    if _WORKER and _STOP.exists():
        item.session.shouldstop = 'another test process stopped at a failure (-x, --maxfail)'


def _left_running():
    """Return the ids of the processes of this test run but this one.

    Found by this run's folder in their environment, which every process started under the
    session inherits (the workers, the nodes and tools the tests start) and no other has.
    """
    tag = f'TARFUSE_TEST_RUN_DIR={RUN_DIR}'.encode()
    found = []
    for environ in Path('/proc').glob('[0-9]*/environ'):
        try:
            if tag in environ.read_bytes().split(b'\0'):
                found.append(int(environ.parent.name))
        except (OSError, ValueError):  # ended meanwhile, or another user's
            continue
    return [pid for pid in found if pid != os.getpid()]


def _stop_left_running(timeout=10.0):
    """Stop what the tests left running: SIGINT, as Ctrl-C would, then SIGKILL after timeout.

    A worker that crashed (or was killed) left its children running for ever: the fusion
    nodes of the node tests wait for a signal. Their domains are the next worker's.
    """
    import sys
    import time
    left = _left_running()
    if not left:
        return
    print(f'\nconftest: stopping {len(left)} processes the tests left running: {left}',
          file=sys.stderr)
    for sig in (signal.SIGINT, signal.SIGKILL):
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = _left_running()


@pytest.hookimpl(trylast=True)  # after pytest-xdist has stopped its workers
def pytest_sessionfinish(session, exitstatus):
    if not _WORKER:
        import shutil
        _BackgroundExport.stop()
        _stop_left_running()
        shutil.rmtree(RUN_DIR, ignore_errors=True)


@pytest.fixture(scope='session')
def shipped_onnx_file():
    """Return the shipped model exported to ONNX without the scale search, once per session.

    ``tarfuse-export --no-scale-search --no-verify``: the shipped weights and global stage with
    the 1.0 IR / visible scale only, so the torch side of each parity test is
    ``FusionEngine(scale_search=False)``. Less than half the graph of the three-scale export
    (2-core VM: 27 s, and 6.3-6.5 s instead of 19.9 s per onnxruntime session with its default
    graph rewrites, of which the tests open several); the scale search's own export is checked
    in test_onnx.py on a model of the same architecture. No check: the export's own check runs
    in test_onnx.py. Run in the background from the start of the session
    (:class:`_BackgroundExport`).
    """
    if not _BackgroundExport.folder.is_dir():  # pytest_collection_finish saw no test using it
        pytest.fail('shipped_onnx_file was requested by a test pytest did not collect')
    return _BackgroundExport.result()


@pytest.fixture
def domain_ids():
    """Return the DDS domain ids this test process may use for a test of its own (a list).

    101-215, or this pytest-xdist worker's share of it (``TARFUSE_TEST_DOMAINS`` above); the
    same ids as ``node_harness.random_domain_id`` draws from.
    """
    low, high = os.environ.get('TARFUSE_TEST_DOMAINS', '101-215').split('-')
    return list(range(int(low), int(high) + 1))

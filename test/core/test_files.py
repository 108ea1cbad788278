"""output_problem: the check tools run on --out before slow work; the modes of atomic outputs."""

import errno
import os
from pathlib import Path
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading

import pytest

from tarfuse_ros.core.files import (atomic_output, is_truncated_jpeg, is_truncated_jpeg_data,
                                    lock_exclusive, output_problem, remove_stale_outputs,
                                    write_text_atomic)

SAMPLES = Path(__file__).resolve().parents[2] / 'samples'


@pytest.fixture(params=[0o022, 0o027], ids=['umask022', 'umask027'])
def umask(request):
    """Set the process umask for one test (restored after it); return it."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path):
    """Return the permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


def test_a_writable_place_is_no_problem_and_nothing_is_left_there(tmp_path):
    assert output_problem(tmp_path / 'model.onnx') is None
    assert output_problem(tmp_path / 'new' / 'deeper' / 'model.onnx') is None
    assert output_problem(tmp_path / 'labels', folder=True) is None
    assert list(tmp_path.iterdir()) == []  # the probe file is gone, no folder was made


def test_file_and_folder_mix_ups_are_named(tmp_path):
    a_file = tmp_path / 'a.txt'
    a_file.write_text('x')
    assert output_problem(tmp_path) == f'{tmp_path} is a folder, not a file'
    assert output_problem(a_file, folder=True) == f'{a_file} is a file, not a folder'
    assert output_problem(a_file / 'model.onnx') == f'{a_file} is a file, not a folder'


@pytest.mark.skipif(not Path('/proc/self').is_dir(), reason='needs Linux /proc')
def test_a_folder_nobody_can_write_is_refused_even_for_root():
    # os.access says True to root here; creating a file there fails for every user.
    problem = output_problem('/proc/tarfuse_model.onnx')
    assert problem is not None and problem.startswith('folder /proc is not writable')


def test_atomic_outputs_get_the_modes_open_and_mkdir_give(tmp_path, umask):
    # Files were made by tempfile.mkstemp, and safetensors' save_file writes a 0o600 file of its
    # own: unreadable by a node run as another user. write_text_atomic's and folders' modes were
    # 0o644 and 0o755 whatever the umask.
    from safetensors.torch import save_file
    import torch
    plain_file, plain_folder = tmp_path / 'plain.txt', tmp_path / 'plain'
    plain_file.write_text('open()')
    plain_folder.mkdir()
    with atomic_output(tmp_path / 'weights.safetensors') as temporary:
        save_file({'w': torch.zeros(2)}, temporary)
    write_text_atomic(tmp_path / 'report.md', 'report\n')
    with atomic_output(tmp_path / 'state', folder=True) as folder:
        save_file({'w': torch.zeros(2)}, folder / 'model.safetensors')
        (folder / 'logs').mkdir()
        (folder / 'logs' / 'state.json').write_text('{}')
    assert mode(plain_file) == 0o666 & ~umask and mode(plain_folder) == 0o777 & ~umask
    assert mode(tmp_path / 'weights.safetensors') == mode(plain_file)
    assert mode(tmp_path / 'report.md') == mode(plain_file)
    assert mode(tmp_path / 'state') == mode(tmp_path / 'state' / 'logs') == mode(plain_folder)
    assert mode(tmp_path / 'state' / 'model.safetensors') == mode(plain_file)
    assert mode(tmp_path / 'state' / 'logs' / 'state.json') == mode(plain_file)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        'plain', 'plain.txt', 'report.md', 'state', 'weights.safetensors']


def test_a_replaced_output_keeps_its_mode(tmp_path, umask):
    """As a file rewritten by open(): a chmod given to the old one stays."""
    report = tmp_path / 'report.md'
    write_text_atomic(report, 'one\n')
    report.chmod(0o600)
    write_text_atomic(report, 'two\n')
    assert report.read_text() == 'two\n' and mode(report) == 0o600
    report.chmod(0o664)
    write_text_atomic(report, 'three\n')
    assert mode(report) == 0o664
    with atomic_output(tmp_path / 'state', folder=True):
        pass
    (tmp_path / 'state').chmod(0o700)
    with atomic_output(tmp_path / 'state', folder=True) as folder:
        (folder / 'new.json').write_text('{}')
    assert mode(tmp_path / 'state') == 0o700
    assert [p.name for p in (tmp_path / 'state').iterdir()] == ['new.json']


# Writes, under a umask that takes its owner's write right away, what open() and mkdir would
# write there: open() gives a writable handle to the 0o444 file it creates.
UNDER_UMASK_222 = """
import os
import sys
from tarfuse_ros.core.files import atomic_output, write_text_atomic
os.umask(0o222)
with open('plain.txt', 'w') as handle:
    handle.write('open()')
try:
    open('plain.txt', 'w')
    sys.exit('this process may write read-only files: the test would prove nothing')
except PermissionError:
    pass
write_text_atomic('report.md', 'report')
for epoch in range(3):  # replaced twice: the old 0o555 folder must go each time
    with atomic_output('state', folder=True) as folder:
        (folder / 'state.json').write_text(str(epoch))
"""


@pytest.mark.skipif(not shutil.which('setpriv') and os.geteuid() == 0,
                    reason='root writes read-only files; needs setpriv to drop that right')
def test_outputs_are_written_under_a_umask_without_the_owner_write_right(tmp_path):
    # The temporary was created 0o444 (0o555 for a folder) and the writer, opening it again by
    # its name, got PermissionError; the old tempfile.mkstemp / mkdtemp made it 0o600 / 0o700.
    command = [sys.executable, '-c', UNDER_UMASK_222]
    if os.geteuid() == 0:  # root without the rights that let it write any file
        command = ['setpriv', '--bounding-set=-dac_override,-dac_read_search,-fowner',
                   *command]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / 'report.md').read_text() == 'report'
    assert (tmp_path / 'state' / 'state.json').read_text() == '2'
    assert mode(tmp_path / 'report.md') == mode(tmp_path / 'plain.txt') == 0o444
    assert mode(tmp_path / 'state') == 0o555 and mode(tmp_path / 'state' / 'state.json') == 0o444
    assert sorted(p.name for p in tmp_path.iterdir()) == ['plain.txt', 'report.md', 'state']
    (tmp_path / 'state').chmod(0o755)  # for pytest's clean-up of tmp_path


def test_a_link_or_a_file_where_a_folder_output_goes_is_replaced_every_time(tmp_path):
    # The link (or file) was moved to <name>.old and left there (rmtree removes folders only):
    # the next output then failed (NotADirectoryError: a folder cannot be renamed onto it), and
    # a dangling link failed the first one.
    elsewhere = tmp_path / 'big_disk' / 'state'
    elsewhere.mkdir(parents=True)
    (elsewhere / 'state.json').write_text('theirs')
    (tmp_path / 'linked').symlink_to(elsewhere)
    (tmp_path / 'dangling').symlink_to(tmp_path / 'nowhere')
    (tmp_path / 'a_file').write_text('x')
    for name in ('linked', 'dangling', 'a_file'):
        for epoch in range(3):
            with atomic_output(tmp_path / name, folder=True) as folder:
                (folder / 'state.json').write_text(str(epoch))
        assert not (tmp_path / name).is_symlink() and (tmp_path / name).is_dir(), name
        assert (tmp_path / name / 'state.json').read_text() == '2', name
    assert (elsewhere / 'state.json').read_text() == 'theirs'  # a link is never followed
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a_file', 'big_disk', 'dangling',
                                                          'linked']


def test_a_folder_being_filled_is_never_removed_as_a_killed_writers(tmp_path):
    """Another run removing stale state folders meanwhile (remove_stale_outputs, in a loop).

    The folder was made under its .tmp name and claimed after: in between, the other run found
    it unclaimed and removed it, and the save failed (FileNotFoundError; 12 of 2,000 here).
    """
    remover = subprocess.Popen([
        sys.executable, '-c',
        'import sys\nfrom tarfuse_ros.core.files import remove_stale_outputs\n'
        'while True:\n    remove_stale_outputs(sys.argv[1])\n', str(tmp_path / 'state')])
    try:
        for epoch in range(2000):
            with atomic_output(tmp_path / 'state', folder=True) as folder:
                (folder / 'state.json').write_text(str(epoch))
            assert remover.poll() is None
    finally:
        remover.kill()
        remover.wait()
    assert (tmp_path / 'state' / 'state.json').read_text() == '1999'
    assert sorted(path.name for path in tmp_path.iterdir()) == ['state']


def test_a_temporary_keeps_the_suffix_a_writer_picks_its_format_by_and_goes_stale_alike(
        tmp_path):
    """A writer may pick the format by the name: OpenCV's VideoWriter (tarfuse-fuse's video).

    With ``keep_suffix`` the temporary ends in the output's suffix; a killed writer's such
    temporary is removed by :func:`remove_stale_outputs`, a live writer's is not.
    """
    video = tmp_path / 'visible_fused.mp4'
    with atomic_output(video, keep_suffix=True) as temporary:
        assert re.fullmatch(r'visible_fused\.mp4\.[0-9a-f]{8}\.tmp\.mp4', temporary.name)
        temporary.write_bytes(b'frames')
        remove_stale_outputs(video)
        assert temporary.read_bytes() == b'frames'
    assert video.read_bytes() == b'frames'
    killed = subprocess.run([
        sys.executable, '-c',
        'import os, signal, sys\nfrom tarfuse_ros.core.files import atomic_output\n'
        'with atomic_output(sys.argv[1], keep_suffix=True) as temporary:\n'
        '    temporary.write_bytes(b"half")\n    os.kill(os.getpid(), signal.SIGKILL)\n',
        str(video)])
    assert killed.returncode == -signal.SIGKILL
    assert len(list(tmp_path.glob('visible_fused.mp4.*.tmp.mp4'))) == 1
    remove_stale_outputs(video)
    assert sorted(path.name for path in tmp_path.iterdir()) == ['visible_fused.mp4']
    assert video.read_bytes() == b'frames'


def _closed(descriptor):
    """Return whether ``descriptor`` is closed."""
    try:
        os.fstat(descriptor)
    except OSError as exc:
        return exc.errno == errno.EBADF
    return False


def test_a_lock_is_refused_while_held_awaited_with_wait_and_done_without_where_no_flock(
        tmp_path):
    """The one exclusive flock of tarfuse-train, tarfuse-eval, tarfuse-pseudo-label, outputs.

    A descriptor opened with O_PATH is one that flock refuses (EBADF), as a file system without
    flock does. Each descriptor that does not come back is closed.
    """
    def descriptor():
        return os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)

    held = lock_exclusive(descriptor())
    assert held is not None
    refused = descriptor()
    with pytest.raises(BlockingIOError):
        lock_exclusive(refused, no_flock=pytest.fail)
    assert _closed(refused)
    release = threading.Timer(0.5, os.close, (held,))
    release.start()
    waited = lock_exclusive(descriptor(), wait=True)
    release.join()
    assert _closed(held) and not _closed(waited)
    reasons = []
    unlockable = os.open(tmp_path, os.O_PATH)
    assert lock_exclusive(unlockable, no_flock=reasons.append) is None
    assert reasons == ['Bad file descriptor'] and _closed(unlockable)
    assert lock_exclusive(os.open(tmp_path, os.O_PATH)) is None
    os.close(waited)


def test_an_interrupt_while_a_lock_is_awaited_closes_its_descriptor(tmp_path):
    """Ctrl-C while a tool waits for another run's lock: the descriptor is not left open."""
    class Interrupted(Exception):
        pass

    def interrupt(signum, frame):
        raise Interrupted

    held = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    assert lock_exclusive(held) == held
    waiting = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Interrupted):
            lock_exclusive(waiting, wait=True)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        os.close(held)
    assert _closed(waiting)


def test_a_folder_left_as_old_stays_until_the_new_one_is_in_place(tmp_path):
    """Killed between moving a state to state.old and the new one into place: state.old only.

    The next save (a run resumed from state.old) removed state.old first, then moved its new
    folder into place: killed in between, no state was left at all (and the new one, a
    .tmp folder no one claimed, went with the next run).
    """
    (tmp_path / 'state.old').mkdir()
    (tmp_path / 'state.old' / 'state.json').write_text('old')
    killed = subprocess.run([sys.executable, '-c', (
        'import os, sys\nfrom pathlib import Path\nfrom tarfuse_ros.core import files\n'
        'def kill_after_removing_old(frame, event, arg):\n'
        '    if event == "return" and frame.f_code is files._remove.__code__ and \\\n'
        '            Path(frame.f_locals["path"]).name == "state.old":\n'
        '        os.kill(os.getpid(), 9)\n'
        'sys.setprofile(kill_after_removing_old)\n'
        'with files.atomic_output(Path(sys.argv[1]) / "state", folder=True) as folder:\n'
        '    (folder / "state.json").write_text("new")\n'), str(tmp_path)])
    assert killed.returncode == -9
    assert (tmp_path / 'state' / 'state.json').read_text() == 'new'


def test_a_cut_jpeg_is_found_from_its_bytes_as_from_its_file(tmp_path):
    """The readers that decode a file's bytes once judge a cut JPEG as the file check does."""
    whole = next(SAMPLES.rglob('*.jpg')).read_bytes()
    png = next(SAMPLES.rglob('*.png')).read_bytes()
    cases = {'whole.jpg': (whole, False), 'cut.jpg': (whole[:len(whole) // 2], True),
             'header_only.jpg': (whole[:3], False), 'image.png': (png, False),
             'empty.jpg': (b'', False)}
    for name, (data, truncated) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert is_truncated_jpeg(tmp_path / name) is truncated, name
        assert is_truncated_jpeg_data(data) is truncated, name


def test_a_jpeg_with_a_thumbnail_or_appended_video_is_judged_by_its_own_image():
    """A Motion Photo (a video after the JPEG's end) was refused as cut short.

    Its appended bytes held a start-of-scan marker after the image's last end marker. A
    thumbnail, a whole small JPEG inside the EXIF header segment, must not count as the image.
    """
    whole = next(SAMPLES.rglob('*.jpg')).read_bytes()
    video = b'\x00\x00\x00\x18ftypmp42' + b'\xff\xda' + bytes(range(256)) * 4
    assert not is_truncated_jpeg_data(whole + video)
    assert is_truncated_jpeg_data(whole[:len(whole) // 2])
    thumbnail = whole  # any whole JPEG: its own scan and end marker sit in the APP1 segment
    payload = b'Exif\x00\x00' + thumbnail
    app1 = b'\xff\xe1' + (len(payload) + 2).to_bytes(2, 'big') + payload
    with_thumbnail = whole[:2] + app1 + whole[2:]
    assert not is_truncated_jpeg_data(with_thumbnail)
    assert is_truncated_jpeg_data(with_thumbnail[:len(app1) + len(whole) // 2])

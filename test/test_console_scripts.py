"""The console scripts of setup.py stopped by Ctrl-C while they import: one line, no traceback.

Each test runs a script as pip writes it (``from module import function``, then
``sys.exit(function())``), in a real process.
"""

from pathlib import Path
import re
import signal
import subprocess
import sys
import time

import pytest

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / 'models' / 'tarfuse_medical.safetensors'

# What pip writes for a console script (bin/tarfuse-train and the others).
SCRIPT = """import re
import sys
from {module} import {function}
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit({function}())
"""

# The Ctrl-C comes as the first library of weight starts to load, sent by the process itself:
# the moment is then the same on a loaded machine.
CTRL_C_AT_THE_FIRST_LIBRARY = """import os
import signal
import sys
import time
from importlib.abc import MetaPathFinder


class CtrlC(MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name in ('numpy', 'cv2', 'torch', 'rosbags', 'rclpy'):
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)  # the interrupt is raised in here
        return None


sys.meta_path.insert(0, CtrlC())
"""


def console_scripts():
    """Return setup.py's console scripts as ``(name, module, function)``."""
    return re.findall(r"'([\w-]+) = ([\w.]+):(\w+)'", (ROOT / 'setup.py').read_text())


def test_every_console_script_is_listed():
    names = [name for name, _module, _function in console_scripts()]
    assert len(names) == 11 and 'fuse_node' in names and 'tarfuse-train' in names


@pytest.mark.parametrize('name, module, function', console_scripts(),
                         ids=[name for name, _module, _function in console_scripts()])
def test_ctrl_c_while_a_script_imports_ends_it_with_one_line(name, module, function, tmp_path):
    # A Ctrl-C while the tool imported PyTorch printed a traceback (status -2, killed by SIGINT).
    script = tmp_path / name
    script.write_text(CTRL_C_AT_THE_FIRST_LIBRARY
                      + SCRIPT.format(module=module, function=function))
    # tarfuse-export loads PyTorch in its main, once the arguments are checked.
    arguments = [str(WEIGHTS), '--out', str(tmp_path / 'x.onnx')] if name == 'tarfuse-export' \
        else []
    result = subprocess.run([sys.executable, str(script), *arguments], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    if name == 'fuse_node':  # ros2 launch stopping a node that is still starting: no error
        expected = (0, '')
    elif name == 'tarfuse-export':
        expected = (130, f'tarfuse-export: interrupted: the export was not finished and '
                         f"no ONNX file was written ({tmp_path / 'x.onnx'} is as it was)\n")
    else:
        expected = (130, f'{name}: interrupted while starting; nothing was done\n')
    assert (result.returncode, result.stderr) == expected, result.stderr
    assert result.stdout == '' and list(tmp_path.iterdir()) == [script]


def _maps_torch(pid):
    """Return whether the process ``pid`` has loaded PyTorch's libraries (it is importing it)."""
    try:
        return 'libtorch' in Path(f'/proc/{pid}/maps').read_text()
    except OSError:  # it has exited
        return False


@pytest.mark.skipif(not Path('/proc/self/maps').is_file(), reason='needs Linux /proc')
def test_ctrl_c_from_the_terminal_while_pytorch_loads(tmp_path):
    # The terminal's SIGINT, sent by this test once the process maps PyTorch's libraries (the
    # rest of the import takes a second or more), again while it runs.
    name, module, function = next(s for s in console_scripts() if s[0] == 'tarfuse-train')
    script = tmp_path / name
    script.write_text(SCRIPT.format(module=module, function=function))
    process = subprocess.Popen([sys.executable, str(script), '--help'], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and not _maps_torch(process.pid):
            assert time.monotonic() < deadline, 'PyTorch not loaded in 120 s'
            time.sleep(0.005)
        while process.poll() is None and time.monotonic() < deadline:
            process.send_signal(signal.SIGINT)
            time.sleep(0.5)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert 'Traceback' not in stderr, stderr
    assert process.returncode == 130, (stdout, stderr)  # --help: 0, had the import ended
    assert stderr == 'tarfuse-train: interrupted while starting; nothing was done\n'
    assert stdout == ''


@pytest.mark.parametrize('name', ['tarfuse-fuse', 'tarfuse-demo', 'tarfuse-train'])
def test_sigterm_while_a_script_imports_stops_it_as_ctrl_c_does(name, tmp_path):
    # README: tarfuse-demo and tarfuse-fuse (and train, eval, play, pseudo-label) stop on
    # SIGTERM as on Ctrl-C, also while loading their libraries; a SIGTERM then killed them
    # with no line (status -15, 143 in a shell).
    _, module, function = next(s for s in console_scripts() if s[0] == name)
    script = tmp_path / name
    script.write_text(CTRL_C_AT_THE_FIRST_LIBRARY.replace('signal.SIGINT', 'signal.SIGTERM')
                      + SCRIPT.format(module=module, function=function))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (
        130, f'{name}: interrupted while starting; nothing was done\n'), result.stderr
    assert result.stdout == '' and list(tmp_path.iterdir()) == [script]

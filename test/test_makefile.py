"""The README's two commands (`make demo`, `make test`) from another directory (`make -f`)."""

import os
from pathlib import Path
import shutil
import subprocess

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

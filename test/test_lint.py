"""Lint as tests: flake8 with ament_flake8's settings (setup.cfg) and pep257 docstrings."""

from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ['tarfuse_ros', 'test', 'launch', 'benchmarks', 'tools', 'setup.py']
# Conventions of ament_pep257: the pep257 set, public items may lack docstrings.
PEP257_IGNORE = 'D100,D101,D102,D103,D104,D105,D106,D107,D203,D212,D404'


def _paths():
    return [str(ROOT / name) for name in CHECKED if (ROOT / name).exists()]


@pytest.mark.linter
def test_flake8():
    result = subprocess.run(
        [sys.executable, '-m', 'flake8', '--config', str(ROOT / 'setup.cfg'), *_paths()],
        cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, 'flake8 found problems:\n' + result.stdout + result.stderr


@pytest.mark.linter
def test_pep257():
    result = subprocess.run(
        [sys.executable, '-m', 'pydocstyle', '--convention=pep257',
         '--add-ignore=' + PEP257_IGNORE, '--match=(?!setup).*\\.py', *_paths()],
        cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, 'pep257 problems:\n' + result.stdout + result.stderr

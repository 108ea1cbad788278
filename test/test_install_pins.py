"""The pip packages of `make ros-install` install on the Pythons of the ROS 2 distros we support.

The recipe for a ROS install (README, "Using it on a ROS 2 install", and the onnxruntime line of
"Deployment") pins a few packages; a pin whose release needs a newer Python than a distro's
stops `pip install` there (kornia 0.9.0 and onnxruntime 1.32.0 have no release for Python 3.10,
Humble's on Ubuntu 22.04). The pins are checked against the package registry for each distro's
Python; without a registry the check is skipped, saying so.
"""

from pathlib import Path
import re
import shlex
import subprocess
import sys

from packaging.markers import default_environment
from packaging.requirements import Requirement
import pytest

ROOT = Path(__file__).resolve().parents[1]
# ROS 2 distro -> the Python of the Ubuntu release it ships for.
DISTRO_PYTHONS = {'humble': '3.10', 'jazzy': '3.12'}
# pip's words for a registry it could not reach (it then also says it found no version).
UNREACHABLE = (r'NewConnectionError|Max retries exceeded|Temporary failure in name '
               r'resolution|ConnectTimeout|ReadTimeout|ProxyError|SSLError')


def _ros_pip():
    """Return the requirement strings of the Makefile's ROS_PIP (continuation lines joined)."""
    text = (ROOT / 'Makefile').read_text().replace('\\\n', ' ')
    match = re.search(r'^ROS_PIP \?=(.*)$', text, flags=re.MULTILINE)
    assert match, 'the Makefile has no ROS_PIP line'
    return shlex.split(match.group(1))


def _readme_pip():
    """Return the requirement strings of the README's `pip install` line of the ROS recipe."""
    text = (ROOT / 'README.md').read_text().replace('\\\n', ' ')
    lines = [line for line in text.splitlines() if line.startswith("pip install 'numpy<2'")]
    assert len(lines) == 1, 'the README should have one pip install line of the ROS recipe'
    return shlex.split(lines[0])[2:]


def _readme_onnxruntime():
    """Return the requirement strings of the README's `pip install` that adds onnxruntime."""
    text = ' '.join((ROOT / 'README.md').read_text().split())
    match = re.search(r"`pip install ('onnxruntime[^`]*)`", text)
    assert match, 'the README should say how to add onnxruntime on a ROS install'
    return shlex.split(match.group(1))


def _pins_for(python_version, requirements):
    """Return the pinned (==) requirements whose markers hold on that Python."""
    environment = dict(default_environment(), python_version=python_version,
                       python_full_version=python_version + '.0')
    pins = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate(environment):
            continue
        if any(spec.operator == '==' for spec in requirement.specifier):
            pins.append(f'{requirement.name}{requirement.specifier}')
    return pins


def _download(pins, version, destination):
    """Download the wheels of ``pins`` for Python ``version`` (no dependencies); skip offline."""
    result = subprocess.run(
        [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:',
         '--python-version', version, '--dest', str(destination),
         '--disable-pip-version-check', '--quiet', *pins],
        capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    if result.returncode != 0 and re.search(UNREACHABLE, output):
        pytest.skip(f'the package registry did not answer: {output.strip()[-300:]}')
    assert result.returncode == 0, f'Python {version} cannot install {pins}:\n{output}'
    for pin in pins:
        name = Requirement(pin).name.replace('-', '_').lower()
        assert any(path.name.lower().startswith(name + '-') for path in destination.iterdir()), pin


def test_readme_recipe_installs_what_the_makefile_does():
    assert sorted(_readme_pip()) == sorted(_ros_pip())


def test_every_distro_python_gets_one_kornia_and_one_onnxruntime():
    for distro, version in DISTRO_PYTHONS.items():
        kornia = [pin for pin in _pins_for(version, _ros_pip()) if pin.startswith('kornia')]
        assert len(kornia) == 1, f'{distro} (Python {version}): {kornia}'
        runtime = [pin for pin in _pins_for(version, _readme_onnxruntime())
                   if pin.startswith('onnxruntime')]
        assert len(runtime) == 1, f'{distro} (Python {version}): {runtime}'


@pytest.mark.parametrize('distro', sorted(DISTRO_PYTHONS))
def test_pinned_packages_exist_for_the_distros_python(distro, tmp_path):
    version = DISTRO_PYTHONS[distro]
    pins = _pins_for(version, _ros_pip()) + _pins_for(version, _readme_onnxruntime())
    assert len(pins) >= 4, f'too few pins to check: {pins}'  # ultralytics, kornia, onnx(runtime)
    _download(pins, version, tmp_path)

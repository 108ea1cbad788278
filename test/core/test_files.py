"""output_problem: the check tools run on --out before slow work."""

from pathlib import Path

import pytest

from tarfuse_ros.core.files import output_problem


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

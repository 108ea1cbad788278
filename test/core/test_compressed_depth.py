"""The compressedDepth ``format`` string, read and written as the codec does, without ROS."""

import subprocess
import sys

import pytest
from tarfuse_ros.core.compressed_depth import (compressed_depth_format,
                                               compressed_depth_format_string,
                                               names_compressed_depth)


@pytest.mark.parametrize('fmt,expected', [
    ('16UC1; compressedDepth png', ('16UC1', 'png')),
    ('mono16; compressedDepth', ('mono16', 'png')),  # a bare compressedDepth is PNG
    ('32FC1', ('32FC1', 'png')),  # the codec's older publishers: no ';'
    ('16UC1; compressedDepth rvl', ('16UC1', 'rvl')),
])
def test_a_format_is_read_as_the_codec_reads_it(fmt, expected):
    assert compressed_depth_format(fmt) == expected


@pytest.mark.parametrize('encoding', ['16UC1', 'mono16', '32FC1'])
def test_the_written_format_is_the_publishers_and_reads_back(encoding):
    fmt = compressed_depth_format_string(encoding)
    assert fmt == f'{encoding}; compressedDepth png'
    assert compressed_depth_format(fmt) == (encoding, 'png')


@pytest.mark.parametrize('fmt,message', [
    ('mono16; png compressed mono16', r"format 'mono16; png compressed mono16' is no "
                                      r'compressedDepth format .* <base>/compressed'),
    ('16UC1; compressedDepth jpeg', 'is no compressedDepth format'),
    ('mono8; compressedDepth png', r"compressedDepth encoding 'mono8' \(format 'mono8; "
                                   r"compressedDepth png'\) is not supported; .* 16UC1, "
                                   r'mono16 or 32FC1'),
])
def test_other_formats_are_refused_naming_the_format(fmt, message):
    with pytest.raises(ValueError, match=message):
        compressed_depth_format(fmt)


def test_no_format_is_written_for_an_encoding_the_codec_does_not_take():
    with pytest.raises(ValueError, match="compressedDepth encoding 'bgr8'"):
        compressed_depth_format_string('bgr8')


@pytest.mark.parametrize('fmt,named', [
    ('16UC1; compressedDepth png', True),
    ('16uc1; compresseddepth', True),  # any case: the payload holds the header all the same
    ('mono16; png compressed mono16', False),
    ('jpeg', False),
])
def test_a_format_naming_compressed_depth_is_told_from_a_plain_compressed_ones(fmt, named):
    assert names_compressed_depth(fmt) is named


def test_the_format_is_read_without_importing_ros():
    """The bag tools and the node share it; a tool that reads no message loads no ROS."""
    loaded = subprocess.run(
        [sys.executable, '-c', 'import sys\nimport tarfuse_ros.core.compressed_depth\n'
         'print(sorted(name for name in sys.modules if name.split(".")[0] in '
         '("rclpy", "sensor_msgs", "std_msgs", "cv_bridge", "rosbags")))'],
        capture_output=True, text=True, check=True)
    assert loaded.stdout == '[]\n', loaded.stdout

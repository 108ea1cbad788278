"""The ``format`` of image_transport's compressedDepth transport, as plain strings (no ROS import).

compressed_depth_image_transport (ros-perception/image_transport_plugins: ``codec.cpp``) sends
a ``sensor_msgs/CompressedImage`` whose ``format`` is ``'<encoding>; compressedDepth <codec>'``
(``'16UC1; compressedDepth png'``). This module reads and writes that string for the node's
decoder and the bag tools (:mod:`tarfuse_ros.ros.conversions` decodes the payload).
"""

__all__ = ['compressed_depth_format', 'compressed_depth_format_string', 'DEPTH_KINDS',
           'names_compressed_depth']

# Encodings the codec takes (one channel of 16 or 32 bits, lower case) -> the kind of array
# they decode to.
DEPTH_KINDS = {'16uc1': 'gray16', 'mono16': 'gray16', '32fc1': 'float32'}


def compressed_depth_format(fmt):
    """Return ``(encoding, codec)`` of a compressedDepth ``format``; raise ``ValueError``.

    As compressed_depth_image_transport reads it (case-sensitive): the encoding is the text
    before the first ``;``; the codec is ``'png'`` for no ``;`` (its older publishers),
    ``'... compressedDepth png'`` or a bare ``'... compressedDepth'``, ``'rvl'`` for
    ``'... compressedDepth rvl'``. ``'16UC1; compressedDepth png'`` -> ``('16UC1', 'png')``.

    Raises:
        ValueError: for any other ``format`` (a plain compressed payload's, e.g.
            ``'mono16; png compressed mono16'``) and for an encoding the codec does not write
            (it takes one channel of 16 or 32 bits: ``16UC1`` / ``mono16``, ``32FC1``); the
            message names the format.

    """
    encoding, separator, rest = str(fmt).partition(';')
    encoding = encoding.strip()
    if not separator or 'compressedDepth png' in rest:
        codec = 'png'
    elif 'compressedDepth rvl' in rest:
        codec = 'rvl'
    elif 'compressedDepth' in rest and 'compressedDepth ' not in rest:
        codec = 'png'
    else:
        raise ValueError(f'format {fmt!r} is no compressedDepth format (expected e.g. '
                         f"'16UC1; compressedDepth png'); a plain compressed image belongs on "
                         f'<base>/compressed (infrared.transport: compressed)')
    if encoding.lower() not in DEPTH_KINDS:
        raise ValueError(f'compressedDepth encoding {encoding!r} (format {fmt!r}) is not '
                         f'supported; the codec writes one channel of 16 or 32 bits: 16UC1, '
                         f'mono16 or 32FC1')
    return encoding, codec


def compressed_depth_format_string(encoding):
    """Return the ``format`` the codec's publisher writes for a PNG of ``encoding``.

    ``'16UC1'`` -> ``'16UC1; compressedDepth png'``, which :func:`compressed_depth_format`
    reads back. Raises ``ValueError`` for an encoding the codec does not take.
    """
    fmt = f'{encoding}; compressedDepth png'
    compressed_depth_format(fmt)
    return fmt


def names_compressed_depth(fmt):
    """Return whether a ``CompressedImage``'s ``format`` names compressedDepth (in any case).

    Such a payload starts with the codec's 12-byte header, not an image: the plain compressed
    transport cannot decode it, whatever the codec would make of the rest of ``format``.
    """
    return 'compresseddepth' in str(fmt).lower()

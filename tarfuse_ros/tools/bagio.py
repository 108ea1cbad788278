"""Helpers shared by the bag tools: typestore, Image <-> array, header stamps in raw CDR.

Bags are rosbag2 directories written and read with ``rosbags`` (MCAP storage), so no rosbag2
install is needed. Messages stay raw CDR bytes wherever possible: that is what rosbag2 stores
and what ``rclpy`` publishes with ``publish(bytes)``.
"""

from pathlib import Path
import struct

import numpy as np
from rosbags.interfaces import (
    Nodetype, Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime)
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import get_types_from_msg, get_typestore, Stores

__all__ = [
    'BAG_VERSION',
    'array_to_image',
    'header_stamp_ns',
    'image_to_array',
    'jazzy_typestore',
    'offered_qos',
    'open_writer',
    'read_messages',
    'replace_header_stamp',
    'type_has_header',
]

# rosbag2 metadata version 8 (QoS profiles as a YAML string) is read by Humble and Jazzy alike.
BAG_VERSION = 8

_BYTES_PER_PIXEL = {
    'mono8': (np.uint8, 1), '8UC1': (np.uint8, 1),
    'mono16': (np.uint16, 1), '16UC1': (np.uint16, 1),
    'bgr8': (np.uint8, 3), 'rgb8': (np.uint8, 3), '8UC3': (np.uint8, 3),
    'bgra8': (np.uint8, 4), 'rgba8': (np.uint8, 4),
    '32FC1': (np.float32, 1),
}


def offered_qos(reliable=True, depth=10):
    """
    Return the QoS profile list stored with a bag topic (what its publisher offered).

    ``ros2 bag play`` publishes with it; leaving it empty makes some rosbag2 versions fail to
    parse the metadata. Durations of zero mean 'unspecified' (the rmw default).
    """
    zero = QosTime(sec=0, nsec=0)
    return [Qos(history=QosHistory.KEEP_LAST, depth=depth,
                reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
                durability=QosDurability.VOLATILE, deadline=zero, lifespan=zero,
                liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=zero,
                avoid_ros_namespace_conventions=False)]


def _vision_msgs_dirs():
    """Yield folders that may hold vision_msgs' ``.msg`` files (ament index first)."""
    try:
        from ament_index_python.packages import get_package_share_directory
        yield Path(get_package_share_directory('vision_msgs')) / 'msg'
    except Exception:  # noqa: BLE001 - ament_index absent or vision_msgs not installed
        pass
    import sys
    yield Path(sys.prefix) / 'share' / 'vision_msgs' / 'msg'


def jazzy_typestore(extra_msg_dirs=()):
    """
    Return a rosbags typestore for ROS 2 Jazzy plus vision_msgs (when its .msg files are found).

    vision_msgs is not in rosbags' built-in store; its definitions are read from the installed
    package (ament index) so the type hashes written to bags equal the real package's.
    ``extra_msg_dirs`` are folders named ``<pkg>/msg`` holding more ``.msg`` files.
    """
    typestore = get_typestore(Stores.ROS2_JAZZY)
    dirs = [d for d in _vision_msgs_dirs() if d.is_dir()][:1] + [Path(d) for d in extra_msg_dirs]
    types = {}
    for msg_dir in dirs:
        package = msg_dir.parent.name
        for msg_file in sorted(msg_dir.glob('*.msg')):
            name = f'{package}/msg/{msg_file.stem}'
            types.update(get_types_from_msg(msg_file.read_text(), name))
    if types:
        typestore.register(types)
    return typestore


def type_has_header(typestore, msgtype):
    """Return True when ``msgtype``'s first field is a ``std_msgs/msg/Header``."""
    fielddefs = typestore.fielddefs.get(msgtype)
    if not fielddefs or not fielddefs[1]:
        return False
    _name, (node, ref) = fielddefs[1][0]
    return node == Nodetype.NAME and ref == 'std_msgs/msg/Header'


def _endian(data):
    if len(data) < 12:
        raise ValueError(f'CDR message of {len(data)} bytes is too short to hold a header stamp')
    # Encapsulation kind: odd values (CDR_LE=1, PL_CDR_LE=3) are little endian.
    return '<' if data[1] & 1 else '>'


def header_stamp_ns(data):
    """Return the header stamp (ns) of a raw CDR message whose first field is a Header."""
    sec, nanosec = struct.unpack_from(_endian(data) + 'iI', data, 4)
    return sec * 1_000_000_000 + nanosec


def replace_header_stamp(data, stamp_ns):
    """Return a copy of raw CDR ``data`` (first field a Header) with the stamp ``stamp_ns``."""
    if stamp_ns < 0:
        raise ValueError(f'stamp must be >= 0 ns, got {stamp_ns}')
    out = bytearray(data)
    struct.pack_into(_endian(data) + 'iI', out, 4, *divmod(int(stamp_ns), 1_000_000_000))
    return bytes(out)


def array_to_image(typestore, array, encoding, frame_id, stamp_ns):
    """
    Build a rosbags ``sensor_msgs/msg/Image`` from an array.

    ``array``: (H, W) for mono8/mono16, (H, W, 3) for bgr8/rgb8; dtype uint8 or uint16 to match.
    """
    if encoding not in _BYTES_PER_PIXEL:
        raise ValueError(
            f'unsupported encoding {encoding!r}; use one of {sorted(_BYTES_PER_PIXEL)}')
    dtype, channels = _BYTES_PER_PIXEL[encoding]
    array = np.asarray(array)
    expected_ndim = 2 if channels == 1 else 3
    if array.ndim != expected_ndim or (channels > 1 and array.shape[2] != channels) \
            or array.dtype != dtype or array.size == 0:
        raise ValueError(
            f'array of shape {array.shape} and dtype {array.dtype} does not fit encoding '
            f'{encoding!r} (needs {expected_ndim} dims, {channels} channel(s), {np.dtype(dtype)})')
    array = np.ascontiguousarray(array)
    height, width = array.shape[:2]
    image_cls = typestore.types['sensor_msgs/msg/Image']
    header = typestore.types['std_msgs/msg/Header'](
        stamp=typestore.types['builtin_interfaces/msg/Time'](
            sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000)),
        frame_id=frame_id)
    # Little endian on the wire, as every common robot CPU writes it.
    data = array.astype(array.dtype.newbyteorder('<'), copy=False).view(np.uint8).reshape(-1)
    return image_cls(header=header, height=height, width=width, encoding=encoding,
                     is_bigendian=0, step=width * channels * np.dtype(dtype).itemsize,
                     data=data)


def image_to_array(msg):
    """
    Decode an Image message (rosbags or rclpy) into ``(array, encoding)``.

    Returns (H, W) or (H, W, C) arrays; honours ``step`` (padded rows) and ``is_bigendian``.
    """
    encoding = msg.encoding
    if encoding not in _BYTES_PER_PIXEL:
        raise ValueError(f'unsupported encoding {encoding!r}')
    dtype, channels = _BYTES_PER_PIXEL[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    itemsize = np.dtype(dtype).itemsize
    row_bytes = width * channels * itemsize
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if height == 0 or width == 0:
        raise ValueError(f'empty image: {width}x{height}')
    if step < row_bytes or data.size < step * height:
        raise ValueError(f'image data too short: {data.size} bytes for step {step} x height '
                         f'{height} (row needs {row_bytes} bytes)')
    rows = data[:step * height].reshape(height, step)[:, :row_bytes]
    wire = np.dtype(dtype).newbyteorder('>' if msg.is_bigendian else '<')
    array = np.ascontiguousarray(rows).view(wire).astype(dtype).reshape(height, width, channels)
    return (array[:, :, 0] if channels == 1 else array), encoding


def open_writer(path, typestore=None):
    """Create a new rosbag2 directory (MCAP storage) and return the opened rosbags Writer."""
    path = Path(path)
    if path.exists():
        raise ValueError(f'output bag {path} exists already; remove it or choose another --out')
    writer = Writer(path, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    return writer


def read_messages(path, topics=None, typestore=None):
    """
    Yield ``(topic, msgtype, bag_time_ns, raw_cdr, msg)`` for the bag's messages in time order.

    ``msg`` is the deserialised rosbags message, or None when the typestore lacks the type.
    """
    typestore = typestore or jazzy_typestore()
    with Reader(Path(path)) as reader:
        connections = [c for c in reader.connections if topics is None or c.topic in topics]
        for connection, timestamp, data in reader.messages(connections=connections):
            msg = None
            if connection.msgtype in typestore.types:
                msg = typestore.deserialize_cdr(data, connection.msgtype)
            yield connection.topic, connection.msgtype, timestamp, bytes(data), msg

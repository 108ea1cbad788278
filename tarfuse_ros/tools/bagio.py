"""Helpers shared by the bag tools: typestore, images <-> arrays, header stamps in raw CDR.

Bags are rosbag2 directories written and read with ``rosbags`` (MCAP storage), so no rosbag2
install is needed. Messages stay raw CDR bytes wherever possible: that is what rosbag2 stores
and what ``rclpy`` publishes with ``publish(bytes)``. Images are encoded and decoded by the
node's own adapter around ``cv_bridge`` (``tarfuse_ros.ros.conversions``): one codec for the
node and the bag tools.
"""

from pathlib import Path
import statistics
import struct

from rosbags.interfaces import (
    Nodetype, Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime)
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import get_types_from_msg, get_typestore, Stores
from tarfuse_ros.core.input_lags import MAX_INFRARED_TIME_OFFSET_S

__all__ = [
    'BAG_VERSION',
    'array_to_image',
    'bag_folder_problem',
    'bag_read_problem',
    'camera_topics',
    'check_topic_name',
    'clocks_apart_problem',
    'compressed_cdr',
    'compressed_depth_cdr',
    'header_stamp_ns',
    'image_cdr',
    'image_to_array',
    'image_topic',
    'is_compressed_depth_topic',
    'jazzy_typestore',
    'offered_qos',
    'open_writer',
    'read_messages',
    'replace_header_stamp',
    'stamp_jump_problem',
    'type_has_header',
    'unfinished_mcap_problem',
]

# rosbag2 metadata version 8 (QoS profiles as a YAML string) is read by Humble and Jazzy alike.
BAG_VERSION = 8


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


# rosbag2's storage files: MCAP (Jazzy's default) and SQLite 3 (Humble's).
_STORAGE_SUFFIXES = ('.mcap', '.db3')


def bag_folder_problem(path):
    """Return why ``path`` is not a rosbag2 bag (a message saying what to give), or None.

    A bag is a folder holding ``metadata.yaml`` and its storage files (``.mcap``, ``.db3``), or
    a lone storage file without a folder around it (``ros2 bag play`` and rosbags read one);
    rosbags' own message for anything else names neither ('Expected metadata file ... does
    not exist', the folder named as the file). Only whether the file exists is checked here:
    one that cannot be parsed is reported by the reader.
    """
    path = Path(path)
    if (path / 'metadata.yaml').is_file():
        return None
    if not path.exists():
        return f'{path}: no such bag folder'
    if path.is_file():
        if (path.parent / 'metadata.yaml').is_file():  # one file of a bag maybe split in several
            return f'{path} is a file of the bag {path.parent}: give the bag folder'
        if path.suffix in _STORAGE_SUFFIXES:  # a lone storage file: rosbags reads it as a bag
            return None
        return f'{path} is a file; a bag is a folder holding metadata.yaml (or a lone .mcap file)'
    storage = sorted(p.name for p in path.iterdir() if p.suffix in _STORAGE_SUFFIXES)
    if storage:
        return (f'{path} holds {storage[0]} but no metadata.yaml (a recording that was not '
                f'closed?); rebuild it with: ros2 bag reindex {path}')
    bags = sorted(p.name for p in path.iterdir() if (p / 'metadata.yaml').is_file())
    if bags:
        return f'{path} is not a bag but holds {len(bags)}: give one of them ({bags[0]}, ...)'
    return f'{path} is not a rosbag2 bag folder (no metadata.yaml in it)'


# The magic bytes an MCAP file starts and ends with (the end ones come with its footer).
_MCAP_MAGIC = b'\x89MCAP0\r\n'


def unfinished_mcap_problem(path):
    """Return why the bag ``path`` cannot be read if an MCAP file of it is unfinished, or None.

    A recorder writes an MCAP file's footer when it closes it: a file still being recorded, or
    cut short (a recorder killed, a full disk), has none, and rosbags said only 'File end magic
    is invalid.' (or 'seems to be empty' for one just created).
    """
    path = Path(path)
    files = sorted(path.glob('*.mcap')) if path.is_dir() else [path]
    for file in (file for file in files if file.suffix == '.mcap'):
        try:
            with open(file, 'rb') as stream:
                size = stream.seek(0, 2)
                stream.seek(max(0, size - len(_MCAP_MAGIC)))
                finished = stream.read() == _MCAP_MAGIC
        except OSError:
            continue
        if not finished:
            name = file if file == path else f'{path}: its file {file.name}'
            return (f'{name} is not a finished MCAP file (still being recorded, or cut '
                    'short): use it once the recording has ended; `mcap recover` rebuilds the '
                    'messages of one cut short')
    return None


def bag_read_problem(path, exc):
    """Return the message for the bag ``path`` that rosbags could not read, raising ``exc``.

    An unfinished MCAP file is named as such (:func:`unfinished_mcap_problem`); else rosbags'
    own words follow the path.
    """
    return unfinished_mcap_problem(path) or f'cannot read the bag {str(path)!r}: {exc}'


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
    if stamp_ns >= 2**31 * 1_000_000_000:  # struct.error, a traceback
        raise ValueError(f'a stamp holds at most 2^31 - 1 s (2038-01-19), got '
                         f'{stamp_ns // 1_000_000_000} s')
    out = bytearray(data)
    struct.pack_into(_endian(data) + 'iI', out, 4, *divmod(int(stamp_ns), 1_000_000_000))
    return bytes(out)


def _header(frame_id, stamp_ns):
    from std_msgs.msg import Header
    header = Header(frame_id=str(frame_id))
    header.stamp.sec, header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return header


def image_cdr(array, encoding, frame_id, stamp_ns):
    """
    Return the raw CDR of a ``sensor_msgs/msg/Image`` built from an array by cv_bridge.

    ``array`` and ``encoding`` as :func:`tarfuse_ros.ros.conversions.array_to_image_msg`
    takes them (e.g. (H, W) uint16 for ``mono16``, (H, W, 3) uint8 for ``bgr8``/``rgb8``).
    Raises ``ValueError`` when they do not fit.
    """
    from rclpy.serialization import serialize_message
    from tarfuse_ros.ros.conversions import array_to_image_msg
    if stamp_ns < 0:
        raise ValueError(f'stamp must be >= 0 ns, got {stamp_ns}')
    return serialize_message(array_to_image_msg(array, encoding, _header(frame_id, stamp_ns)))


def compressed_cdr(array, fmt, frame_id, stamp_ns):
    """
    Return the raw CDR of a ``sensor_msgs/msg/CompressedImage`` (``fmt`` ``'jpeg'``/``'png'``).

    ``array``: (H, W) or (H, W, 3) BGR, uint8 (or uint16 for ``'png'``, kept 16-bit); the
    ``format`` field follows image_transport (``'mono16; png compressed mono16'``).
    """
    from rclpy.serialization import serialize_message
    from tarfuse_ros.ros.conversions import array_to_compressed_msg
    if stamp_ns < 0:
        raise ValueError(f'stamp must be >= 0 ns, got {stamp_ns}')
    return serialize_message(array_to_compressed_msg(array, _header(frame_id, stamp_ns), fmt))


def compressed_depth_cdr(array, encoding, frame_id, stamp_ns, **options):
    """
    Return the raw CDR of a ``CompressedImage`` of image_transport's compressedDepth transport.

    ``array``: (H, W) uint16 (``encoding`` ``'mono16'`` or ``'16UC1'``) or float32
    (``'32FC1'``, coded by its quantised inverse), written as
    :func:`tarfuse_ros.ros.conversions.array_to_compressed_depth_msg` does (12-byte header, then
    a 16-bit PNG; ``format`` ``'<encoding>; compressedDepth png'``); ``options``
    (``depth_max``, ``depth_quantization``) go to it. Raises ``ValueError`` for anything else,
    or for a float image the codec's 16 bits cannot hold.
    """
    from rclpy.serialization import serialize_message
    from tarfuse_ros.ros.conversions import array_to_compressed_depth_msg
    if stamp_ns < 0:
        raise ValueError(f'stamp must be >= 0 ns, got {stamp_ns}')
    return serialize_message(array_to_compressed_depth_msg(
        array, _header(frame_id, stamp_ns), encoding=encoding, **options))


def array_to_image(typestore, array, encoding, frame_id, stamp_ns):
    """Build a rosbags ``sensor_msgs/msg/Image`` from an array (see :func:`image_cdr`)."""
    return typestore.deserialize_cdr(image_cdr(array, encoding, frame_id, stamp_ns),
                                     'sensor_msgs/msg/Image')


def image_to_array(msg, topic=None):
    """
    Decode an Image or CompressedImage message (rosbags or rclpy) as the node does.

    ``topic``: the bag topic it came from; on ``<base>/compressedDepth`` it is decoded as the
    node's ``compressedDepth`` transport does
    (:func:`tarfuse_ros.ros.conversions.compressed_depth_msg_to_array`).

    Returns ``(array, kind)`` from :func:`tarfuse_ros.ros.conversions.image_msg_to_array`:
    grey images (H, W) (``'gray8'``, ``'gray16'``, ``'float32'``), colour ones (H, W, 3) in BGR
    order (``'bgr8'``, ``'bgr16'``); ``step`` and ``is_bigendian`` are honoured. Raises
    ``ValueError`` naming the cause for a message that cannot be decoded.
    """
    from tarfuse_ros.ros.conversions import compressed_depth_msg_to_array, image_msg_to_array
    if topic is not None and is_compressed_depth_topic(topic):
        return compressed_depth_msg_to_array(msg)
    return image_msg_to_array(msg)


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


def image_topic(topics, topic):
    """Return the bag topic holding ``topic``'s images (itself or a compressed transport's).

    Itself, ``<topic>/compressed`` or ``<topic>/compressedDepth``, in that order. ``topics``
    maps the bag's topics to their message types. Raises ``ValueError`` naming the bag's image
    topics when none is there.
    """
    for candidate in (topic, topic.rstrip('/') + '/compressed',
                      topic.rstrip('/') + '/compressedDepth'):
        if candidate in topics:
            return candidate
    raise ValueError(f'topic {topic!r} (or {topic}/compressed, {topic}/compressedDepth) is not '
                     f'in the bag; its image topics: '
                     f'{sorted(t for t in topics if "image" in topics[t].lower())}')


def is_compressed_depth_topic(topic):
    """Return whether a bag ``topic`` is of image_transport's compressedDepth transport."""
    return str(topic).endswith('/compressedDepth')


def camera_topics(path, ir_topic, vi_topic):
    """Return the bag topics ``(ir, vi)`` holding the two cameras' images (:func:`image_topic`).

    Raises:
        ValueError: ``path`` is no readable rosbag2 bag (:func:`bag_folder_problem`,
            :func:`bag_read_problem`), a topic is not in it, or both name one topic (each
            image would pair with itself); the message says which.

    """
    problem = bag_folder_problem(path)
    if problem is not None:
        raise ValueError(problem)
    try:
        with Reader(Path(path)) as reader:
            types = {c.topic: c.msgtype for c in reader.connections}
    except Exception as exc:  # noqa: BLE001 - rosbags raises several error types
        raise ValueError(bag_read_problem(path, exc)) from exc
    ir_bag, vi_bag = image_topic(types, ir_topic), image_topic(types, vi_topic)
    if ir_bag == vi_bag:
        raise ValueError(f'the IR and visible topics are one topic ({ir_bag!r}); give the '
                         f'topic of each camera')
    return ir_bag, vi_bag


def clocks_apart_problem(lags_ns, ir_topic, vi_topic, limit_s=MAX_INFRARED_TIME_OFFSET_S):
    """Return why two cameras' stamps of a bag cannot be paired (clocks apart), or None.

    Each camera's lag is the median of its messages' header stamp minus the time the recorder
    logged them; the lags of two cameras differ by the offset of their drivers' clocks (less
    the difference of their transport latencies, a fraction of a second). Beyond ``limit_s``
    (the node's ``sync.infrared_time_offset`` corrects at most 1 s) the stamps of one instant
    are seconds apart: pairing by stamp would pair images of other instants, and a stamp
    offset of a whole number of frame intervals hides it.

    Args:
        lags_ns: ``{topic: [header stamp - log time (ns), ...]}`` of ``ir_topic`` and
            ``vi_topic``, each non-empty.
        ir_topic, vi_topic: the bag topics of the two cameras.
        limit_s: the largest difference of the two lags accepted (s).

    Returns:
        None, or the reason as a sentence naming both topics and the difference.

    """
    ir_lag, vi_lag = (statistics.median(lags_ns[topic]) / 1e9 for topic in (ir_topic, vi_topic))
    apart = ir_lag - vi_lag
    if abs(apart) <= limit_s:
        return None
    return (f'the {ir_topic} stamps are {abs(apart):.3f} s {"later" if apart > 0 else "earlier"} '
            f'than the {vi_topic} stamps, against the times the recorder received them (median '
            f'stamp minus receive time: IR {ir_lag:+.3f} s, visible {vi_lag:+.3f} s): the '
            f"drivers' clocks are that far apart (two computers whose clocks are not "
            f"synchronised, a driver stamping with the camera's own clock), and images "
            f"stamped alike were taken seconds apart (or one camera's images reached the "
            f"recorder seconds late: the node's sync.queue_size would not hold the other "
            f"camera's images that long either); synchronise the clocks (chrony, PTP) or "
            f'stamp with the system time, and record again (sync.infrared_time_offset '
            f'corrects at most {limit_s:g} s)')


def stamp_jump_problem(stamps_ns, topic, limit_s=1.0, run=3):
    """Return why a topic's header stamps, in the order recorded, are not one timeline, or None.

    They jump back: ``run`` consecutive messages or more stamped more than ``limit_s`` (s)
    before the newest stamp recorded before them (a driver restarted, its clock was reset; the
    node's time offset check starts over at such a jump). A message or two recorded late are
    no jump (their images are left out or put back in order).

    Args:
        stamps_ns: the topic's header stamps (ns) in the order they were recorded, zero
            stamps left out.
        topic: the bag topic, named in the sentence.
        limit_s: how far back (s) a stamp may lie.
        run: how many consecutive messages so far back make a jump.

    Returns:
        None, or the reason as a sentence naming the topic, how far back and after which image.

    """
    limit_ns, newest, first, count = round(limit_s * 1e9), None, 0, 0
    for index, stamp in enumerate(stamps_ns):
        if newest is not None and stamp < newest - limit_ns:
            if not count:
                first, back_s = index, (newest - stamp) / 1e9
            count += 1
            if count >= run:
                break
        else:
            count = 0
        newest = stamp if newest is None else max(newest, stamp)
    else:
        return None
    return (f'the {topic} stamps jump back {back_s:.3f} s after its image {first} of '
            f'{len(stamps_ns)} (the driver restarted, or its clock was reset): the images after '
            f'it are stamped on another timeline than those before, and stamps would pair '
            f'images of other instants; use a recording without the jump (record again, or '
            f'cut the bag before it)')


def check_topic_name(name, what):
    """Raise ValueError when ``name`` is not a valid ROS topic name (rclpy's rules).

    The name is also expanded as a node in the root namespace expands it (``~`` and
    substitutions) and checked as a full name: rclpy's first check takes ``a//b``, ``a/`` and
    unknown substitutions, which creating the publisher or subscription then refused with a
    traceback.
    """
    from rclpy.exceptions import InvalidTopicNameException
    from rclpy.expand_topic_name import expand_topic_name
    from rclpy.validate_full_topic_name import validate_full_topic_name
    from rclpy.validate_topic_name import validate_topic_name
    try:
        validate_topic_name(name)
        validate_full_topic_name(expand_topic_name(name, 'tarfuse', '/'))
    except (InvalidTopicNameException, ValueError) as exc:  # ValueError: a substitution
        reason = str(exc).splitlines()[0].split(', at ')[0].strip().rstrip(':')
        raise ValueError(f'{what} {name!r} is not a valid ROS topic name ({reason})') from None

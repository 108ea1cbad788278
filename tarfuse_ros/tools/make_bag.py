r"""tarfuse-make-bag: turn an IR/visible image-pair folder into a rosbag2 directory (MCAP).

The folder has the shared layout: ``ir/`` and ``vi/`` with the same file stem per pair
(optionally list files such as ``test.txt``). Each pair becomes one IR and one visible
``sensor_msgs/msg/Image`` with realistic stamps (a fixed start time, ``1/rate`` apart),
encodings (IR ``mono8``, ``mono16`` or ``32FC1`` for float images, visible ``bgr8``), frame
ids, and optional small offsets and jitter between the two cameras, as two free-running cameras
would give. With
``--ir-transport compressed`` / ``--vi-transport compressed`` a camera is written as
``sensor_msgs/msg/CompressedImage`` on ``<topic>/compressed`` instead, as image_transport
records it (IR: PNG, 16-bit for mono16; visible: JPEG or PNG); ``--ir-transport
compressedDepth`` writes a mono16 or 32FC1 IR on ``<topic>/compressedDepth`` as
image_transport's compressedDepth plugin does (12-byte header, 16-bit PNG; a 32FC1 image by its
quantised inverse, with the plugin's ``--depth-max`` and ``--depth-quantization``; mono16
counts as they are, all at most ``--depth-max`` x 1000, which the plugin sends as 0 above).
Images are
encoded by cv_bridge, as the node decodes them. The bag plays with ``tarfuse-play`` or, on a
ROS install, ``ros2 bag play``.

Example::

    tarfuse-make-bag --pairs samples --out /tmp/sample_bag --rate 5 --ir-encoding mono16 \\
        --offset-ms 7 --jitter-ms 2 --ir-transport compressed --vi-transport compressed
"""

import argparse
from dataclasses import dataclass
import math
from pathlib import Path
import sys

import cv2
import numpy as np

from tarfuse_ros.console import HelpFormatter
from tarfuse_ros.core.files import atomic_output, output_problem, remove_stale_outputs
from tarfuse_ros.core.layout import image_path, read_split, unpaired_stems
from tarfuse_ros.core.sizes import MAX_ENLARGED_LONG_SIDE
from tarfuse_ros.tools.bagio import check_topic_name, compressed_cdr, compressed_depth_cdr
from tarfuse_ros.tools.bagio import image_cdr, jazzy_typestore, offered_qos, open_writer

__all__ = ['BagSummary', 'build_parser', 'ir_to_mono16', 'list_pairs', 'main', 'make_bag',
           'parse_size']

IR_ENCODINGS = ('mono8', 'mono16', '32FC1')
DEFAULT_START_TIME_S = 1_700_000_000.0  # 2023-11-14T22:13:20Z, a fixed 'recorded' epoch
# mono16 IR as a radiometric camera in TLinear mode gives it: centi-kelvin. 8-bit grey g maps to
# 27315 + 16 g, i.e. 0 degC .. 40.8 degC, a plausible outdoor scene range in 14 of 16 bits.
MONO16_OFFSET = 27315
MONO16_GAIN = 16
TRANSPORTS = ('raw', 'compressed')
IR_TRANSPORTS = TRANSPORTS + ('compressedDepth',)
MAX_RATE_HZ = 1e9  # one stamp a nanosecond
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class BagSummary:
    """What ``make_bag`` wrote: message counts, the stamps' span (ns) and the image sizes."""

    path: Path
    pairs: int
    messages: int
    start_ns: int
    end_ns: int
    ir_topic: str
    vi_topic: str
    stems: list
    # A 32FC1 IR on compressedDepth: the largest difference of a value the node decodes from
    # the image's (its units; the codec's quantisation); None for any other IR.
    ir_max_error: float = None


def ir_to_mono16(ir8):
    """Map an 8-bit IR image (H, W) uint8 to plausible 16-bit radiometric counts (centi-kelvin)."""
    ir8 = np.asarray(ir8)
    if ir8.dtype != np.uint8:
        raise ValueError(f'ir_to_mono16 needs uint8 input, got {ir8.dtype}')
    return (MONO16_OFFSET + MONO16_GAIN * ir8.astype(np.uint32)).astype(np.uint16)


def list_pairs(pairs_dir, split=None, ir_dir='ir', vi_dir='vi'):
    """
    Return ``[(stem, ir_path, vi_path)]`` for a pair folder, in split-file or sorted order.

    ``split`` is read as every tool reads it (:func:`tarfuse_ros.core.layout.read_split`): a
    name such as ``test`` for ``<pairs_dir>/test.txt``, a list file's path, ``all`` (the stems
    with both images) or ``misaligned``. Without one, every image is a pair's: one without its
    partner on the other side is an error, not left out.
    """
    stems = read_split(pairs_dir, split or 'all', ir_dir=ir_dir, vi_dir=vi_dir)
    if split is None:  # the images without a partner are named below
        stems = sorted(set(stems).union(*unpaired_stems(pairs_dir, ir_dir, vi_dir)))
    pairs = [(stem, *(Path(image_path(pairs_dir, folder, stem)) for folder in (ir_dir, vi_dir)))
             for stem in stems]
    if not pairs:
        raise ValueError(f'no image pairs found in {pairs_dir}')
    return pairs


def parse_size(text):
    """Return ``(width, height)`` of ``'WIDTHxHEIGHT'`` (None for None); ValueError if bad."""
    if text is None:
        return None
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise ValueError(
            f'size must look like WIDTHxHEIGHT (e.g. 640x512), got {text!r}') from None
    if width <= 0 or height <= 0:
        raise ValueError(f'size must be positive, got {width}x{height}')
    if max(width, height) > MAX_ENLARGED_LONG_SIDE:  # 99999x99999 ran out of memory in OpenCV
        raise ValueError(f'size must be at most {MAX_ENLARGED_LONG_SIDE} px per side, got '
                         f'{width}x{height}')
    return width, height


def _read(path, flags):
    image = cv2.imread(str(path), flags)
    if image is None:
        raise ValueError(f'cannot read image {path}')
    return image


def _load_ir(path, size, encoding):
    ir = _read(path, cv2.IMREAD_UNCHANGED)
    if ir.ndim == 3:
        ir = cv2.cvtColor(ir, cv2.COLOR_BGRA2GRAY if ir.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    if ir.dtype == np.uint16 and encoding == 'mono8':
        levels = int(ir.max() >> 8) - int(ir.min() >> 8) + 1
        if levels < 64:
            # Raw radiometric counts span a narrow band: their top byte is nearly flat.
            raise ValueError(f'IR image {path} is 16-bit with counts {int(ir.min())}-'
                             f'{int(ir.max())}: mono8 would keep only its top byte ({levels} '
                             f'grey levels); use --ir-encoding mono16')
        ir = (ir >> 8).astype(np.uint8)
    elif ir.dtype.kind == 'f' and encoding != '32FC1':
        raise ValueError(f'IR image {path} is {ir.dtype} (temperatures?): {encoding} holds '
                         f'integers; use --ir-encoding 32FC1')
    elif ir.dtype not in (np.uint8, np.uint16) and ir.dtype.kind != 'f':
        raise ValueError(f'IR image {path} has unsupported dtype {ir.dtype}: give 8- or 16-bit '
                         f'images (--ir-encoding mono8 or mono16) or float ones (32FC1)')
    if encoding == '32FC1':  # as stored: temperatures, or counts as their values
        ir = ir.astype(np.float32)
        finite = np.isfinite(ir)
        if not finite.all():  # the bag was written, each such frame refused by the node
            nan = int(np.isnan(ir).sum())
            inf = int(ir.size - finite.sum()) - nan
            raise ValueError(f'IR image {path} holds {nan} NaN and {inf} inf values: the node '
                             f'refuses a float frame with any (on every transport); write the '
                             f'image with a value in their place')
    if size is not None:
        ir = cv2.resize(ir, size, interpolation=cv2.INTER_AREA)
    if encoding == 'mono16' and ir.dtype == np.uint8:
        ir = ir_to_mono16(ir)
    return ir


def _two_digits_past(value, up):
    """Return the number of two significant digits next above (``up``) or below ``value`` > 0."""
    unit = 10.0 ** (math.floor(math.log10(value)) - 1)
    steps = math.floor(value / unit) + 1 if up else math.ceil(value / unit) - 1
    return float(f'{steps * unit:.6g}')  # 0.51, not 0.51000000000000001


def _check_depth_range(irs, depth_max):
    """
    Refuse 32FC1 IR images compressedDepth cannot carry at ``depth_max``, with options that can.

    ``irs``: ``[(path, ir)]``, each ``ir`` (H, W) float32 (NaN and inf refused as it was read).
    Raises ``ValueError`` naming the image for a value of 0 or less (the codec codes the
    inverse), and naming the image with the largest value where it is not below ``depth_max``
    (compared in float32, as the codec compares: sent as 0, which the node decodes as NaN and
    refuses the frame for). The latter gives a ``--depth-max`` and ``--depth-quantization`` for
    the values of all of ``irs``: a two-digit depth_max above the largest, and the largest
    two-digit quantisation that codes the smallest in 16 bits at it.
    """
    from tarfuse_ros.ros.conversions import largest_depth_quantization
    for path, ir in irs:
        if (ir <= 0).any():
            raise ValueError(f'IR image {path} holds {int((ir <= 0).sum())} values of 0 or '
                             f'less: compressedDepth codes a 32FC1 image by its inverse and '
                             f'needs values > 0 (kelvin, not degrees Celsius), or use '
                             f'--ir-transport raw')
    hottest, hottest_ir = max(irs, key=lambda item: float(item[1].max()))
    largest = float(hottest_ir.max())
    if largest < np.float32(depth_max):  # 324.15 as float32 is below 324.15
        return
    smallest = min(float(ir.min()) for _, ir in irs)
    # Above the next float32 too: the codec compares in float32, 0.51 may round to 0.50999999.
    fitting_max = _two_digits_past(float(np.nextafter(np.float32(largest), np.float32(np.inf))),
                                   up=True)
    # A little below the limit: at it the smallest value codes as 65536, just below it the
    # codec's float32 arithmetic can still reach that.
    fitting_quantization = _two_digits_past(
        0.999 * largest_depth_quantization(smallest, fitting_max), up=False)
    raise ValueError(f'IR image {hottest} has values up to {largest:g}, not below --depth-max '
                     f'{depth_max:g}: compressedDepth would send them as 0, decoded as NaN (the '
                     f'node refuses such a frame); give a --depth-max above {largest:g} (for '
                     f'these images, {smallest:g} to {largest:g}: --depth-max {fitting_max:g} '
                     f'--depth-quantization {fitting_quantization:g})')


def _check_kept_counts(irs, depth_max):
    """
    Refuse mono16 IR images with counts the compressedDepth publisher would send as 0.

    ``irs``: ``[(path, ir)]``, each ``ir`` (H, W) uint16. image_transport's compressedDepth
    plugin sends a 16-bit value above ``depth_max`` x 1000 as 0
    (:func:`~tarfuse_ros.ros.conversions.largest_kept_count`), where this tool's encoder
    would keep it: ``ValueError`` naming the image with the largest count and a
    ``--depth-max`` that keeps every count of ``irs``.
    """
    from tarfuse_ros.ros.conversions import largest_kept_count
    kept = largest_kept_count(depth_max)
    hottest, hottest_ir = max(irs, key=lambda item: int(item[1].max()))
    largest = int(hottest_ir.max())
    if largest <= kept:
        return
    fitting = math.ceil(largest / 1000)
    if fitting * 1000 >= 65536:  # past the publisher's 16-bit cast: just above the count
        fitting = (largest + 0.5) / 1000
    above = sum(int((ir > kept).sum()) for _, ir in irs)
    raise ValueError(f'IR image {hottest} has counts up to {largest}, above --depth-max '
                     f"{depth_max:g} x 1000 ({kept}): image_transport's compressedDepth "
                     f'publisher sends such counts as 0 ({above} of them in these images); '
                     f"give a --depth-max of at least {fitting:g}, as the publisher's "
                     f'depth_max')


def _check_depth_coding(path, ir, depth_max, depth_quantization):
    """
    Return how far the node decodes a 32FC1 IR image sent on compressedDepth from its values.

    ``ir``: (H, W) float32, every value > 0 and below ``depth_max`` (:func:`_check_depth_range`),
    coded with the publisher's ``depth_max`` and ``depth_quantization`` and decoded as the node
    decodes it; the result is the largest absolute difference (the image's units). Raises
    ``ValueError`` naming ``path`` and the option to change where the codec would not carry
    the image: a smallest value that needs more than 16 bits, a ``depth_quantization`` so
    coarse that the decoded image is further off than its own range of values (its contrast
    lost: all of 273-324 K decoded as 400 K at 10).
    """
    from tarfuse_ros.ros.conversions import array_to_compressed_depth_msg
    from tarfuse_ros.ros.conversions import compressed_depth_msg_to_array
    from tarfuse_ros.ros.conversions import largest_depth_quantization
    smallest, largest = float(ir.min()), float(ir.max())
    try:
        msg = array_to_compressed_depth_msg(ir, depth_max=depth_max,
                                            depth_quantization=depth_quantization)
    except ValueError as exc:
        raise ValueError(f'IR image {path}: {exc} (--depth-max, --depth-quantization)') from None
    try:
        error = float(np.abs(compressed_depth_msg_to_array(msg)[0] - ir).max())
    except ValueError:  # every value is below depth_max: decoded as inf by a step too coarse
        error = math.inf
    if largest > smallest and not error < largest - smallest:
        off = 'as infinite' if math.isinf(error) else f'up to {error:.3g} off'
        raise ValueError(
            f'IR image {path} (values {smallest:g} to {largest:g}) would decode {off} at '
            f'--depth-quantization {depth_quantization:g} (--depth-max {depth_max:g}), more '
            f'than its own range: the node would receive it without its contrast; give a '
            f'larger --depth-quantization (below '
            f'{largest_depth_quantization(smallest, depth_max):.6g}, which fits its smallest '
            f"value in the codec's 16 bits)")
    return error


def _load_vi(path, size, encoding):
    # As stored, like the IR image (IMREAD_UNCHANGED) and tarfuse-fuse: an EXIF orientation
    # would turn the visible image alone.
    flags = cv2.IMREAD_COLOR if encoding in ('bgr8', 'rgb8') else cv2.IMREAD_GRAYSCALE
    vi = _read(path, flags | cv2.IMREAD_IGNORE_ORIENTATION)
    if size is not None:
        vi = cv2.resize(vi, size, interpolation=cv2.INTER_AREA)
    if encoding == 'rgb8':
        vi = cv2.cvtColor(vi, cv2.COLOR_BGR2RGB)
    return vi


def make_bag(pairs_dir, out, *, split=None, rate=10.0, ir_encoding='mono8', vi_encoding='bgr8',
             offset_ms=0.0, jitter_ms=0.0, ir_frame='ir_optical_frame',
             vi_frame='visible_optical_frame', ir_topic='/infrared/image_raw',
             vi_topic='/visible/image_raw', loops=1, seed=0, start_time_s=DEFAULT_START_TIME_S,
             size=None, ir_size=None, ir_dir='ir', vi_dir='vi', max_pairs=None,
             ir_transport='raw', vi_transport='raw', vi_format='jpeg', depth_max=None,
             depth_quantization=None):
    """
    Write a rosbag2 (MCAP) directory ``out`` from the pairs in ``pairs_dir``; return a summary.

    The visible frame of pair ``k`` (counting over loops) is stamped
    ``start_time_s + k / rate``; its IR partner is stamped ``offset_ms`` later plus a uniform
    jitter in ``[-jitter_ms, jitter_ms]`` (seeded). The bag's receive time equals each stamp.
    ``size`` / ``ir_size`` (``(width, height)``) resize the visible / IR images (IR defaults to
    the visible size when only ``size`` is given). ``ir_transport`` / ``vi_transport``
    (``'raw'`` or ``'compressed'``) choose ``sensor_msgs/msg/Image`` on the topic or
    ``sensor_msgs/msg/CompressedImage`` on ``<topic>/compressed`` (IR as PNG, visible as
    ``vi_format``: ``'jpeg'`` or ``'png'``); ``ir_transport`` ``'compressedDepth'`` (with
    ``ir_encoding`` mono16 or 32FC1) writes the IR on ``<topic>/compressedDepth`` as
    image_transport's compressedDepth plugin does, a 32FC1 image quantised by the plugin's
    ``depth_max`` and ``depth_quantization`` (its defaults, 10 and 100, where None), a mono16
    one as it is, each count at most ``depth_max`` x 1000 (the plugin sends larger ones as 0;
    ``depth_max`` below 65.536, ``ValueError`` naming the image and ``--depth-max``
    otherwise); for a 32FC1 one every IR
    value must then be > 0 and below ``depth_max``, the smallest coded in 16 bits, the
    quantisation finer than the image's range of values (``ValueError`` naming the image and
    the option to change otherwise); a 32FC1 IR with NaN or inf is refused on every transport;
    ``summary.ir_max_error`` says how far the node's decoded values are off. The bag is written
    in a temporary folder beside ``out`` (``<name>.<8 hex digits>.tmp``) and renamed to ``out``
    when complete; one a killed run left is removed by the next run. ``ValueError`` if ``out``
    exists already.
    """
    if not 0 < rate <= MAX_RATE_HZ:  # NaN too; above it the period rounds to 0 ns
        raise ValueError(f'rate must be > 0 and at most {MAX_RATE_HZ:g} Hz, got {rate}')
    for name, value in (('offset_ms (--offset-ms)', offset_ms),
                        ('jitter_ms (--jitter-ms)', jitter_ms)):
        if not math.isfinite(value):  # NaN failed in int() naming no option, or was taken as 0
            raise ValueError(f'{name} must be a finite number, got {value}')
    if ir_encoding not in IR_ENCODINGS:
        raise ValueError(f'ir_encoding must be mono8, mono16 or 32FC1, got {ir_encoding!r}')
    if vi_encoding not in ('bgr8', 'rgb8', 'mono8'):
        raise ValueError(f'vi_encoding must be bgr8, rgb8 or mono8, got {vi_encoding!r}')
    if loops < 1:
        raise ValueError(f'loops must be >= 1, got {loops}')
    if jitter_ms < 0:
        raise ValueError(f'jitter_ms must be >= 0, got {jitter_ms}')
    if seed < 0:  # numpy's 'expected non-negative integer' named no option
        raise ValueError(f'seed (--seed) must be >= 0, got {seed}')
    if max_pairs is not None and max_pairs < 1:  # 0 wrote an empty bag, -1 left one pair out
        raise ValueError(f'max_pairs (--max-pairs) must be >= 1, got {max_pairs}')
    period_ns = 1e9 / rate  # a float: 1e-300 Hz gives inf (int() raised OverflowError)
    if abs(offset_ms) * 1e6 + jitter_ms * 1e6 >= period_ns / 2:
        raise ValueError(f'|offset_ms| + jitter_ms = {abs(offset_ms) + jitter_ms} ms must stay '
                         f'below half the frame period ({period_ns / 2e6} ms) so pairs stay '
                         'distinguishable')
    if not 1 <= start_time_s < 2**31:
        raise ValueError(f'start_time_s must be seconds in [1, 2**31) (zero stamps upset '
                         f'synchronisers; ROS stamps hold int32 seconds), got {start_time_s}')
    first_s = start_time_s + (min(offset_ms, 0.0) - jitter_ms) / 1e3  # IR may go first
    if not first_s >= 1:  # was 'stamp must be >= 0 ns' (below 0), naming no option
        raise ValueError(f'the first IR stamp could be {first_s:.6g} s (--start-time, '
                         f'--offset-ms, --jitter-ms), below 1 s: give a later --start-time')
    for name, topic in (('ir_topic', ir_topic), ('vi_topic', vi_topic)):
        check_topic_name(topic, name)
    for name, transport, allowed in (('ir_transport', ir_transport, IR_TRANSPORTS),
                                     ('vi_transport', vi_transport, TRANSPORTS)):
        if transport not in allowed:
            raise ValueError(f'{name} must be one of {allowed}, got {transport!r}')
    if ir_transport == 'compressedDepth' and ir_encoding == 'mono8':
        raise ValueError('compressedDepth carries 16-bit counts or floats (the codec codes '
                         'them by their inverse): use --ir-encoding mono16 or 32FC1 with '
                         '--ir-transport compressedDepth')
    depth_coded = ir_transport == 'compressedDepth' and ir_encoding == '32FC1'
    depth_capped = ir_transport == 'compressedDepth' and ir_encoding == 'mono16'
    if ir_transport != 'compressedDepth' and depth_max is not None:
        raise ValueError("depth_max (--depth-max) is the compressedDepth publisher's: give it "
                         'with --ir-transport compressedDepth')
    if not depth_coded and depth_quantization is not None:
        raise ValueError('depth_quantization (--depth-quantization) quantises a 32FC1 IR on '
                         'compressedDepth: give it with --ir-encoding 32FC1 --ir-transport '
                         'compressedDepth')
    from tarfuse_ros.ros.conversions import DEPTH_MAX_DEFAULT, DEPTH_QUANTIZATION_DEFAULT
    depth_max = DEPTH_MAX_DEFAULT if depth_max is None else depth_max
    depth_quantization = (DEPTH_QUANTIZATION_DEFAULT if depth_quantization is None
                          else depth_quantization)
    for name, value in (('depth_max (--depth-max)', depth_max),
                        ('depth_quantization (--depth-quantization)', depth_quantization)):
        # The codec takes them as float32: 1e39 was inf there (and overflow warnings here).
        if not (math.isfinite(value) and 0 < value <= FLOAT32_MAX):
            raise ValueError(f'{name} must be a finite number > 0, at most {FLOAT32_MAX:g} '
                             f"(the codec's float32), got {value}")
    if depth_capped:
        from tarfuse_ros.ros.conversions import largest_kept_count
        try:
            largest_kept_count(depth_max)
        except ValueError as exc:
            raise ValueError(f'--depth-max: {exc}') from None
    # Compared as stored (a compressed camera on <topic>/compressed) and as tarfuse-play names
    # them (a relative name in '/'): '/v' compressed and '/v/compressed' put both cameras on
    # one topic, an Image and a CompressedImage stream in one.
    from rclpy.expand_topic_name import expand_topic_name
    stored = {expand_topic_name(topic, 'tarfuse_player', '/')
              + ('' if transport == 'raw' else f'/{transport}')
              for topic, transport in ((ir_topic, ir_transport), (vi_topic, vi_transport))}
    if len(stored) == 1:
        raise ValueError(f'IR and visible topics must differ, both are {stored.pop()!r}')
    if vi_format not in ('jpeg', 'png'):
        raise ValueError(f"vi_format must be 'jpeg' or 'png', got {vi_format!r}")
    if ir_transport == 'compressed' and ir_encoding == '32FC1':
        raise ValueError('a 32FC1 IR has no compressed transport (PNG holds 8 or 16 bits): use '
                         'ir_transport raw (--ir-transport raw)')
    if vi_transport == 'compressed' and vi_encoding == 'rgb8':
        raise ValueError('compressed visible images are stored as BGR or grey (image_transport '
                         'converts rgb8 before compressing): use vi_encoding bgr8 or mono8')
    problem = output_problem(out, folder=True)
    if problem:  # before reading every image
        raise ValueError(f'--out {str(out)!r} cannot be written ({problem})')
    size = parse_size(size) if isinstance(size, str) else size
    ir_size = parse_size(ir_size) if isinstance(ir_size, str) else ir_size
    ir_size = ir_size or size
    pairs = list_pairs(pairs_dir, split, ir_dir=ir_dir, vi_dir=vi_dir)
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    # The last stamp, not only the first, must fit the int32 seconds of a ROS stamp: past
    # 2**31 s the header stamps wrapped to negative seconds (1901) in the middle of the bag.
    frames = len(pairs) * loops
    last_s = start_time_s + (frames - 1) / rate + (abs(offset_ms) + jitter_ms) / 1e3
    if not last_s < 2**31:
        raise ValueError(f'the last stamp would be {last_s:.6g} s ({len(pairs)} pairs x {loops} '
                         f'loop(s) at {rate:g} Hz from {start_time_s:.6g} s), past the int32 '
                         f'seconds of ROS stamps (2**31 s): give a higher --rate, fewer '
                         f'--loops or --max-pairs, or an earlier --start-time')
    period_ns = int(round(period_ns)) if frames > 1 else 0  # one frame: no period (maybe inf)

    typestore = jazzy_typestore()
    rng = np.random.default_rng(seed)
    start_ns = int(round(start_time_s * 1e9))
    # Read every image before creating the bag, so a bad file leaves no half-written bag.
    images = [(stem, _load_ir(ir_path, ir_size, ir_encoding), _load_vi(vi_path, size, vi_encoding))
              for stem, ir_path, vi_path in pairs]
    ir_max_error = None
    if depth_capped:  # the publisher would send the counts above its cap as 0
        _check_kept_counts([(ir_path, ir) for (_, ir_path, _), (_, ir, _) in zip(pairs, images)],
                           depth_max)
    if depth_coded:  # the node's decoding refuses what the codec cannot carry
        _check_depth_range([(ir_path, ir) for (_, ir_path, _), (_, ir, _) in zip(pairs, images)],
                           depth_max)
        ir_max_error = max(_check_depth_coding(ir_path, ir, depth_max, depth_quantization)
                           for (_, ir_path, _), (_, ir, _) in zip(pairs, images))
    out = Path(out)
    remove_stale_outputs(out)  # the temporary folder of a run that was killed
    if out.exists():  # checked here too, after reading every image
        raise ValueError(f'output bag {out} exists already; remove it or choose another --out')
    count, last_ns, stems = 0, start_ns, []
    # Written in a temporary folder beside out, renamed to out when complete: a run that is
    # interrupted, fails or is killed leaves no bag at out that plays like a whole one.
    with atomic_output(out, folder=True) as temporary:
        # rosbags names the storage file after its folder: the bag is made in a folder of
        # out's name, its files then moved up (out/<name>.mcap, as ros2 bag record names it).
        bag = temporary / out.name
        writer = open_writer(bag)
        try:
            # A camera driver's publisher: reliable, keep last 10 (matches any subscriber).
            cameras = {}
            for key, topic, transport, encoding, fmt in (
                    ('vi', vi_topic, vi_transport, vi_encoding, vi_format),
                    ('ir', ir_topic, ir_transport, ir_encoding, 'png')):
                if transport != 'raw':
                    topic, msgtype = f'{topic}/{transport}', 'sensor_msgs/msg/CompressedImage'
                else:
                    msgtype = 'sensor_msgs/msg/Image'
                conn = writer.add_connection(topic, msgtype, typestore=typestore,
                                             offered_qos_profiles=offered_qos())
                cameras[key] = (conn, transport, encoding, fmt)
            vi_topic, ir_topic = cameras['vi'][0].topic, cameras['ir'][0].topic
            k = 0
            for _loop in range(loops):
                for stem, ir, vi in images:
                    vi_ns = start_ns + k * period_ns
                    jitter = rng.uniform(-jitter_ms, jitter_ms) if jitter_ms > 0 else 0.0
                    ir_ns = vi_ns + int(round((offset_ms + jitter) * 1e6))
                    messages = [(vi_ns, cameras['vi'], vi, vi_frame),
                                (ir_ns, cameras['ir'], ir, ir_frame)]
                    for stamp_ns, camera, array, frame in sorted(messages, key=lambda m: m[0]):
                        conn, transport, encoding, fmt = camera
                        if transport == 'compressed':
                            data = compressed_cdr(array, fmt, frame, stamp_ns)
                        elif transport == 'compressedDepth':
                            data = compressed_depth_cdr(
                                array, encoding, frame, stamp_ns, depth_max=depth_max,
                                depth_quantization=depth_quantization)
                        else:
                            data = image_cdr(array, encoding, frame, stamp_ns)
                        writer.write(conn, stamp_ns, data)
                        count += 1
                        last_ns = max(last_ns, stamp_ns)
                    stems.append(stem)
                    k += 1
        finally:
            writer.close()
        for written in bag.iterdir():
            written.rename(temporary / written.name)
        bag.rmdir()
    return BagSummary(path=out, pairs=len(stems), messages=count, start_ns=start_ns,
                      end_ns=last_ns, ir_topic=ir_topic, vi_topic=vi_topic, stems=stems,
                      ir_max_error=ir_max_error)


def build_parser():
    from tarfuse_ros.ros.conversions import DEPTH_MAX_DEFAULT, DEPTH_QUANTIZATION_DEFAULT
    parser = argparse.ArgumentParser(
        prog='tarfuse-make-bag', description=__doc__.split('\n\n')[0],
        formatter_class=HelpFormatter)
    parser.add_argument('--pairs', required=True, type=Path,
                        help='folder with ir/ and vi/ sub-folders (same stem per pair)')
    parser.add_argument('--split', default=None,
                        help='list file of stems, as the other tools take it: a name like test '
                             'for <pairs>/test.txt, a path, all or misaligned (default: every '
                             'image, each with its partner)')
    parser.add_argument('--out', required=True, type=Path, help='rosbag2 directory to create')
    parser.add_argument('--rate', type=float, default=10.0, help='frame rate of each camera (Hz)')
    parser.add_argument('--ir-encoding', choices=IR_ENCODINGS, default='mono8',
                        help='mono16 for 16-bit counts, 32FC1 for float images (temperatures)')
    parser.add_argument('--vi-encoding', choices=('bgr8', 'rgb8', 'mono8'), default='bgr8')
    parser.add_argument('--ir-transport', choices=IR_TRANSPORTS, default='raw',
                        help='compressed: CompressedImage (PNG) on <ir-topic>/compressed; '
                             'compressedDepth (with --ir-encoding mono16 or 32FC1): '
                             "image_transport's compressedDepth on <ir-topic>/compressedDepth")
    parser.add_argument('--depth-max', type=float, default=None,
                        help="compressedDepth: the publisher's depth_max; 32FC1: above every "
                             f'IR value (default {DEPTH_MAX_DEFAULT:g}; 400 for kelvin); mono16: '
                             'at least every count / 1000, below 65.536 (32 for the samples)')
    parser.add_argument('--depth-quantization', type=float, default=None,
                        help="32FC1 on compressedDepth: the publisher's depth_quantization "
                             f'(default {DEPTH_QUANTIZATION_DEFAULT:g}; 6000 for 250-400 K)')
    parser.add_argument('--vi-transport', choices=TRANSPORTS, default='raw',
                        help='compressed: CompressedImage (JPEG/PNG) on <vi-topic>/compressed')
    parser.add_argument('--vi-format', choices=('jpeg', 'png'), default='jpeg',
                        help='format of compressed visible images')
    parser.add_argument('--offset-ms', type=float, default=0.0,
                        help='IR stamp minus visible stamp (ms)')
    parser.add_argument('--jitter-ms', type=float, default=0.0,
                        help='uniform jitter added to each IR stamp, +/- this (ms)')
    parser.add_argument('--ir-frame', default='ir_optical_frame')
    parser.add_argument('--vi-frame', default='visible_optical_frame')
    parser.add_argument('--ir-topic', default='/infrared/image_raw')
    parser.add_argument('--vi-topic', default='/visible/image_raw')
    parser.add_argument('--loops', type=int, default=1,
                        help='repeat the pair list this many times (stamps keep increasing)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the stamp jitter')
    parser.add_argument('--start-time', type=float, default=DEFAULT_START_TIME_S,
                        help='stamp of the first visible frame (s since the epoch)')
    parser.add_argument('--size', default=None,
                        help='resize visible images to WIDTHxHEIGHT (default: keep)')
    parser.add_argument('--ir-size', default=None,
                        help='resize IR images to WIDTHxHEIGHT (default: --size)')
    parser.add_argument('--ir-dir', default='ir',
                        help='IR sub-folder, e.g. synthetic_misaligned/ir_warp for deformed IR')
    parser.add_argument('--vi-dir', default='vi', help='visible sub-folder')
    parser.add_argument('--max-pairs', type=int, default=None, help='use only the first N pairs')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        summary = make_bag(
            args.pairs, args.out, split=args.split, rate=args.rate, ir_encoding=args.ir_encoding,
            vi_encoding=args.vi_encoding, offset_ms=args.offset_ms, jitter_ms=args.jitter_ms,
            ir_frame=args.ir_frame, vi_frame=args.vi_frame, ir_topic=args.ir_topic,
            vi_topic=args.vi_topic, loops=args.loops, seed=args.seed,
            start_time_s=args.start_time, size=args.size, ir_size=args.ir_size,
            ir_dir=args.ir_dir, vi_dir=args.vi_dir, max_pairs=args.max_pairs,
            ir_transport=args.ir_transport, vi_transport=args.vi_transport,
            vi_format=args.vi_format, depth_max=args.depth_max,
            depth_quantization=args.depth_quantization)
    except ValueError as error:
        print(f'tarfuse-make-bag: error: {error}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'tarfuse-make-bag: interrupted; no bag written to {args.out}', file=sys.stderr)
        return 130
    span = (summary.end_ns - summary.start_ns) / 1e9
    print(f'wrote {summary.path}: {summary.pairs} pairs, {summary.messages} messages on '
          f'{summary.vi_topic} and {summary.ir_topic}, {span:.2f} s')
    if summary.ir_max_error is not None:
        print(f'the IR decodes up to {summary.ir_max_error:.3g} (in its units) off its values '
              f'(compressedDepth quantisation; a larger --depth-quantization makes it smaller)')
    return 0


if __name__ == '__main__':
    sys.exit(main())

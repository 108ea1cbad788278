"""Frame sizes shared by training, both inference engines and the ROS decoding (no torch)."""

import numbers

__all__ = ['MAX_DECODED_PIXELS', 'MAX_ENLARGED_LONG_SIDE', 'MAX_NETWORK_PIXELS',
           'MIN_SHRUNK_LONG_SIDE', 'PORTRAIT_ADVICE',
           'check_input_max_long_side', 'check_network_size', 'enlarged_size',
           'portrait_beside_landscape', 'shrunk_size']

# The largest long side a frame (or its features) may be enlarged to, pixels: the bound of
# input_min_long_side / detect_min_long_side in the checkpoint and the engines' arguments.
MAX_ENLARGED_LONG_SIDE = 16384

# The smallest input_max_long_side the engines take, pixels: below about 256 px per side the
# global stage's 8 px cells give it too few matches (models/MODEL_CARD.md, Limits).
MIN_SHRUNK_LONG_SIDE = 256

# The most pixels the network runs one pair at: 3840x2160 (4K UHD, 8.3 MP). Measured there
# (torch on a 2-core CPU): 54 s and 4.8 GB of memory a pair in session 37, a 5.9 GB peak
# resident size in session 38, growing with the pixels; a 7680x4320 frame would take about
# four times that, enough for the kernel to kill a robot's node. Larger frames run shrunk
# with input_max_long_side (README, "Large cameras").
MAX_NETWORK_PIXELS = 3840 * 2160

# The most pixels a compressed frame (JPEG, PNG, ...) may have for the package to decode it:
# twice an 8K UHD frame, 2 x 7680x4320 = 66,355,200 (66.4 Mpx), read from the payload's header
# before decoding. A real 8K camera (7680x4320, or DCI 8K 8192x4320, 35.4 Mpx) gets through and
# runs shrunk with input_max_long_side; a frame at the cap takes 199 MB decoded as 8-bit BGR
# (398 MB at 16 bits), and 8K took 0.24 s (JPEG) and 0.8 s (PNG) to decode on the 2-core VM.
# A payload whose header says more (a decompression bomb: a 1.2 MB PNG of 20000x20000 took
# 4-6 s and 2.4 GB to decode, 2-core VM) is refused without being decoded.
MAX_DECODED_PIXELS = 2 * 7680 * 4320


def enlarged_size(height, width, min_long_side):
    """Return ``(height, width)`` scaled up so the longer side is ``min_long_side`` (aspect kept).

    Sides are rounded to whole pixels (at least 1). A frame whose longer side already reaches
    ``min_long_side`` (or ``min_long_side`` 0) keeps its size. Used alike by training
    (:class:`~tarfuse_ros.core.data.PairedDataset`) and inference
    (``TarFuseConfig.input_min_long_side``).
    """
    if min_long_side <= max(height, width):
        return int(height), int(width)
    return _with_long_side(height, width, min_long_side)


def shrunk_size(height, width, max_long_side):
    """Return ``(height, width)`` shrunk so the longer side is ``max_long_side``.

    The mirror of :func:`enlarged_size` (aspect kept): sides rounded to whole pixels (at least
    1); a frame whose longer side is at most ``max_long_side`` (or ``max_long_side`` 0) keeps
    its size. Used by the engines' ``input_max_long_side`` (large cameras run the network on a
    smaller frame).
    """
    if max_long_side <= 0 or max(height, width) <= max_long_side:
        return int(height), int(width)
    return _with_long_side(height, width, max_long_side)


def portrait_beside_landscape(ir_size, vi_size):
    """Return whether one of two frames is portrait and the other landscape.

    Args:
        ir_size, vi_size: (width, height) in pixels. A square frame is neither.

    The engines resize the IR to the visible frame whatever their shapes: a camera mounted on
    its side is stretched there, not rotated, and no registration undoes that.
    """
    return (ir_size[0] - ir_size[1]) * (vi_size[0] - vi_size[1]) < 0


PORTRAIT_ADVICE = ('is a camera mounted on its side? The IR is stretched to the visible frame, '
                   'not rotated')


def _with_long_side(height, width, long_side):
    """Return ``(height, width)`` scaled so the longer side is ``long_side`` (aspect kept)."""
    longer = max(height, width)
    scale = long_side / longer
    return (max(1, int(round(height * scale))) if height != longer else int(long_side),
            max(1, int(round(width * scale))) if width != longer else int(long_side))


def check_input_max_long_side(value, name='input_max_long_side'):
    """Return ``input_max_long_side`` checked, as an int (pixels; 0: never shrink).

    Raises ``ValueError`` naming ``name`` (the engines' argument, a tool's option) for anything
    but 0 or an integer in ``[MIN_SHRUNK_LONG_SIDE, MAX_ENLARGED_LONG_SIDE]``.
    """
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or not (value == 0 or MIN_SHRUNK_LONG_SIDE <= value <= MAX_ENLARGED_LONG_SIDE)):
        raise ValueError(f'{name} must be 0 (never shrink) or an integer in '
                         f'[{MIN_SHRUNK_LONG_SIDE}, {MAX_ENLARGED_LONG_SIDE}] (pixels), '
                         f'got {value!r}')
    return int(value)


def check_network_size(frame_size, network_size, name='input_max_long_side', max_long_side=0):
    """Raise ``ValueError`` when the network would run a frame at more than MAX_NETWORK_PIXELS.

    Args:
        frame_size: the visible frame's ``(height, width)``, pixels (named in the message).
        network_size: the ``(height, width)`` the network would run it at (after the engines'
            ``input_min_long_side`` / ``input_max_long_side``), pixels.
        name: what to call ``input_max_long_side`` in the message (the node's parameter, a
            tool's option such as ``--input-max-long-side``).
        max_long_side: its value in use (0: never shrink): a value set already is to be lowered.
            A frame the network would run enlarged (``input_min_long_side``) is told to lower
            that instead.

    Raises:
        ValueError: saying both sizes and how to run such frames (``name``).
    """
    height, width = (int(v) for v in network_size)
    if height * width <= MAX_NETWORK_PIXELS:
        return
    frame = f'{int(frame_size[1])}x{int(frame_size[0])}'
    at = '' if tuple(frame_size) == (height, width) else f' at {width}x{height}'
    if height * width > int(frame_size[0]) * int(frame_size[1]):
        # Enlarged: input_max_long_side cannot help (it may not be below input_min_long_side).
        advice = ("lower input_min_long_side (the checkpoint's model field, or the engines' "
                  'argument), which enlarges it')
    elif max_long_side:
        advice = f'lower {name} (now {max_long_side}; e.g. 1920) to run large frames shrunk'
    else:
        advice = f'set {name} (e.g. 1920) to run large frames shrunk'
    raise ValueError(f'the visible frame {frame} would run the network{at}: '
                     f'{height * width:,} pixels, more than the {MAX_NETWORK_PIXELS:,} '
                     f'(3840x2160) it runs at (4.8-5.9 GB of memory there); {advice}')

"""Colour of the IR-role image: keep its chroma and put it back around the fused luma.

The network fuses one luma plane. A colour visible image gets its own chroma back (the engine's
rule). When the visible-role image is grey and the IR-role image is colour, as in medical
fusion (grey MRI in the visible role, pseudo-colour PET or SPECT in the IR role), the fused image
takes the IR-role chroma instead, registered onto the visible frame with the predicted flow, as
YCbCr fusion methods in the medical literature restore the functional image's colour.

Flow convention (as everywhere): ``registered(p) = ir_resized(p + flow_px(p))``, pixels.
"""

import cv2
import numpy as np
from tarfuse_ros.core.images import merge_luma_chroma, resize_image

__all__ = ['NEUTRAL_CHROMA', 'ir_chroma', 'ir_chroma_for', 'restore_ir_chroma']

# 8-bit Cr, Cb of a grey pixel.
NEUTRAL_CHROMA = 128


def ir_chroma(ir, height, width):
    """Return the chroma of a colour 8-bit IR-role image, resized to the visible frame.

    Args:
        ir: the IR-role image as given to the engine: ``HxWx3`` (or ``HxWx4``, alpha dropped)
            uint8 BGR; anything else (grey, ``HxWx1``, 3 equal channels, 16-bit or float) has
            no chroma to keep.
        height, width: the visible frame in pixels.

    Returns:
        uint8 ``height x width x 2`` (Cr, Cb, BT.601 as OpenCV's ``COLOR_BGR2YCrCb``), or
        None when ``ir`` is not a colour uint8 image.

    """
    if not (isinstance(ir, np.ndarray) and ir.dtype == np.uint8 and ir.ndim == 3
            and ir.shape[2] in (3, 4)):
        return None
    bgr = np.ascontiguousarray(ir[:, :, :3])
    if np.array_equal(bgr[:, :, 0], bgr[:, :, 1]) and np.array_equal(bgr[:, :, 1], bgr[:, :, 2]):
        return None
    crcb = cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb)[:, :, 1:]
    return np.ascontiguousarray(resize_image(crcb, height, width))


def ir_chroma_for(ir, vi_crcb, height, width):
    """Return the IR-role chroma the fused image should take, or None (the engines' rule).

    Args:
        ir: the IR-role image as given (see :func:`ir_chroma`).
        vi_crcb: the visible image's chroma (``HxWx2`` uint8, ``None`` for a grey image).
        height, width: the visible frame in pixels.

    Returns:
        :func:`ir_chroma` when the IR image is colour and the visible image is grey (no chroma,
        or a colour encoding whose chroma is neutral everywhere, e.g. an MRI stored as three
        equal channels); None otherwise (a colour visible image keeps its own chroma).

    """
    crcb = ir_chroma(ir, height, width)
    if crcb is None or (vi_crcb is not None and not np.all(vi_crcb == NEUTRAL_CHROMA)):
        return None
    return crcb


def restore_ir_chroma(fused_y, crcb, flow_px):
    """Return the fused luma coloured with the IR-role chroma registered by ``flow_px``.

    Args:
        fused_y: uint8 ``HxW`` fused luma (visible frame), or ``HxWx3`` BGR whose luma is taken
            (a fused image already merged with a neutral visible chroma).
        crcb: uint8 ``HxWx2`` chroma of :func:`ir_chroma` (IR resized to the visible frame).
        flow_px: float32 ``HxWx2`` (dx, dy) pixels, the engine's published flow.

    Returns:
        uint8 ``HxWx3`` BGR; where the flow points outside the IR image the chroma is neutral
        (grey).

    Raises:
        ValueError: shapes that do not match.

    """
    if fused_y.ndim == 3:
        fused_y = cv2.cvtColor(np.ascontiguousarray(fused_y), cv2.COLOR_BGR2GRAY)
    height, width = fused_y.shape[:2]
    if crcb.shape != (height, width, 2) or flow_px.shape != (height, width, 2):
        raise ValueError(f'fused luma {fused_y.shape}, chroma {crcb.shape} and flow '
                         f'{flow_px.shape} must share the visible frame (HxW, HxWx2, HxWx2)')
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    map_x = grid_x + flow_px[:, :, 0].astype(np.float32)
    map_y = grid_y + flow_px[:, :, 1].astype(np.float32)
    registered = cv2.remap(crcb, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=(NEUTRAL_CHROMA, NEUTRAL_CHROMA))
    return merge_luma_chroma(np.ascontiguousarray(fused_y), registered)

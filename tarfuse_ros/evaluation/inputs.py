"""One evaluation pair: prepared as the engine prepares it, deformed, with labels and landmarks.

Everything is in the VISIBLE frame of the evaluated size: the visible image, downscaled so that
its longer side is at most ``max_side`` (``INTER_AREA``, aspect ratio kept; a strip stops
shrinking where its shorter side reaches ``MIN_SIDE``), and the stored IR prepared with it by
:func:`tarfuse_ros.core.images.prepare_pair` (normalised, then resized straight to that frame),
exactly as the engine prepares its inputs. An 8-bit IR stays 8-bit; a 16-bit one becomes a float
plane in [0, 1] (the engine's robust normalisation) and keeps that type through the deformation.
"""

from dataclasses import dataclass
from pathlib import Path
import zlib

import cv2
import numpy as np
from tarfuse_ros.core import data
from tarfuse_ros.core.images import MIN_SIDE, normalise, prepare_pair, resize_image, to_uint8
from tarfuse_ros.core.images import unit_plane
import torch

__all__ = ['CLASS_ALIASES', 'LANDMARKS_DIR', 'EvalPair', 'class_lookup', 'covered',
           'deform_pair', 'load_landmarks', 'pair_seed', 'prepare', 'targets', 'to_frame']

LANDMARKS_DIR = 'landmarks'
CLASS_ALIASES = {'people': 'person', 'pedestrian': 'person', 'pedestrians': 'person'}


@dataclass(frozen=True)
class EvalPair:
    """A pair prepared for evaluation (module docstring).

    ``ir``: the IR plane in the visible frame (uint8, or float32 in [0, 1] for 16-bit IR);
    ``vi``: the visible image the engine gets (uint8 grey or BGR); ``vi_y``: its luma as the
    engine computes it (uint8 for an 8-bit image); ``scale``: ``(sx, sy)`` from the stored
    visible image to the evaluated one.
    """

    ir: np.ndarray
    vi: np.ndarray
    vi_y: np.ndarray
    scale: tuple


def prepare(ir_raw, vi_raw, max_side=None, name='pair'):
    """Return the :class:`EvalPair` of a stored pair (module docstring)."""
    if vi_raw.dtype != np.uint8:  # 16-bit visible: the engine's rule, as 8-bit colour
        vi_raw = to_uint8(normalise(vi_raw, name=f'{name} visible'))
    height, width = vi_raw.shape[:2]
    vi, scale = vi_raw, (1.0, 1.0)
    if max_side and max(height, width) > max_side:
        # Keep the aspect ratio; a long strip stops shrinking where its shorter side would go
        # below what the engine accepts (MIN_SIDE), so its longer side stays above max_side.
        factor = min(1.0, max(max_side / max(height, width), MIN_SIDE / min(height, width)))
        new_w, new_h = round(width * factor), round(height * factor)
        vi = resize_image(vi_raw, new_h, new_w)
        scale = (new_w / width, new_h / height)
    pair = prepare_pair(ir_raw, vi, keep_uint8=True, names=(f'{name} IR', f'{name} visible'))
    return EvalPair(pair.ir, vi, pair.vi_y, scale)


def _field_to_numpy(flow):
    return flow[0].permute(1, 2, 0).contiguous().numpy().astype(np.float32)


def _field_to_torch(flow_hw2):
    return torch.from_numpy(np.ascontiguousarray(flow_hw2)).permute(2, 0, 1)[None].float()


def pair_seed(seed, stem):
    """Return the per-pair seed of synthetic deformations (independent of pair order)."""
    return (int(seed) * 1000003 + zlib.crc32(stem.encode('utf-8'))) % (2 ** 63)


def covered(field_hw2, valid=None):
    """Return where ``warp(img, field)`` holds content: bool HxW (all four taps inside).

    ``valid`` (bool HxW, default all True) marks the content of the image being warped.
    """
    from tarfuse_ros.core.model.warp import warp
    height, width = field_hw2.shape[:2]
    ones = np.ones((height, width), np.float32) if valid is None else valid.astype(np.float32)
    field = _field_to_torch(field_hw2)
    inside = warp(torch.from_numpy(ones)[None, None], field)[0, 0].numpy()
    return inside > 1.0 - 1e-4


def deform_pair(dataset_dir, stem, ir, mode, seed, scale):
    """Deform the aligned IR of one pair.

    Args:
        dataset_dir: data set folder.
        stem: pair stem.
        ir: aligned IR plane in the evaluated frame (uint8, or float32 in [0, 1]).
        mode: ``'dataset'``, ``'synthetic'`` or ``'none'``.
        seed: base seed of synthetic fields.
        scale: ``(sx, sy)`` applied to the stored images (for the data set's field).

    Returns:
        ``(deformed, reference flow float32 HxWx2, content bool HxW)``: the deformed IR (of the
        type of ``ir``; the data set's deformed IR is 8-bit), the flow that maps it back onto
        the visible frame, and where the deformed IR holds content (the rest sampled outside
        the aligned IR).

    Raises:
        ValueError: an unknown mode, or a missing ground-truth field.

    """
    from tarfuse_ros.core.deform import DeformConfig, invert_flow, random_deformation
    from tarfuse_ros.core.model.warp import warp
    height, width = ir.shape
    if mode == 'none':
        return ir.copy(), np.zeros((height, width, 2), np.float32), np.ones((height, width), bool)
    if mode == 'dataset':
        disp = data.load_disp(dataset_dir, stem)
        deformed = data.load_misaligned_ir(dataset_dir, stem)
        if disp.shape[:2] != (height, width):
            disp = cv2.resize(disp, (width, height), interpolation=cv2.INTER_LINEAR)
            disp[:, :, 0] *= scale[0]
            disp[:, :, 1] *= scale[1]
            deformed = cv2.resize(deformed, (width, height), interpolation=cv2.INTER_AREA)
        inverse = invert_flow(_field_to_torch(disp), iterations=30)
        return deformed, _field_to_numpy(inverse), covered(disp)
    if mode != 'synthetic':
        raise ValueError(f'deform mode must be none, dataset or synthetic, got {mode!r}')
    generator = torch.Generator().manual_seed(pair_seed(seed, stem))
    applied, inverse = random_deformation(1, height, width, DeformConfig(), generator=generator)
    warped = warp(torch.from_numpy(unit_plane(ir))[None, None], applied)[0, 0].numpy()
    deformed = to_uint8(warped) if ir.dtype == np.uint8 else warped
    return deformed, _field_to_numpy(inverse), covered(_field_to_numpy(applied))


def load_landmarks(dataset_dir, stem):
    """Load the landmark correspondences of one pair, or None when the pair has none.

    Args:
        dataset_dir: data set folder; the file is ``landmarks/<stem>.txt``, one row
            ``x_ir y_ir x_vi y_vi`` per landmark (pixels of the stored images, x = column,
            y = row, pixel centres at integers), ``#`` comments allowed.
        stem: pair stem.

    Returns:
        ``(ir_points, vi_points)``, float64 (N, 2) each, or None.

    Raises:
        ValueError: the file exists but is not N >= 1 rows of 4 finite numbers.

    """
    path = Path(dataset_dir) / LANDMARKS_DIR / f'{stem}.txt'
    if not path.is_file():
        return None
    try:
        rows = np.loadtxt(path, comments='#', ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f'{str(path)!r}: cannot read landmarks ({exc})') from None
    if rows.ndim != 2 or rows.shape[1] != 4 or len(rows) == 0 or not np.isfinite(rows).all():
        raise ValueError(
            f'{str(path)!r}: expected rows "x_ir y_ir x_vi y_vi", got an array of shape '
            f'{rows.shape}')
    return rows[:, :2].copy(), rows[:, 2:].copy()


def to_frame(points, src_size, dst_size):
    """Map (N, 2) pixel positions between image sizes (w, h) the way ``cv2.resize`` maps them."""
    factor = np.array([dst_size[0] / src_size[0], dst_size[1] / src_size[1]])
    return (points + 0.5) * factor - 0.5


def class_lookup(dataset_dir, model_names, labels_dir='labels'):
    """Map the label ids of ``labels_dir`` to model class ids (-1: not a model class), or None.

    The ids name the classes of the label folder's ``classes.txt``, else the set's
    (:func:`tarfuse_ros.core.data.read_classes`). Names are compared case-insensitively, with
    :data:`CLASS_ALIASES` (``people`` -> ``person``, ...); without a ``classes.txt``: None
    (label ids taken as model ids).
    """
    set_names = data.read_classes(dataset_dir, labels_dir)
    if set_names is None:
        return None
    index = {name.lower(): i for i, name in enumerate(model_names)}
    ids = []
    for name in set_names:
        key = name.lower()
        ids.append(index.get(key, index.get(CLASS_ALIASES.get(key, key), -1)))
    return np.asarray(ids, np.int64)


def targets(labels, lookup, width, height):
    """YOLO labels -> ``((M, 5) [x1, y1, x2, y2, model class], number dropped)``."""
    if len(labels) == 0:
        return np.zeros((0, 5)), 0
    boxes = data.yolo_to_xyxy(labels, width, height)
    ids = labels[:, 0].astype(np.int64)
    mapped = lookup[ids] if lookup is not None else ids
    keep = mapped >= 0
    boxes[:, 4] = mapped
    return boxes[keep], int((~keep).sum())

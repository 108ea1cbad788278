"""Paired IR/visible data sets in the layout of ``shared/datasets`` and YOLO labels.

Layout of one data set folder (every shared set follows it; the user's own data should too)::

    <set>/ir/<stem>.<png|jpg|...>     infrared (8- or 16-bit grey; 3 equal channels allowed)
    <set>/vi/<stem>.<png|jpg|...>     visible (grey or BGR colour), same stem as the IR file;
                                      one image per stem and folder (``x.png`` beside ``x.jpg``
                                      is refused); the IR may be of another size but not of
                                      another aspect ratio (:func:`check_aspect_ratios`;
                                      unregistered cameras: ``tarfuse-eval --stored-ir
                                      unregistered`` takes any sizes)
    <set>/labels/<stem>.txt           optional YOLO boxes ``class cx cy w h`` (normalised, visible
                                      frame; boxes past an edge are clipped to the image,
                                      a box of width or height 0 is refused); a
                                      missing file means "unlabelled", an empty file means
                                      "labelled, no objects"
    <set>/classes.txt                 class names, one a line, in label-id order (also accepted
                                      as ``<set>/labels/classes.txt``; a label folder with a
                                      ``classes.txt`` of its own uses that, :func:`read_classes`)
    <set>/<split>.txt                 stems, one a line (``train.txt``, ``test.txt``, ...)
    <set>/synthetic_misaligned/disp/<stem>.npz     optional: key ``disp`` (H, W, 2) float, the
                                      APPLIED deformation in pixels, ``ir_warp = warp(ir, disp)``
    <set>/synthetic_misaligned/ir_warp/<stem>.png  optional: the deformed IR

Flow convention (as everywhere in the core): ``(dx, dy)`` pixels, ``warp(x, f)(p) = x(p + f(p))``.
The registration target of a ``disp`` field is its inverse (``deform.invert_flow``), not ``-disp``.

Class map: a dict ``name -> id`` unifies the label sets of several data sets. Each set's label ids
are turned into names through its label folder's (else its own) ``classes.txt`` and the names
into our ids through the map (case-insensitive; several names may share an id, e.g.
``{'person': 0, 'people': 0}``). Boxes of classes absent from the map are dropped (those objects
become background for our detector). Without a map, :func:`default_class_map` makes one from the
union of the sets' class names in order of first appearance.

The data set does not deform the IR image: the trainer draws a random deformation per batch on
its device (``deform.random_deformation``). It does crops, flips and the Y channel.
"""

from collections.abc import Mapping
from dataclasses import dataclass
import math
import os
from pathlib import Path
import warnings

import cv2
import numpy as np
import PIL.Image
from tarfuse_ros.core.files import is_truncated_jpeg_data
from tarfuse_ros.core.images import prepare_pair
# The layout's functions live in a module without PyTorch (tools that only list pairs use it).
from tarfuse_ros.core.layout import (dataset_folder, find_image, IMAGE_EXTENSIONS,
                                     list_split_names, MISALIGNED_DIR, misaligned_stems,
                                     pair_files, read_split, read_text_lines, unpaired_notes,
                                     unpaired_stems)
from tarfuse_ros.core.prior import beyond_aspect_tolerance
from tarfuse_ros.core.sizes import enlarged_size
import torch
from torch.utils.data import Dataset

__all__ = [
    'IMAGE_EXTENSIONS',
    'MIN_WRITTEN_BOX_SIDE',
    'DataSource',
    'PairedDataset',
    'check_aspect_ratios',
    'collate_pairs',
    'default_class_map',
    'enlarged_size',
    'parse_scale_range',
    'class_names_from_map',
    'list_split_names',
    'label_file',
    'load_disp',
    'load_labels',
    'load_misaligned_ir',
    'load_pair',
    'misaligned_stems',
    'pair_files',
    'read_classes',
    'read_split',
    'stored_size',
    'unpaired_notes',
    'unpaired_stems',
    'yolo_label_text',
    'yolo_to_xyxy',
]


def _read_image(file_path):
    # One read of the file: the bytes are checked for a cut JPEG, then decoded.
    try:
        data = Path(file_path).read_bytes()
    except OSError as exc:
        raise ValueError(f'cannot read image {str(file_path)!r} ({exc.strerror or exc})') from exc
    if is_truncated_jpeg_data(data):  # cv2.imread decodes it, the missing rows grey
        raise ValueError(f'cannot read image {str(file_path)!r}: truncated JPEG (the file ends '
                         f'before the image does)')
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if img is None:
        raise ValueError(f'cannot read image {str(file_path)!r}')
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f'{str(file_path)!r}: expected 8- or 16-bit pixels, got {img.dtype}')
    return img


def _is_grey(img):
    return img.ndim == 2 or (np.array_equal(img[:, :, 0], img[:, :, 1])
                             and np.array_equal(img[:, :, 1], img[:, :, 2]))


def load_pair(dataset_dir, stem):
    """Load one IR/visible pair as stored.

    Args:
        dataset_dir: data set folder.
        stem: file stem shared by ``ir/`` and ``vi/``.

    Returns:
        ``(ir, vi)``: ``ir`` HxW uint8 (uint16 if stored so; a 3-channel file is reduced to its
        luma), ``vi`` HxWx3 BGR uint8 for a colour image or HxW for a grey one (3 identical
        channels count as grey). The two may differ in size (real unregistered cameras).

    """
    ir_path, vi_path = pair_files(dataset_dir, stem)
    ir, vi = _read_image(ir_path), _read_image(vi_path)
    if ir.ndim == 3:
        ir = ir[:, :, 0].copy() if _is_grey(ir) else cv2.cvtColor(ir, cv2.COLOR_BGR2GRAY)
    if vi.ndim == 3 and _is_grey(vi):
        vi = vi[:, :, 0].copy()
    return ir, vi


# Label writers (tarfuse-pseudo-label, tarfuse-fuse --detections) leave out a box whose normalised
# width or height is at most this: it prints as 0.000000 at the 6 decimals they write, and
# load_labels refuses a box of no area.
MIN_WRITTEN_BOX_SIDE = 5e-7


def yolo_label_text(rows):
    """Return ``(text, kept)``: the YOLO label file of ``rows``, as the label writers write it.

    The one formatter of tarfuse-pseudo-label and tarfuse-fuse ``--detections``.

    Args:
        rows: (N, 5) ``[class, cx, cy, w, h]``, normalised to the visible frame.

    Returns:
        ``text``: one ``class cx cy w h`` line per kept row (the class an integer, the rest
        with 6 decimals), ``''`` for none; ``kept``: bool (N,), False for a row whose width or
        height is at most :data:`MIN_WRITTEN_BOX_SIDE` (no area at 6 decimals:
        :func:`load_labels` would refuse the file).

    """
    rows = np.asarray(rows, np.float64).reshape(-1, 5)
    kept = (rows[:, 3] > MIN_WRITTEN_BOX_SIDE) & (rows[:, 4] > MIN_WRITTEN_BOX_SIDE)
    text = ''.join(f'{int(round(r[0]))} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f} {r[4]:.6f}\n'
                   for r in rows[kept])
    return text, kept


def read_classes(dataset_dir, labels_dir='labels'):
    """Return the class names the label files of ``labels_dir`` use, or None without a list.

    The label folder's own ``classes.txt`` comes first (a folder labelled with other classes,
    e.g. by another tool, carries its list), then the set's ``classes.txt`` and
    ``labels/classes.txt``. ``labels_dir`` is relative to ``dataset_dir`` or absolute.
    """
    path = Path(dataset_dir)
    for candidate in (path / labels_dir / 'classes.txt', path / 'classes.txt',
                      path / 'labels' / 'classes.txt'):
        _refuse_non_file(candidate, 'class list (classes.txt)')
        if candidate.is_file():
            return [line.strip() for line in read_text_lines(candidate) if line.strip()]
    return None


def _refuse_non_file(path, what):
    """Raise ``ValueError`` naming ``path`` where it is there but is no file (a folder).

    Such a path where a data set's ``what`` (a label file, ``classes.txt``) would be was taken
    for none, without a word: its pair counted as unlabelled (its boxes lost), or the class
    ids read by another list.
    """
    if path.is_file() or not os.path.lexists(path):
        return
    kind = ('a link to nothing' if not path.exists() else 'a folder' if path.is_dir()
            else 'no regular file')
    raise ValueError(f'{str(path)!r} is {kind}, where the {what} would be: make it that '
                     f'file, or move it out of {str(path.parent)!r}')


def label_file(dataset_dir, stem, labels_dir='labels'):
    """Return the path of a pair's YOLO label file (which may not exist: an unlabelled pair)."""
    return Path(dataset_dir) / labels_dir / f'{stem}.txt'


def load_labels(dataset_dir, stem, labels_dir='labels', classes=None):
    """Load the YOLO boxes of one pair.

    Args:
        dataset_dir: data set folder.
        stem: pair stem.
        labels_dir: sub-folder holding the ``.txt`` files (``'labels'``; e.g. ``'labels_ir'``).
        classes: when given, the class names the ids index (``classes.txt``): a larger id is
            refused.

    Returns:
        float32 array (N, 5) ``[class_id, cx, cy, w, h]`` normalised to [0, 1] in the visible
        frame, each box clipped to the image (a box drawn past an edge keeps its part inside,
        for evaluation and training alike), (0, 5) for an empty (labelled, no objects) file,
        or None when the set has no label file for this stem (unlabelled).

    Raises:
        ValueError: malformed line (wrong column count, non-numeric, negative or non-integer
            class id, an id beyond ``classes``, a centre or size outside [0, 1], a width or
            height of 0, a box wholly outside the image), naming file and line.

    """
    path = label_file(dataset_dir, stem, labels_dir)
    _refuse_non_file(path, f'label file of pair {stem!r}')
    if not path.is_file():
        return None
    rows = []
    for number, line in enumerate(read_text_lines(path), start=1):
        parts = line.split()
        if not parts:
            continue
        where = f'{str(path)!r} line {number} ({line.strip()!r})'
        if len(parts) != 5:
            raise ValueError(f'{where}: expected 5 columns "class cx cy w h", got {len(parts)}')
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f'{where}: non-numeric value') from None
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f'{where}: non-finite value')
        if values[0] < 0 or values[0] != int(values[0]):
            raise ValueError(f'{where}: class id must be a non-negative integer')
        if classes is not None and values[0] >= len(classes):
            raise ValueError(f'{where}: class id {int(values[0])} is none of the '
                             f'{len(classes)} classes {list(classes)}')
        if any(v < -1e-3 or v > 1.0 + 1e-3 for v in values[1:]):
            raise ValueError(f'{where}: box values must be normalised to [0, 1]')
        if values[3] <= 0 or values[4] <= 0:
            # Training crops dropped such a box unseen; evaluation counted it as an object
            # that no detection can ever match.
            raise ValueError(f'{where}: box width and height must be > 0 (a box of no area '
                             f'marks no object)')
        if any(centre + side / 2 <= 0.0 or centre - side / 2 >= 1.0
               for centre, side in ((values[1], values[3]), (values[2], values[4]))):
            # Within the centre tolerance a small box can lie wholly past an edge: clipped to
            # the image it would have no area.
            raise ValueError(f'{where}: the box lies wholly outside the image (no area once '
                             f'clipped to it)')
        rows.append(values)
    if not rows:
        return np.zeros((0, 5), np.float32)
    labels = np.asarray(rows, np.float32)
    # Clip each box to the image: eval's targets and training's boxes (whole frames or crops)
    # keep the same part of a box drawn past an edge.
    half = labels[:, 3:5] / 2
    low = np.clip(labels[:, 1:3] - half, 0.0, 1.0)
    high = np.clip(labels[:, 1:3] + half, 0.0, 1.0)
    labels[:, 1:3] = (low + high) / 2
    labels[:, 3:5] = high - low
    return labels


def yolo_to_xyxy(labels, width, height):
    """Convert (N, 5) ``[cls, cx, cy, w, h]`` normalised boxes to (N, 5) ``[x1, y1, x2, y2, cls]``.

    Pixel coordinates of an image ``width`` x ``height`` (box edges, so a full-image box is
    ``[0, 0, width, height]``).
    """
    labels = np.asarray(labels, np.float64).reshape(-1, 5)
    out = np.empty((labels.shape[0], 5), np.float64)
    out[:, 0] = (labels[:, 1] - labels[:, 3] / 2) * width
    out[:, 1] = (labels[:, 2] - labels[:, 4] / 2) * height
    out[:, 2] = (labels[:, 1] + labels[:, 3] / 2) * width
    out[:, 3] = (labels[:, 2] + labels[:, 4] / 2) * height
    out[:, 4] = labels[:, 0]
    return out


def load_disp(dataset_dir, stem):
    """Load the APPLIED deformation of a synthetic-misaligned pair.

    Args:
        dataset_dir: data set folder with ``synthetic_misaligned/disp/<stem>.npz`` (key ``disp``).
        stem: pair stem.

    Returns:
        float32 array (H, W, 2), ``(dx, dy)`` pixels, such that
        ``ir_warp = warp(ir, disp)``. The registration reference is its inverse.

    Raises:
        ValueError: file missing, key missing, wrong shape or non-finite values.

    """
    npz_path = Path(dataset_dir) / MISALIGNED_DIR / 'disp' / f'{stem}.npz'
    if not npz_path.is_file():
        raise ValueError(f'no ground-truth displacement {str(npz_path)!r}')
    with np.load(npz_path, allow_pickle=False) as npz:
        if 'disp' not in npz.files:
            raise ValueError(f'{str(npz_path)!r} has no key "disp" (keys: {npz.files})')
        disp = np.asarray(npz['disp'], np.float32)
    if disp.ndim != 3 or disp.shape[2] != 2:
        raise ValueError(f'{str(npz_path)!r}: disp must be (H, W, 2), got {disp.shape}')
    if not np.isfinite(disp).all():
        raise ValueError(f'{str(npz_path)!r}: disp holds non-finite values')
    return disp


def load_misaligned_ir(dataset_dir, stem):
    """Load the deformed IR image ``synthetic_misaligned/ir_warp/<stem>.*`` (uint8 HxW)."""
    folder = Path(dataset_dir) / MISALIGNED_DIR / 'ir_warp'
    if not folder.is_dir():
        raise ValueError(f'{str(Path(dataset_dir))!r} has no {MISALIGNED_DIR}/ir_warp folder')
    path = find_image(str(folder), stem)
    if path is None:
        raise ValueError(f'no deformed IR for stem {stem!r} in {str(folder)!r}')
    img = _read_image(path)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return img


def default_class_map(dataset_dirs):
    """Build ``name -> id`` from the union of the sets' class names (lower case, first seen).

    ``dataset_dirs``: data set folders or :class:`DataSource` objects (whose label folder's
    ``classes.txt`` comes first, :func:`read_classes`).
    """
    class_map = {}
    for source in dataset_dirs:
        source = DataSource.parse(source)
        for name in read_classes(source.path, source.labels) or []:
            class_map.setdefault(name.lower(), len(set(class_map.values())))
    return class_map


def class_names_from_map(class_map):
    """Return the class names ordered by id (the first name listed for each id).

    Raises:
        ValueError: ids not exactly ``0..K-1``.

    """
    names = {}
    for name, class_id in class_map.items():
        names.setdefault(int(class_id), name)
    ids = sorted(names)
    if ids != list(range(len(ids))):
        raise ValueError(f'class map ids must be 0..K-1 without gaps, got {ids}')
    return tuple(names[i] for i in ids)


def _normalise_class_map(class_map):
    out = {}
    for name, class_id in dict(class_map).items():
        if not isinstance(class_id, (int, np.integer)) or class_id < 0:
            raise ValueError(
                f'class map id for {name!r} must be an integer >= 0, got {class_id!r}')
        out[str(name).lower()] = int(class_id)
    class_names_from_map(out)
    return out


@dataclass(frozen=True)
class DataSource:
    """The pairs taken from one data set folder: the one data-source spec of the package.

    Attributes:
        path: the data set folder (layout in the module docstring), as given.
        split: a split of :func:`read_split` (list-file name, ``'all'``, ``'misaligned'`` or a
            path to a list file).
        exclude: splits whose stems are removed from ``split`` (so that, e.g., test pairs never
            leak into training).
        labels: the label sub-folder (``'labels'``; e.g. ``'labels_ir'``).

    """

    path: str
    split: str = 'all'
    exclude: tuple = ()
    labels: str = 'labels'

    def __post_init__(self):
        object.__setattr__(self, 'path', str(self.path))
        object.__setattr__(self, 'split', str(self.split))
        exclude = (self.exclude,) if isinstance(self.exclude, str) else self.exclude or ()
        object.__setattr__(self, 'exclude', tuple(str(e) for e in exclude))
        object.__setattr__(self, 'labels', str(self.labels or 'labels'))

    @classmethod
    def parse(cls, value, default_split='all'):
        """Build from a path, ``(path, split[, labels])``, a mapping or a :class:`DataSource`.

        A mapping may hold ``path`` (required), ``split``, ``exclude`` and ``labels``; a bare
        path or a mapping without ``split`` takes ``default_split``.

        Raises:
            ValueError: another type, or a mapping with unknown keys or without ``path``.

        """
        if isinstance(value, cls):
            return value
        if isinstance(value, (str, os.PathLike)):
            return cls(value, default_split)
        if isinstance(value, dict):
            unknown = sorted(set(value) - {'path', 'split', 'exclude', 'labels'})
            if 'path' not in value or unknown:
                raise ValueError(f'data source {value!r}: needs "path" and may have "split", '
                                 f'"exclude", "labels" (unknown keys: {unknown})')
            return cls(value['path'], value.get('split', default_split),
                       value.get('exclude') or (), value.get('labels') or 'labels')
        if isinstance(value, (tuple, list)) and len(value) in (2, 3):
            return cls(value[0], value[1], (), value[2] if len(value) == 3 else 'labels')
        raise ValueError(f'data source must be a path, (path, split[, labels]), a mapping or '
                         f'a DataSource, got {value!r}')

    def stems(self):
        """Return the stems of ``split`` without those of the ``exclude`` splits, in order."""
        stems = read_split(self.path, self.split)
        excluded = set()
        for other in self.exclude:
            excluded.update(read_split(self.path, other))
        return [stem for stem in stems if stem not in excluded]

    def to_dict(self):
        """Return a plain, JSON-ready mapping that :meth:`parse` reads back."""
        return {'path': self.path, 'split': self.split, 'exclude': list(self.exclude),
                'labels': self.labels}


def _crop_size(crop_size):
    if crop_size is None:
        return None
    if isinstance(crop_size, (int, np.integer)):
        crop_size = (int(crop_size), int(crop_size))
    crop_h, crop_w = (int(v) for v in crop_size)
    if crop_h <= 0 or crop_w <= 0 or crop_h % 32 or crop_w % 32:
        raise ValueError(f'crop size must be positive multiples of 32, got {crop_size}')
    return crop_h, crop_w


def parse_scale_range(scale_range):
    """Return ``scale_range`` as ``(low, high)`` floats, or None; refuse a bad range."""
    if scale_range is None:
        return None
    values = () if isinstance(scale_range, (str, bytes, Mapping)) else scale_range
    try:
        low, high = (float(v) for v in values)
        if any(isinstance(v, bool) for v in values):
            raise TypeError('booleans are not factors')
    except (TypeError, ValueError):
        raise ValueError(f'scale_range must be (low, high) factors, got {scale_range!r}') from None
    if not (math.isfinite(low) and math.isfinite(high) and 0.0 < low <= high):
        raise ValueError(f'scale_range must satisfy 0 < low <= high (finite resize factors), '
                         f'got {scale_range!r}')
    return low, high


#: Ranges of the photometric augmentation (``PairedDataset(photometric=p)``), drawn per
#: modality: gamma log-uniform, contrast about the frame's mean uniform, brightness shift
#: uniform in [-b, b] (intensities in [0, 1]).
PHOTOMETRIC_GAMMA = (2.0 / 3.0, 1.5)
PHOTOMETRIC_CONTRAST = (0.7, 1.3)
PHOTOMETRIC_BRIGHTNESS = 0.1


def photometric_change(planes, rng):
    """Return ``planes`` (H, W[, C]) in [0, 1] after one random gamma, contrast and brightness.

    ``x -> clip((x^g - m) c + m + b, 0, 1)`` with ``m`` the mean of ``x^g`` over every plane
    (one change for all planes: the visible luma and its colour stay consistent) and ``g``,
    ``c``, ``b`` drawn from :data:`PHOTOMETRIC_GAMMA`, :data:`PHOTOMETRIC_CONTRAST`,
    :data:`PHOTOMETRIC_BRIGHTNESS` with ``rng`` (a ``numpy.random.Generator``). Monotonic in
    ``x``: edges keep their place, so labels and alignment hold.
    """
    gamma = math.exp(rng.uniform(*np.log(PHOTOMETRIC_GAMMA)))
    contrast = rng.uniform(*PHOTOMETRIC_CONTRAST)
    shift = rng.uniform(-PHOTOMETRIC_BRIGHTNESS, PHOTOMETRIC_BRIGHTNESS)
    out = np.power(np.clip(planes, 0.0, 1.0), gamma)
    mean = float(out.mean())
    return np.clip((out - mean) * contrast + mean + shift, 0.0, 1.0).astype(np.float32)


class PairedDataset(Dataset):
    """IR/visible pairs from one or more data set folders, with labels, crops and flips.

    Each sample is a dict:

    - ``ir``: float32 tensor (1, H, W) in [0, 1], the ALIGNED IR (resized to the visible size
      when the stored sizes differ; a pair whose IR has another aspect ratio, by more than a
      registration prior's :data:`~tarfuse_ros.core.prior.ASPECT_TOLERANCE`, is not aligned as
      stored, or not a pair, and is refused: stretched, it would teach a wrong alignment. See
      :meth:`check_sizes`);
    - ``vi``: float32 tensor (1, H, W), the visible Y channel (BT.601; of an 8-bit colour image,
      8-bit like the engine's) or the grey image; ``ir`` and ``vi`` are prepared by
      :func:`tarfuse_ros.core.images.prepare_pair`, as the engine prepares its inputs;
    - ``vi_color``: float32 tensor (3, H, W) BGR (grey replicated) when ``keep_color``;
    - ``boxes``: float32 tensor (N, 5) ``[class_id, cx, cy, w, h]`` normalised to the crop, ids
      from the class map;
    - ``has_labels``: True only when the set has a label file for this stem (an empty file is a
      valid "no objects");
    - ``ir_context``: float32 tensor (1, H + 2 context, W + 2 context), the aligned IR around
      the crop (zeros beyond the frame), when cropping with ``context > 0``: deforming it and
      cutting out the centre gives a deformed crop with the scene's content at its borders (a
      crop deformed alone shows the deformation in its empty borders, a cue that real
      misaligned pairs do not have);
    - ``stem``, ``dataset`` (the folder name), ``index``.

    Args:
        sources: data set folders, each a :class:`DataSource` or what
            :meth:`DataSource.parse` reads (a path: split ``'all'``; ``(path, split)``,
            ``(path, split, labels_dir)``, ``{'path':, 'split':, 'exclude':, 'labels':}``).
        class_map: ``name -> id`` (see the module docstring); None: :func:`default_class_map`.
        crop_size: int or (h, w), multiples of 32, or None for the whole image (then every
            sample of a batch must have the same size; see ``resize``). An image smaller than
            the crop is first scaled up (aspect kept) to cover it.
        resize: (h, w) to resize every pair to (before cropping), or None.
        augment: random crop positions and flips when True; centre crops and no flips when False.
        hflip_prob, vflip_prob: flip probabilities when augmenting.
        min_box_px: boxes cut by a crop are clipped; those narrower or lower than this many
            pixels, or keeping less than ``min_box_area`` of their area, are dropped.
        min_box_area: see ``min_box_px``.
        keep_color: also return ``vi_color``.
        context: pixels of aligned IR kept around each crop (``ir_context``); 0: none.
        scale_range: ``(low, high)`` with ``0 < low <= high``: when augmenting with crops, each
            pair is first resized by a factor drawn log-uniformly from the range (scale
            augmentation: objects appear smaller or larger than in the stored frames); the
            factor is raised where the resized pair would not cover the crop. None: no
            resizing beyond covering the crop.
        min_long_side: pairs whose longer side is below this many pixels are enlarged
            (bilinear, aspect kept) until it is reached, after ``resize`` and before any crop,
            flip or scale draw: the frames the network sees at inference with the same
            ``TarFuseConfig.input_min_long_side`` (0: never).
        photometric: probability, per modality and sample when augmenting, of one
            :func:`photometric_change` of the whole frame (before the crop, so the context
            changes with it): the IR and the visible image (luma and colour together) change
            independently, as two cameras' gains and responses differ. 0: never (and no draw:
            the same crops and flips as before the option existed).
        mosaic: probability, per sample when augmenting with crops, of a 2 x 2 mosaic: the
            crop is cut into four quadrants at a random split point and pair ``i`` and three
            random pairs each fill one with a window at their own scale (more objects and
            scenes per crop; YOLOv4's mosaic, Bochkovskiy et al. 2020, without its resize).
            A labelled pair takes labelled partners; ``has_labels`` holds only when all four
            pairs have labels. 0: never (no draw).
        seed: base seed; the randomness of sample ``i`` in epoch ``e`` is drawn from
            ``(seed, e, i)``, so results do not depend on worker order. See :meth:`set_epoch`.

    """

    def __init__(self, sources, class_map=None, crop_size=None, resize=None, augment=True,
                 hflip_prob=0.5, vflip_prob=0.0, min_box_px=3.0, min_box_area=0.2,
                 keep_color=False, seed=0, context=0, scale_range=None, min_long_side=0,
                 photometric=0.0, mosaic=0.0):
        if isinstance(sources, (str, os.PathLike, dict, DataSource)):
            sources = [sources]
        parsed = [DataSource.parse(s) for s in sources]
        if not parsed:
            raise ValueError('PairedDataset needs at least one data source')
        self.crop_size = _crop_size(crop_size)
        if resize is not None:
            resize = tuple(int(v) for v in resize)
            if len(resize) != 2 or min(resize) <= 0:
                raise ValueError(f'resize must be (height, width) > 0, got {resize}')
        self.resize = resize
        for name, prob in (('hflip_prob', hflip_prob), ('vflip_prob', vflip_prob),
                           ('min_box_area', min_box_area), ('photometric', photometric),
                           ('mosaic', mosaic)):
            if not 0.0 <= float(prob) <= 1.0:
                raise ValueError(f'{name} must be in [0, 1], got {prob}')
        self.augment = bool(augment)
        self.hflip_prob = float(hflip_prob)
        self.photometric = float(photometric)
        self.mosaic = float(mosaic)
        self._labelled = None  # indices of the pairs with labels (mosaic partners), on first use
        self.vflip_prob = float(vflip_prob)
        self.min_box_px = float(min_box_px)
        self.min_box_area = float(min_box_area)
        self.keep_color = bool(keep_color)
        self.context = int(context)
        if self.context < 0:
            raise ValueError(f'context must be >= 0 pixels, got {context}')
        self.scale_range = parse_scale_range(scale_range)
        if isinstance(min_long_side, bool) or not isinstance(min_long_side, int) \
                or min_long_side < 0:
            raise ValueError(f'min_long_side must be an integer >= 0 (pixels), got '
                             f'{min_long_side!r}')
        self.min_long_side = min_long_side
        self.seed = int(seed)
        self.epoch = 0
        dirs = [dataset_folder(source.path) for source in parsed]
        self.class_map = _normalise_class_map(
            default_class_map(parsed) if class_map is None else class_map)
        self.class_names = class_names_from_map(self.class_map) if self.class_map else ()
        self.items = []
        self._id_maps, self._set_names = [], []
        # {class name: boxes} that the class map leaves out, counted by check_labels.
        self.dropped_classes = {}
        for source, folder in zip(parsed, dirs):
            set_names = read_classes(folder, source.labels)
            self._set_names.append(set_names)
            self._id_maps.append(self._set_id_map(folder, set_names))
            for stem in source.stems():
                self.items.append((len(self._id_maps) - 1, folder, stem, source.labels))
        if not self.items:
            raise ValueError(f'no pairs found in the data sources {sources}')

    def _set_id_map(self, folder, set_names):
        """Return an array mapping the set's label ids to ours (-1: dropped), or None."""
        if set_names is None:
            return None
        return np.asarray([self.class_map.get(n.lower(), -1) for n in set_names], np.int64)

    def set_epoch(self, epoch):
        """Select the epoch whose random crops/flips are drawn (call once per epoch)."""
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.items)

    def check_labels(self):
        """Read every pair's label file now; return how many pairs have one.

        A malformed file (or one with class ids its set's ``classes.txt`` does not list) then
        fails at once, not when a loader reaches the pair. The boxes of classes the class map
        leaves out are counted in :attr:`dropped_classes` (``{class name: boxes}``).

        Raises:
            ValueError: as :func:`load_labels`, a class id beyond ``classes.txt``, or label
                files with boxes but no ``classes.txt`` to name their ids.

        """
        self.dropped_classes = {}
        return sum(self._labels(*item, dropped=self.dropped_classes) is not None
                   for item in self.items)

    def check_sizes(self, shown=5):
        """Refuse now the pairs whose IR and visible image differ in aspect ratio.

        Such a pair is refused when a loader reaches it (``ir`` above); this finds them all
        before training starts, reading only the files' headers (Pillow: well under a second
        for hundreds of pairs: :func:`check_aspect_ratios`; a file Pillow does not read is
        decoded).

        Raises:
            ValueError: how many pairs, the first ``shown`` named with their sizes.

        """
        check_aspect_ratios([(folder, stem) for _, folder, stem, _ in self.items],
                            _NOT_ALIGNED, shown)

    def _labels(self, set_index, folder, stem, labels_dir, dropped=None):
        labels = load_labels(folder, stem, labels_dir)
        if labels is None:
            return None
        id_map = self._id_maps[set_index]
        if len(labels) == 0:
            return labels
        ids = labels[:, 0].astype(np.int64)
        if id_map is None or ids.max() >= len(id_map):
            self._refuse_ids(set_index, folder, stem, labels_dir, ids)
        mapped = id_map[ids]
        if dropped is not None:
            for class_id in ids[mapped < 0]:
                name = self._set_names[set_index][class_id]
                dropped[name] = dropped.get(name, 0) + 1
        labels = labels[mapped >= 0].copy()
        labels[:, 0] = mapped[mapped >= 0]
        return labels

    def _refuse_ids(self, set_index, folder, stem, labels_dir, ids):
        """Raise ``ValueError``: label ids no ``classes.txt`` names, or beyond the one there."""
        path = label_file(folder, stem, labels_dir)
        id_map = self._id_maps[set_index]
        if id_map is None:
            raise ValueError(
                f'{str(path)!r} has boxes but no classes.txt names their class ids: write the '
                f'class names, one a line in id order, to {str(path.parent / "classes.txt")!r} '
                f'or {str(folder / "classes.txt")!r}')
        raise ValueError(
            f'{str(path)!r} uses class id {int(ids.max())} but its classes.txt lists '
            f'{len(id_map)} classes {self._set_names[set_index]}')

    def _window(self, height, width, rng, crop_h, crop_w):
        """Return (top, left) of a ``crop_h x crop_w`` window."""
        if self.augment:
            return (int(rng.integers(0, height - crop_h + 1)),
                    int(rng.integers(0, width - crop_w + 1)))
        return (height - crop_h) // 2, (width - crop_w) // 2

    def _crop_boxes(self, boxes, height, width, top, left, crop_h, crop_w):
        if len(boxes) == 0:
            return boxes
        xyxy = yolo_to_xyxy(boxes, width, height)
        area = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
        xyxy[:, [0, 2]] = np.clip(xyxy[:, [0, 2]] - left, 0, crop_w)
        xyxy[:, [1, 3]] = np.clip(xyxy[:, [1, 3]] - top, 0, crop_h)
        box_w = xyxy[:, 2] - xyxy[:, 0]
        box_h = xyxy[:, 3] - xyxy[:, 1]
        keep = ((box_w >= self.min_box_px) & (box_h >= self.min_box_px)
                & (box_w * box_h >= self.min_box_area * np.maximum(area, 1e-9)))
        out = np.stack([xyxy[:, 4], (xyxy[:, 0] + xyxy[:, 2]) / 2 / crop_w,
                        (xyxy[:, 1] + xyxy[:, 3]) / 2 / crop_h, box_w / crop_w,
                        box_h / crop_h], axis=1)
        return out[keep].astype(np.float32)

    def _frame(self, index, rng):
        """Return ``(stack, boxes, labelled)`` of pair ``index``: resized, enlarged, changed.

        ``stack``: (H, W, C) float32 planes (IR, visible luma, colour); ``boxes`` normalised to
        the frame; ``labelled``: the pair has a label file.
        """
        set_index, folder, stem, labels_dir = self.items[index]
        ir_raw, vi_raw = load_pair(folder, stem)
        height, width = vi_raw.shape[:2]
        ir_wh = (ir_raw.shape[1], ir_raw.shape[0])
        if _other_aspect(ir_wh, (width, height)):
            raise ValueError(f'pair {folder.name}/{stem} of {str(folder)!r}: '
                             f'{_sizes_text(ir_wh, (width, height))}, another aspect ratio; '
                             f'{_NOT_ALIGNED}')
        pair = prepare_pair(ir_raw, vi_raw, names=(f'{folder.name}/ir/{stem}',
                                                   f'{folder.name}/vi/{stem}'))
        channels = [pair.ir, pair.vi_y]
        if self.keep_color:
            color = vi_raw if vi_raw.ndim == 3 else np.repeat(vi_raw[:, :, None], 3, axis=2)
            color = color.astype(np.float32) / (255.0 if color.dtype == np.uint8 else 65535.0)
            channels += [color[:, :, c] for c in range(3)]
        stack = np.stack(channels, axis=2)
        labels = self._labels(set_index, folder, stem, labels_dir)
        boxes = labels if labels is not None else np.zeros((0, 5), np.float32)
        # Normalised boxes are unchanged by resizing; only crops and flips move them.
        if self.resize is not None:
            height, width = self.resize
            stack = _resize_planes(stack, width, height, cv2.INTER_AREA)
        if max(height, width) < self.min_long_side:
            height, width = enlarged_size(height, width, self.min_long_side)
            stack = _resize_planes(stack, width, height, cv2.INTER_LINEAR)
        if self.augment and self.photometric > 0.0:  # no draw without: same crops as before
            stack = np.ascontiguousarray(stack)
            for planes in (slice(0, 1), slice(1, stack.shape[2])):  # IR; visible luma (+ colour)
                if rng.random() < self.photometric:
                    stack[:, :, planes] = photometric_change(stack[:, :, planes], rng)
        return stack, boxes, labels is not None

    def _cut(self, stack, boxes, crop_h, crop_w, rng, margins):
        """Return ``(crop, context, boxes)``: a ``crop_h x crop_w`` window of a frame.

        The frame is first resized by the scale draw (and to cover the window); ``margins``
        ``(top, bottom, left, right)``: pixels of aligned IR kept around the window in
        ``context`` (zeros beyond the frame; None when all are 0); ``boxes`` normalised to the
        window, those the window cuts clipped or dropped (:meth:`_crop_boxes`).
        """
        height, width = stack.shape[:2]
        jitter = 1.0
        if self.augment and self.scale_range is not None:  # no draw without: same crops
            jitter = math.exp(rng.uniform(*np.log(self.scale_range)))
        scale = max(jitter, crop_h / height, crop_w / width)
        if scale != 1.0:
            height = max(crop_h, int(math.ceil(height * scale)))
            width = max(crop_w, int(math.ceil(width * scale)))
            stack = _resize_planes(stack, width, height, (
                cv2.INTER_LINEAR if scale > 1.0 else cv2.INTER_AREA))
        top, left = self._window(height, width, rng, crop_h, crop_w)
        above, below, before, after = margins
        context = None
        if above or below or before or after:
            context = _padded_window(stack[:, :, 0], top - above, left - before,
                                     crop_h + above + below, crop_w + before + after)
        crop = stack[top:top + crop_h, left:left + crop_w]
        return crop, context, self._crop_boxes(boxes, height, width, top, left, crop_h, crop_w)

    def _has_label_file(self, index):
        _, folder, stem, labels_dir = self.items[index]
        return label_file(folder, stem, labels_dir).is_file()

    def _labelled_items(self):
        """Return (and cache) the indices of the pairs with a label file."""
        if self._labelled is None:
            self._labelled = np.asarray([i for i in range(len(self.items))
                                         if self._has_label_file(i)], np.int64)
        return self._labelled

    def _mosaic(self, index, rng):
        """Return ``(stack, context, boxes, labelled)`` of a 2 x 2 mosaic (``mosaic``).

        Pair ``index`` and three pairs drawn at random each fill one quadrant of the crop (the
        split point drawn in the middle half of each side) with a window at their own scale;
        each quadrant's IR context extends outwards only, so the mosaic's context is the
        mosaic surrounded by its quadrants' scene. ``labelled``: all four pairs are.
        """
        crop_h, crop_w = self.crop_size
        split_y = int(rng.integers(crop_h // 4, crop_h - crop_h // 4 + 1))
        split_x = int(rng.integers(crop_w // 4, crop_w - crop_w // 4 + 1))
        # A labelled pair takes labelled partners (an unlabelled one would void the labels of
        # the whole crop); an unlabelled pair takes any.
        pool = (self._labelled_items() if self._has_label_file(index)
                else np.arange(len(self.items)))
        members = [index] + [int(pool[i]) for i in rng.integers(0, len(pool), 3)]
        c = self.context
        stack = context = None
        boxes, labelled = [], True
        quadrants = ((0, split_y, 0, split_x), (0, split_y, split_x, crop_w),
                     (split_y, crop_h, 0, split_x), (split_y, crop_h, split_x, crop_w))
        for member, (y0, y1, x0, x1) in zip(members, quadrants):
            frame, frame_boxes, member_labelled = self._frame(member, rng)
            labelled = labelled and member_labelled
            margins = (c if y0 == 0 else 0, c if y1 == crop_h else 0,
                       c if x0 == 0 else 0, c if x1 == crop_w else 0)
            crop, part, cut = self._cut(frame, frame_boxes, y1 - y0, x1 - x0, rng, margins)
            if stack is None:
                stack = np.zeros((crop_h, crop_w, frame.shape[2]), np.float32)
                context = np.zeros((crop_h + 2 * c, crop_w + 2 * c), np.float32) if c else None
            stack[y0:y1, x0:x1] = crop
            if context is not None:
                context[y0 + c - margins[0]:y1 + c + margins[1],
                        x0 + c - margins[2]:x1 + c + margins[3]] = part
            if len(cut):
                cut = cut.copy()  # quadrant-normalised -> crop-normalised
                cut[:, 1] = (x0 + cut[:, 1] * (x1 - x0)) / crop_w
                cut[:, 2] = (y0 + cut[:, 2] * (y1 - y0)) / crop_h
                cut[:, 3] *= (x1 - x0) / crop_w
                cut[:, 4] *= (y1 - y0) / crop_h
                boxes.append(cut)
        boxes = np.concatenate(boxes) if boxes else np.zeros((0, 5), np.float32)
        return stack, context, boxes.astype(np.float32), labelled

    def __getitem__(self, index):
        _, folder, stem, _ = self.items[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        context = None
        # The mosaic draw only with mosaic > 0: earlier runs keep their crops.
        if (self.augment and self.crop_size is not None and self.mosaic > 0.0
                and rng.random() < self.mosaic):
            stack, context, boxes, labelled = self._mosaic(index, rng)
        else:
            stack, boxes, labelled = self._frame(index, rng)
            if self.crop_size is not None:
                margins = (self.context,) * 4
                stack, context, boxes = self._cut(stack, boxes, *self.crop_size, rng, margins)
        if self.augment and rng.random() < self.hflip_prob:
            stack = stack[:, ::-1]
            context = None if context is None else context[:, ::-1]
            boxes = boxes.copy()
            boxes[:, 1] = 1.0 - boxes[:, 1]
        if self.augment and rng.random() < self.vflip_prob:
            stack = stack[::-1]
            context = None if context is None else context[::-1]
            boxes = boxes.copy()
            boxes[:, 2] = 1.0 - boxes[:, 2]
        chw = torch.from_numpy(np.ascontiguousarray(stack.transpose(2, 0, 1), np.float32))
        sample = {
            'ir': chw[0:1].clamp_(0.0, 1.0),
            'vi': chw[1:2].clamp_(0.0, 1.0),
            'boxes': torch.from_numpy(np.asarray(boxes, np.float32).reshape(-1, 5)),
            'has_labels': labelled,
            'stem': stem,
            'dataset': folder.name,
            'index': index,
        }
        if self.keep_color:
            sample['vi_color'] = chw[2:5].clamp_(0.0, 1.0)
        if context is not None:
            sample['ir_context'] = torch.from_numpy(
                np.ascontiguousarray(context, np.float32))[None].clamp_(0.0, 1.0)
        return sample


# Why a pair of IR and visible images of other aspect ratios is refused, and what to do.
_NOT_ALIGNED = ('training pairs are aligned (the IR image is the visible frame, at any size), so '
                'such a pair is not aligned as stored or not a pair, and stretched it would '
                'teach a wrong alignment: align its IR image to the visible one, or leave it out '
                "of the data (a split's list file without it, or a list file of it in the "
                "source's exclude)")


def check_aspect_ratios(pairs, why, shown=5):
    """Refuse pairs whose IR and visible images differ in aspect ratio (they are not aligned).

    The check of every tool that takes a pair as aligned, the IR image being the visible frame
    at any size (training, ``tarfuse-eval`` of an aligned set, ``tarfuse-pseudo-label``): an
    IR image of another aspect ratio, by more than a registration prior's
    :data:`~tarfuse_ros.core.prior.ASPECT_TOLERANCE`, would be stretched to the visible frame.
    Only the files' headers are read (Pillow: well under a second for hundreds of pairs); a
    file Pillow does not read is decoded as the loader decodes it (OpenCV), one no reader
    takes is left to the loader, which refuses it.

    Args:
        pairs: ``(data set folder, stem)`` of each pair, in order.
        why: what the caller does with an aligned pair and what to do, ending the message.
        shown: how many refused pairs are named.

    Raises:
        ValueError: how many of the pairs, the first ``shown`` named ``<set>/<stem>`` with
            their sizes, then ``why``.

    """
    pairs = list(pairs)
    found = []
    for folder, stem in pairs:
        ir_wh, vi_wh = (stored_size(path) for path in pair_files(folder, stem))
        if ir_wh is not None and vi_wh is not None and _other_aspect(ir_wh, vi_wh):
            found.append(f'{Path(folder).name}/{stem} ({_sizes_text(ir_wh, vi_wh)})')
    if found:
        more = f', and {len(found) - shown} more' if len(found) > shown else ''
        raise ValueError(f'{len(found)} of the {len(pairs)} pairs have an IR image of '
                         f'another aspect ratio than their visible image: '
                         f'{", ".join(found[:shown])}{more}; {why}')


def _other_aspect(ir_wh, vi_wh):
    """Return whether two ``(width, height)`` differ in aspect ratio (beyond the tolerance)."""
    return beyond_aspect_tolerance((ir_wh[0] / ir_wh[1]) / (vi_wh[0] / vi_wh[1]))


def _sizes_text(ir_wh, vi_wh):
    return f'IR {ir_wh[0]}x{ir_wh[1]}, visible {vi_wh[0]}x{vi_wh[1]}'


def stored_size(path):
    """Return an image file's ``(width, height)`` as the loader reads it, or None (unreadable).

    From the header (Pillow); a file Pillow does not open (a PNG with a broken ancillary
    chunk, which libpng skips) is decoded as the loader decodes it (OpenCV).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(path) as image:
                return tuple(int(side) for side in image.size)
    except Exception:  # noqa: BLE001 - unreadable by Pillow: read it as the loader does
        pass
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return None if image is None else (int(image.shape[1]), int(image.shape[0]))


def _resize_planes(stack, width, height, interpolation):
    """Return ``cv2.resize`` of an (H, W, C) stack, at most 4 planes per call.

    OpenCV's area interpolation refuses more than 4 channels at non-integer factors, and the
    IR, luma and colour planes (``keep_color``) are 5.
    """
    parts = [cv2.resize(np.ascontiguousarray(stack[:, :, i:i + 4]), (width, height),
                        interpolation=interpolation) for i in range(0, stack.shape[2], 4)]
    parts = [part[:, :, None] if part.ndim == 2 else part for part in parts]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)


def _padded_window(plane, top, left, height, width):
    """Return ``plane[top:top + height, left:left + width]``, zeros where it leaves the plane."""
    out = np.zeros((height, width), np.float32)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, plane.shape[0]), min(left + width, plane.shape[1])
    if y1 > y0 and x1 > x0:
        out[y0 - top:y1 - top, x0 - left:x1 - left] = plane[y0:y1, x0:x1]
    return out


def collate_pairs(samples):
    """Stack samples of :class:`PairedDataset` into a batch with ultralytics detection targets.

    Returns:
        dict with ``ir``, ``vi`` (B, 1, H, W), ``vi_color`` (B, 3, H, W) and ``ir_context``
        where every sample has them, ``has_labels`` (B,) bool, ``batch_idx`` (N,) float32
        (image index of each box), ``cls`` (N, 1) float32, ``bboxes`` (N, 4) float32
        normalised ``cx, cy, w, h``, and the lists ``stem``, ``dataset``, ``index``.

    Raises:
        ValueError: empty batch, or samples of different sizes (use ``crop_size``/``resize``).

    """
    if not samples:
        raise ValueError('cannot collate an empty batch')
    shapes = {tuple(s['ir'].shape) for s in samples} | {tuple(s['vi'].shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(
            f'samples of one batch must share one size, got {sorted(shapes)}; '
            f'set crop_size or resize')
    boxes = [torch.as_tensor(s['boxes'], dtype=torch.float32).reshape(-1, 5) for s in samples]
    all_boxes = torch.cat(boxes, 0)
    batch = {
        'ir': torch.stack([s['ir'] for s in samples]),
        'vi': torch.stack([s['vi'] for s in samples]),
        'has_labels': torch.tensor([bool(s['has_labels']) for s in samples]),
        'batch_idx': torch.cat([torch.full((len(b),), float(i)) for i, b in enumerate(boxes)]),
        'cls': all_boxes[:, 0:1].contiguous(),
        'bboxes': all_boxes[:, 1:5].contiguous(),
        'stem': [s['stem'] for s in samples],
        'dataset': [s['dataset'] for s in samples],
        'index': [s.get('index', i) for i, s in enumerate(samples)],
    }
    for key in ('vi_color', 'ir_context'):
        if all(key in s for s in samples):
            batch[key] = torch.stack([s[key] for s in samples])
    return batch

"""The calibration prior: a fixed IR -> visible homography applied before the network.

Two cameras in one rigid mount are misaligned mostly by a fixed transform (field of view, offset,
a small rotation); the network then only has to predict what is left (parallax, lens residue).
A :class:`RegistrationPrior` holds that transform as a 3x3 homography ``H`` (row-major) from IR
pixels to visible pixels, ``[x_vi, y_vi, 1]^T ~ H [x_ir, y_ir, 1]^T`` (pixel centres at integer
coordinates, x right, y down), with the IR and visible image sizes it was made for
(``tarfuse-calibrate`` fits one from a recording: :mod:`tarfuse_ros.core.calibration`).

How the engines use it (:class:`~tarfuse_ros.core.engine.FusionEngine` and the onnxruntime
backend, through :func:`apply_prior` and :func:`compose_flow`):

1. the pair is prepared as without a prior (:func:`~tarfuse_ros.core.images.prepare_pair`: the
   IR is normalised and resized to the visible frame, ``ir_resized``);
2. ``ir_resized`` is warped by ``M = H' R^-1`` into the visible frame with
   ``cv2.warpPerspective`` (bilinear, zeros outside the IR image), where ``R`` is the resize of
   step 1 (``x_resized = (x_ir + 0.5) * W_vi / W_ir - 0.5``, OpenCV's ``cv2.resize`` pixel
   mapping) and ``H'`` is ``H`` scaled to the incoming image sizes (below). So the prior
   *composes with* the resize: without a prior ``M`` is the identity and nothing changes; a
   prior equal to the resize (``H = R``) is the same as no prior;
3. the network sees the pre-warped IR and predicts the residual flow ``r`` (visible frame);
4. the published ``registered_ir`` is the network's, ``pre_warped(p + r(p))``, and the
   published flow is the composition in the package's one convention (relative to
   ``ir_resized``, :mod:`tarfuse_ros.core.model.warp`):
   ``flow(p) = M^-1 (p + r(p)) - p``, so that ``registered_ir(p) = ir_resized(p + flow(p))``
   holds with or without a prior.

Other image sizes: when the incoming IR or visible image differs in size from the prior's,
``H`` is scaled, ``H' = S_vi H S_ir^-1`` with ``S`` the same half-pixel scaling as ``R`` (a
camera streaming a binned or resized mode). An image whose aspect ratio differs from the
prior's by more than :data:`ASPECT_TOLERANCE` (a crop or another sensor mode) is refused with
a ``ValueError`` that says to calibrate again for that size: scaling cannot express a crop.
"""

from dataclasses import dataclass, replace
import math
from pathlib import Path
import re

import cv2
import numpy as np
from tarfuse_ros.core.files import write_text_atomic
from tarfuse_ros.core.images import to_uint8

__all__ = ['ASPECT_TOLERANCE', 'MIN_OVERLAP', 'PARAMETER_NAMES', 'RegistrationPrior',
           'apply_prior', 'beyond_aspect_tolerance', 'check_prior', 'compose_flow',
           'corner_error_px', 'ir_corners', 'load_prior_yaml', 'make_prior', 'map_points',
           'prior_flow', 'remap_by_flow', 'resize_matrix', 'write_prior_yaml']

ASPECT_TOLERANCE = 0.02  # relative change of width/height ratio accepted by scaling
PARAMETER_NAMES = ('registration.prior', 'registration.prior_ir_size',
                   'registration.prior_visible_size')
# |det H| relative to the scale of H (both images scaled to 1 x 1) below this: not invertible.
_MIN_RELATIVE_DET = 1e-9
# Least overlap of the mapped IR frame and the visible frame, as a share of the smaller one.
MIN_OVERLAP = 0.01


def beyond_aspect_tolerance(ratio):
    """Return whether an aspect ratio quotient differs from 1 by more than the tolerance.

    Exactly :data:`ASPECT_TOLERANCE` off passes (1.02 - 1.0 is a rounding error above 0.02).
    """
    return abs(ratio - 1.0) > ASPECT_TOLERANCE + 1e-12


def resize_matrix(src_wh, dst_wh):
    """Return the 3x3 pixel mapping of ``cv2.resize`` from size ``src_wh`` to ``dst_wh``.

    ``x_dst = (x_src + 0.5) * W_dst / W_src - 0.5`` (and the same for y): OpenCV's half-pixel
    convention, pixel centres at integer coordinates.

    Args:
        src_wh, dst_wh: ``(width, height)`` in pixels, each >= 1.

    Returns:
        ``(3, 3)`` float64 matrix.

    """
    sx, sy = dst_wh[0] / src_wh[0], dst_wh[1] / src_wh[1]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def _size(value, name):
    """Return ``value`` as a ``(width, height)`` tuple of ints >= 1 or raise ``ValueError``."""
    try:
        items = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f'{name} must be [width, height] in pixels, got {value!r}') from None
    if len(items) != 2 or not all(math.isfinite(v) and v >= 1 and v == int(v) for v in items):
        raise ValueError(f'{name} must be [width, height], two integers >= 1 (the image size the '
                         f'prior was made for), got {list(value)!r}')
    return int(items[0]), int(items[1])


@dataclass(frozen=True)
class RegistrationPrior:
    """A validated IR -> visible homography with the image sizes it was made for.

    Build it with :func:`make_prior` (which validates). ``homography``: ``(3, 3)`` float64 array
    (IR pixels -> visible pixels), read-only (make another prior to change it); ``ir_size`` and
    ``visible_size``: ``(width, height)``.
    """

    homography: np.ndarray
    ir_size: tuple
    visible_size: tuple

    def as_parameters(self):
        """Return ``{parameter name: value}`` as the node's parameters file holds them."""
        return {PARAMETER_NAMES[0]: [float(v) for v in self.homography.ravel()],
                PARAMETER_NAMES[1]: list(self.ir_size),
                PARAMETER_NAMES[2]: list(self.visible_size)}

    def homography_for(self, ir_wh, visible_wh):
        """Return ``H'``: the prior scaled to incoming image sizes (module docstring).

        Args:
            ir_wh, visible_wh: ``(width, height)`` of the incoming IR and visible images.

        Returns:
            ``(3, 3)`` float64, IR pixels (incoming size) -> visible pixels (incoming size).

        Raises:
            ValueError: an aspect ratio differs from the prior's by more than
                :data:`ASPECT_TOLERANCE`.

        """
        checks = (('IR', self.ir_size, ir_wh), ('visible', self.visible_size, visible_wh))
        for label, made, got in checks:
            ratio = (got[0] / made[0]) / (got[1] / made[1])
            if beyond_aspect_tolerance(ratio):
                raise ValueError(
                    f'registration.prior was made for a {made[0]}x{made[1]} {label} image but '
                    f'the {label} image is {got[0]}x{got[1]} (another aspect ratio: a crop or '
                    f'another sensor mode); run tarfuse-calibrate again for this size')
        scale_ir = resize_matrix(self.ir_size, ir_wh)
        scale_vi = resize_matrix(self.visible_size, visible_wh)
        return scale_vi @ self.homography @ np.linalg.inv(scale_ir)

    def pre_warp_for(self, ir_wh, visible_wh):
        """Return ``M``: resized-IR pixels (visible frame) -> visible pixels (module docstring).

        Args:
            ir_wh, visible_wh: ``(width, height)`` of the incoming IR and visible images.

        Returns:
            ``(3, 3)`` float64.

        Raises:
            ValueError: as :meth:`homography_for`.

        """
        matrix = self.homography_for(ir_wh, visible_wh) @ np.linalg.inv(
            resize_matrix(ir_wh, visible_wh))
        return matrix / matrix[2, 2] if abs(matrix[2, 2]) > 1e-12 else matrix


def make_prior(homography, ir_size=(), visible_size=(), name='registration.prior'):
    """Validate a prior given as parameters; return a :class:`RegistrationPrior` or None.

    Checks, in this order after the numbers: sizes; singular: ``|det|`` of ``H`` divided by its
    largest element below 1e-9, with both images scaled to 1 x 1 first (in pixels a large
    translation would make a valid ``H`` look singular); the line at infinity must not cross
    the IR frame; outside: the mapped IR frame and the visible frame overlap on less than
    :data:`MIN_OVERLAP` (1 %) of the smaller of the two areas (frames as pixel extents,
    ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``; the message gives the mapped corners). A narrow IR
    inside a wide visible view, or the converse, overlaps on 100 % of the smaller one; an
    orientation flip (a mirror, ``det H < 0``) is accepted.

    Args:
        homography: 9 numbers (row-major 3x3, IR pixels -> visible pixels), a ``(3, 3)``
            array, or empty/None for no prior (the engine then behaves exactly as without one).
        ir_size, visible_size: ``[width, height]`` in pixels the prior was made for.
        name: the parameter name used in error messages (``<name>_ir_size`` etc. follow it).

    Returns:
        :class:`RegistrationPrior`, or None when ``homography`` is empty.

    Raises:
        ValueError: not 9 numbers (a bool or a string is not one), a non-finite value, a
            singular matrix, a homography that sends part of the IR image through the line at
            infinity (a point of the image maps behind the camera), one that maps the IR frame
            (almost) entirely outside the visible frame, or sizes missing/not positive; the
            message names the parameter.

    """
    if homography is None:
        return None
    values = np.asarray(homography, dtype=object).ravel()
    if values.size == 0:
        return None
    try:
        if any(isinstance(v, (bool, np.bool_, str, bytes)) for v in values):
            raise TypeError('not a number')  # float() would take true and '1.5'
        matrix = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f'{name} must hold 9 numbers (row-major 3x3 homography, IR pixels -> '
                         f'visible pixels), got {list(values)!r}') from None
    if matrix.size != 9:
        raise ValueError(f'{name} must hold 9 numbers (row-major 3x3 homography, IR pixels -> '
                         f'visible pixels), got {matrix.size}; leave it empty for no prior')
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f'{name} must be finite, got {matrix.tolist()!r}')
    matrix = matrix.reshape(3, 3)
    singular = (f'{name} is not invertible (determinant ~0): {matrix.tolist()!r}; a '
                f'homography must map the IR image onto an area of the visible image')
    if not np.any(matrix):
        raise ValueError(singular)
    ir_wh = _size(ir_size, f'{name}_ir_size')
    visible_wh = _size(visible_size, f'{name}_visible_size')
    # Judged in frame units (each image 1 x 1): in pixels a translation of a few hundred px
    # dominates the scale of H, and a valid prior for a large visible image looked singular.
    unit = np.diag([1.0 / visible_wh[0], 1.0 / visible_wh[1], 1.0]) @ matrix @ np.diag(
        [ir_wh[0], ir_wh[1], 1.0])
    if abs(np.linalg.det(unit / np.abs(unit).max())) < _MIN_RELATIVE_DET:
        raise ValueError(singular)
    corners = _frame_corners(ir_wh)
    w = corners[:, 0] * matrix[2, 0] + corners[:, 1] * matrix[2, 1] + matrix[2, 2]
    if not (np.all(w > 0) or np.all(w < 0)):
        raise ValueError(f'{name} sends part of the {ir_wh[0]}x{ir_wh[1]} IR image through the '
                         f'line at infinity (its last row changes sign over the image): not a '
                         f'camera-to-camera homography; check the row-major order')
    _check_overlap(matrix, ir_wh, visible_wh, name)
    homography = matrix / matrix[2, 2]
    homography.setflags(write=False)  # validated once: an edit in place would skip the checks
    return RegistrationPrior(homography, ir_wh, visible_wh)


def _frame_corners(wh):
    """Return the outer corners of a ``(width, height)`` image, ``(4, 2)`` float64.

    The image covers ``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` (pixel centres at integers), corners
    clockwise from the top left.
    """
    width, height = wh
    return np.array([[-0.5, -0.5], [width - 0.5, -0.5], [width - 0.5, height - 0.5],
                     [-0.5, height - 0.5]])


def _polygon_area(points):
    """Return the area of a simple polygon given as ``(N, 2)`` vertices (either orientation)."""
    if len(points) < 3:
        return 0.0
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _clip_to_frame(points, wh):
    """Return the convex polygon ``points`` clipped to the frame of a ``(width, height)`` image.

    Sutherland-Hodgman against the four sides of :func:`_frame_corners`; ``(M, 2)`` float64,
    empty when nothing of the polygon lies inside.
    """
    polygon = [tuple(p) for p in points]
    for axis, bound, sign in ((0, -0.5, 1.0), (0, wh[0] - 0.5, -1.0), (1, -0.5, 1.0),
                              (1, wh[1] - 0.5, -1.0)):
        # Kept: sign * (coordinate - bound) >= 0 (inside this side of the frame).
        inside = [sign * (p[axis] - bound) >= 0 for p in polygon]
        clipped = []
        for index, current in enumerate(polygon):
            previous = polygon[index - 1]
            if inside[index] != inside[index - 1]:  # the edge crosses the side: add the cut
                t = (bound - previous[axis]) / (current[axis] - previous[axis])
                clipped.append(tuple(a + t * (b - a) for a, b in zip(previous, current)))
            if inside[index]:
                clipped.append(current)
        polygon = clipped
        if not polygon:
            break
    return np.array(polygon, dtype=np.float64).reshape(-1, 2)


def _check_overlap(matrix, ir_wh, visible_wh, name):
    """Raise ``ValueError`` when the IR frame mapped by ``matrix`` misses the visible frame.

    The mapped IR frame (a convex quadrilateral: the line at infinity is checked before) and
    the visible frame must overlap on at least :data:`MIN_OVERLAP` of the smaller of the two
    areas (pixel extents, :func:`_frame_corners`); below it the pre-warped IR is (almost) all
    zeros and nothing can be registered.
    """
    mapped = map_points(matrix, _frame_corners(ir_wh))
    overlap = _polygon_area(_clip_to_frame(mapped, visible_wh))
    smaller = min(_polygon_area(mapped), float(visible_wh[0] * visible_wh[1]))
    if overlap >= MIN_OVERLAP * smaller:
        return
    where = 'entirely' if overlap <= 0 else 'almost entirely'
    landed = ', '.join(f'({x:.1f}, {y:.1f})' for x, y in mapped)
    raise ValueError(
        f'{name} maps the {ir_wh[0]}x{ir_wh[1]} IR frame {where} outside the '
        f'{visible_wh[0]}x{visible_wh[1]} visible frame: its corners land at {landed} (visible '
        f'pixels; the visible frame spans (-0.5, -0.5) to ({visible_wh[0] - 0.5}, '
        f'{visible_wh[1] - 0.5})), an overlap of {overlap / smaller:.2%} of the smaller frame '
        f'(at least {MIN_OVERLAP:.0%} needed): nothing would be registered; check that it maps '
        f'IR pixels to visible pixels (not the inverse), its row-major order and '
        f'{name}_ir_size / {name}_visible_size')


def check_prior(prior):
    """Return ``prior`` if it is a :class:`RegistrationPrior` or None, else raise ValueError."""
    if prior is not None and not isinstance(prior, RegistrationPrior):
        raise ValueError(f'registration_prior must be a RegistrationPrior (make_prior(...)) or '
                         f'None, got {type(prior).__name__}')
    return prior


def apply_prior(prior, pair, ir_wh):
    """Warp a prepared pair's IR plane by the prior (step 2 of the module docstring).

    Args:
        prior: :class:`RegistrationPrior` or None.
        pair: a :class:`~tarfuse_ros.core.images.PreparedPair` (IR resized to the visible frame).
        ir_wh: ``(width, height)`` of the IR image as it came in (before the resize).

    Returns:
        the pair with its IR plane pre-warped (same dtype) and ``pre_warp`` set to the
        ``(3, 3)`` matrix ``M`` (resized-IR pixels -> visible pixels); ``pair`` unchanged
        without a prior.

    Raises:
        ValueError: as :meth:`RegistrationPrior.homography_for`.

    """
    if prior is None:
        return pair
    height, width = pair.vi_y.shape[:2]
    matrix = prior.pre_warp_for(ir_wh, (width, height))
    warped = cv2.warpPerspective(pair.ir, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return replace(pair, ir=warped, pre_warp=matrix, ir_resized=pair.ir)


def published_outputs(pair, residual_px, registered):
    """Return ``(flow_px, registered_ir)`` as an engine publishes them for one pair.

    The flow is the network's residual composed with the pair's pre-warp
    (:func:`compose_flow`, contiguous float32); the registered IR is what that flow describes
    (:func:`registered_ir_for`). Without a prior both come back as the network gave them.
    """
    flow_px = np.ascontiguousarray(compose_flow(residual_px, pair.pre_warp))
    return flow_px, registered_ir_for(pair, flow_px, registered)


def registered_ir_for(pair, flow_px, registered):
    """Return the registered IR that the published (composed) flow describes.

    The network's own registered IR resamples the pre-warped IR, which lost what the prior
    mapped outside the visible frame; the published flow still points there. With a prior the
    resized IR is therefore resampled once at the composed flow (``cv2.remap``, bilinear, zeros
    outside), so ``registered_ir(p) = ir_resized(p + flow_px(p))`` holds as documented.

    Args:
        pair: the :class:`~tarfuse_ros.core.images.PreparedPair` given to the network.
        flow_px: ``(H, W, 2)`` float32 composed flow (:func:`compose_flow`), pixels.
        registered: uint8 ``HxW`` registered IR of the network (returned without a prior).

    Returns:
        uint8 ``HxW``.

    """
    if (pair.pre_warp is None or pair.ir_resized is None
            or np.array_equal(pair.pre_warp, np.eye(3))):
        return registered  # nothing was warped away
    plane = pair.ir_resized
    if plane.dtype != np.uint8:
        plane = to_uint8(plane)
    return remap_by_flow(plane, flow_px)


def remap_by_flow(plane, flow_px):
    """Return ``plane`` resampled by a flow: ``out(p) = plane(p + flow_px(p))``.

    Args:
        plane: ``HxW`` uint8 or float32 image.
        flow_px: ``(H, W, 2)`` float32 field (dx, dy), pixels.

    Returns:
        ``HxW`` of ``plane``'s dtype (``cv2.remap``, bilinear, zeros outside the image).

    """
    height, width = flow_px.shape[:2]
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    return cv2.remap(plane, grid_x + flow_px[..., 0], grid_y + flow_px[..., 1],
                     interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                     borderValue=0)


def _apply_h(matrix, x, y):
    """Map pixel coordinate arrays through a 3x3 homography (float64)."""
    den = matrix[2, 0] * x + matrix[2, 1] * y + matrix[2, 2]
    return ((matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2]) / den,
            (matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2]) / den)


def compose_flow(residual_px, matrix):
    """Return the published flow: the prior's pre-warp followed by the network's residual.

    ``flow(p) = M^-1 (p + residual(p)) - p`` (module docstring, step 4): warping
    ``ir_resized`` by the returned flow equals warping it by ``M`` (``cv2.warpPerspective``)
    and then by ``residual_px``.

    Args:
        residual_px: ``(H, W, 2)`` float flow in pixels (dx, dy), visible frame.
        matrix: ``M`` (``PreparedPair.pre_warp`` after :func:`apply_prior`; None:
            ``residual_px`` is returned as is).

    Returns:
        ``(H, W, 2)`` float32 flow in pixels.

    """
    if matrix is None:
        return residual_px
    residual = np.asarray(residual_px)
    if residual.ndim != 3 or residual.shape[2] != 2:
        raise ValueError(f'residual_px must have shape (H, W, 2), got {residual.shape}')
    height, width = residual.shape[:2]
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float64)
    x = grid_x + residual[..., 0]
    y = grid_y + residual[..., 1]
    src_x, src_y = _apply_h(np.linalg.inv(matrix), x, y)
    return np.stack((src_x - grid_x, src_y - grid_y), axis=-1).astype(np.float32)


def prior_flow(matrix, height, width):
    """Return the flow of the pre-warp alone, ``M^-1 p - p``, ``(H, W, 2)`` float32 pixels."""
    return compose_flow(np.zeros((height, width, 2), np.float32), matrix)


def corner_error_px(fitted, reference, ir_wh):
    """Return the largest distance (visible pixels) between two homographies at the IR corners.

    Args:
        fitted, reference: ``(3, 3)`` homographies, IR pixels -> visible pixels.
        ir_wh: ``(width, height)`` of the IR image; its corner pixel centres are compared.

    Returns:
        float: ``max_c |fitted(c) - reference(c)|`` over the four corners, in pixels.

    """
    corners = ir_corners(ir_wh)
    difference = map_points(fitted, corners) - map_points(reference, corners)
    return float(np.max(np.hypot(difference[:, 0], difference[:, 1])))


def ir_corners(ir_wh):
    """Return the corner pixel centres of a ``(width, height)`` image, ``(4, 2)`` float64.

    Clockwise from the top left: ``(0, 0)``, ``(W-1, 0)``, ``(W-1, H-1)``, ``(0, H-1)``.
    """
    width, height = ir_wh
    return np.array([[0.0, 0.0], [width - 1.0, 0.0], [width - 1.0, height - 1.0],
                     [0.0, height - 1.0]])


def map_points(matrix, points):
    """Map ``(N, 2)`` pixel points through a ``(3, 3)`` homography; ``(N, 2)`` float64."""
    points = np.asarray(points, np.float64)
    x, y = _apply_h(np.asarray(matrix, np.float64), points[:, 0], points[:, 1])
    return np.stack((x, y), axis=1)


def _yaml_float(value):
    """Format a float so every YAML parser reads a float (always a '.' in the mantissa)."""
    text = repr(float(value))
    mantissa, _, exponent = text.partition('e')
    if '.' not in mantissa:
        mantissa += '.0'
    return mantissa + ('e' + exponent if exponent else '')


def write_prior_yaml(path, prior, comments=(), infrared_time_offset_s=None):
    """Write a node parameters file holding the prior (``/**: ros__parameters: registration``).

    The file can be passed as it is to the node (``--params-file``) or the launch file
    (``prior_file:=``), or pasted into ``config/tarfuse.yaml``.

    Args:
        path: output file (written beside it and moved into place: an interrupted write
            leaves the file that was there).
        prior: :class:`RegistrationPrior`.
        comments: lines written as ``#`` comments at the top (provenance, residuals).
        infrared_time_offset_s: also set ``sync.infrared_time_offset`` (s) when not None.

    """
    rows = [', '.join(_yaml_float(v) for v in row) for row in prior.homography]
    lines = [f'# {line}' for line in comments]
    lines += [
        '/**:',
        '  ros__parameters:',
        '    registration:',
        '      # 3x3 homography, row-major, IR pixels -> visible pixels.',
        '      prior: [' + (',\n              ').join(rows) + ']',
        '      # [width, height] of the IR and visible images the prior was made for.',
        f'      prior_ir_size: [{prior.ir_size[0]}, {prior.ir_size[1]}]',
        f'      prior_visible_size: [{prior.visible_size[0]}, {prior.visible_size[1]}]',
    ]
    if infrared_time_offset_s is not None:
        lines += ['    sync:',
                  '      # s added to every IR stamp before pairing (tarfuse-time-offset).',
                  f'      infrared_time_offset: {_yaml_float(float(infrared_time_offset_s))}']
    write_text_atomic(Path(path), '\n'.join(lines) + '\n')  # a Ctrl-C leaves no half file


def load_prior_yaml(path):
    """Read the prior from a node parameters file (as :func:`write_prior_yaml` writes it).

    Accepts ``registration: {prior: ...}`` nested or ``registration.prior`` dotted keys under
    any node's ``ros__parameters``; integers in the homography (a hand-edited ``1`` for
    ``1.0``) and exponents without a dot (``3e-5``) are read as floats, as the node reads them.

    Returns:
        :class:`RegistrationPrior`, or None when the file sets no (or an empty) prior.

    Raises:
        ValueError: unreadable file, or an invalid prior (the message names the parameter).

    """
    import yaml

    class Loader(yaml.SafeLoader):
        """PyYAML's safe loader reading ``3e-5`` as a float, as rcl reads the file."""

    # YAML 1.1 (PyYAML) wants a dot in a float's mantissa: 3e-5 was the string '3e-5', and a
    # prior the node takes was refused here.
    Loader.add_implicit_resolver('tag:yaml.org,2002:float', re.compile(
        r'^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$'), list('-+0123456789.'))
    try:
        document = yaml.load(Path(path).read_text(), Loader=Loader)  # noqa: S506 - safe
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f'cannot read the prior file {str(path)!r}: {error}') from None
    if not isinstance(document, dict):
        raise ValueError(f'{str(path)!r} is not a node parameters file (/**: ros__parameters:)')
    for node in document.values():
        params = node.get('ros__parameters') if isinstance(node, dict) else None
        if not isinstance(params, dict):
            continue
        flat = dict(params)
        nested = params.get('registration')
        if isinstance(nested, dict):
            flat.update({f'registration.{key}': value for key, value in nested.items()})
        if PARAMETER_NAMES[0] in flat:
            return make_prior(flat.get(PARAMETER_NAMES[0]), flat.get(PARAMETER_NAMES[1], ()),
                              flat.get(PARAMETER_NAMES[2], ()))
    return None

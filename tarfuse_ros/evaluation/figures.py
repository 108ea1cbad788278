"""Per-pair figures of an evaluation: panel grids and checkerboards (PNG, OpenCV)."""

import cv2
import numpy as np
from tarfuse_ros.core.drawing import as_bgr8, draw_detections

__all__ = ['DRAW_THRESHOLD', 'checkerboard', 'save_pair_figure', 'save_pair_figures']

DRAW_THRESHOLD = 0.25


def checkerboard(a, b, tiles=8):
    """Return two same-size images interleaved in a checkerboard of about ``tiles`` cells."""
    a, b = as_bgr8(a), as_bgr8(b)
    height, width = a.shape[:2]
    cell = max(4, min(height, width) // tiles)
    ys, xs = np.mgrid[0:height, 0:width]
    mask = ((ys // cell + xs // cell) % 2).astype(bool)
    out = a.copy()
    out[mask] = b[mask]
    return out


def _tile(img, title, width):
    img = as_bgr8(img)
    height = max(1, round(img.shape[0] * width / img.shape[1]))
    img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    band = np.zeros((18, width, 3), np.uint8)
    cv2.putText(band, title, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1,
                cv2.LINE_AA)
    return np.vstack([band, img])


def save_pair_figure(path, panels, tile_width=320, columns=3):
    """Write a grid of titled panels ``[(title, image), ...]`` as PNG.

    Raises:
        ValueError: the file cannot be written.

    """
    tiles = [_tile(img, title, tile_width) for title, img in panels]
    height = max(t.shape[0] for t in tiles)
    tiles = [np.vstack([t, np.zeros((height - t.shape[0], tile_width, 3), np.uint8)])
             for t in tiles]
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    if not cv2.imwrite(str(path), np.vstack(rows)):
        raise ValueError(f'cannot write figure {str(path)!r}')


def save_pair_figures(folder, stem, case, result, ecc_registered, truth):
    """Write ``<stem>_grid.png`` and ``<stem>_checkerboard.png`` of one evaluated pair.

    Args:
        folder: the figures folder.
        stem: pair stem.
        case: the pair (:class:`tarfuse_ros.evaluation.protocol.Case`).
        result: the model's :class:`~tarfuse_ros.core.engine.FusionResult`.
        ecc_registered: the ECC baseline's registered IR.
        truth: ground-truth boxes ``(M, 5)`` in pixels, or None.

    """
    vi_y = case.vi_y
    panels = [('IR as given (deformed)', case.deformed), ('visible', case.vi),
              ('registered IR', result.registered_ir), ('fused', result.fused),
              ('detections / labels (red)',
               draw_detections(result.fused, result.detections, truth, DRAW_THRESHOLD)),
              ('checkerboard visible / registered IR', checkerboard(vi_y, result.registered_ir))]
    save_pair_figure(folder / f'{stem}_grid.png', panels)
    save_pair_figure(folder / f'{stem}_checkerboard.png', [
        ('visible / IR as given', checkerboard(vi_y, case.deformed)),
        ('visible / registered IR', checkerboard(vi_y, result.registered_ir)),
        ('visible / ECC-registered IR', checkerboard(vi_y, ecc_registered))],
        tile_width=max(320, min(640, vi_y.shape[1])))

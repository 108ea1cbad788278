"""Scores of one method on one pair: fusion metrics and registration figures."""

import cv2
from tarfuse_ros.core import metrics
from tarfuse_ros.evaluation.inputs import covered

__all__ = ['REFERENCE_FREE_FUSION', 'fusion_scores', 'luma', 'registration_scores']

# Fusion metrics computed from the fused image alone (valid without an aligned IR).
REFERENCE_FREE_FUSION = ('EN', 'SD', 'SF', 'AG')


def luma(image):
    """Return the 8-bit BT.601 luma of a grey or BGR uint8 image, as the engine computes it."""
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def fusion_scores(fused_y, ir_reference, vi_y):
    """Fusion metrics against the aligned IR; only the reference-free ones without it.

    Args:
        fused_y: fused luma (uint8 or float in [0, 1]).
        ir_reference: the aligned IR in [0, 1], or None (no aligned IR: the metrics that
            compare with the IR are None).
        vi_y: visible luma in [0, 1].

    """
    if ir_reference is not None:
        return metrics.fusion_metrics(fused_y, ir_reference, vi_y)
    everything = dict.fromkeys(metrics.FUSION_METRICS)
    everything.update({'EN': metrics.entropy(fused_y), 'SD': metrics.sd(fused_y),
                       'SF': metrics.sf(fused_y), 'AG': metrics.ag(fused_y)})
    return everything


def registration_scores(case, registered, flow_px):
    """Registration figures of one method on one pair (None where not computable).

    ``MSE``, ``NCC`` (against the aligned IR) and ``EPE`` (against the reference flow) where
    the pair has an aligned IR; ``edge_alignment`` with the visible luma over the pixels the
    registered IR covers; ``landmark_error_px`` where the pair has landmarks.
    """
    if case.ir_unit is not None:
        out = metrics.registration_metrics(registered, case.ir_unit, flow_px, case.flow_ref)
    else:
        out = {'MSE': None, 'NCC': None, 'EPE': None}
    out['edge_alignment'] = metrics.edge_alignment(
        registered, case.vi_y_unit, covered(flow_px, case.content))
    out['landmark_error_px'] = (metrics.landmark_error(flow_px, *case.landmarks)
                                if case.landmarks is not None else None)
    return out

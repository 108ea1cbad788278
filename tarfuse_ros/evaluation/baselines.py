"""The baselines an evaluation scores beside the model, on the same inputs.

- ``unregistered_average`` / ``unregistered_max``: naive fusion of the deformed IR and the
  visible luma (their registration is the unregistered input's);
- ``ecc_average``: OpenCV ECC (affine, on gradient magnitudes), then averaging; its flow is
  scored like the model's;
- ``model_zero_flow``: our network with the flow forced to zero by a forward hook on
  ``model.registration`` (the registration ablation);
- ``visible_only`` / ``ir_only``: our network with the IR (resp. visible) input blanked, for
  detection; ``ir_only`` gets the ALIGNED IR (with a blank visible image there is nothing to
  register to: the generous choice for that baseline).
"""

from tarfuse_ros.core import baselines
from tarfuse_ros.evaluation.scoring import fusion_scores, luma, registration_scores
import torch

__all__ = ['BASELINES', 'ZeroFlow', 'score_baselines']

BASELINES = ('unregistered_average', 'unregistered_max', 'ecc_average', 'model_zero_flow',
             'visible_only', 'ir_only')


class ZeroFlow:
    """Context manager forcing ``model.registration``'s output (the flow) to zeros."""

    def __init__(self, model):
        self.model = model
        self.handle = None

    def __enter__(self):
        self.handle = self.model.registration.register_forward_hook(
            lambda module, inputs, output: torch.zeros_like(output))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def score_baselines(case, unregistered, zero_engine):
    """Score the fusion and registration baselines on one pair.

    Args:
        case: the pair (:class:`tarfuse_ros.evaluation.protocol.Case`).
        unregistered: the unregistered input's registration figures.
        zero_engine: a :class:`~tarfuse_ros.core.engine.FusionEngine` without CUDA graphs
            (the zero-flow hook must run).

    Returns:
        ``(scores, ecc, zero_result, fused)``: ``{name: {'fusion': ..., 'registration': ...}}``
        for the baselines that fuse, the ECC result, the zero-flow model's result (its
        detections are the ``model_zero_flow`` detection baseline) and ``{name: fused luma}``
        (H, W) of the baselines that fuse (float in [0, 1] or uint8), for the target contrast.

    """
    ir, vi_y = case.ir_unit, case.vi_y_unit
    scores, fused = {}, {}
    for name, fuse in (('unregistered_average', baselines.average_fusion),
                       ('unregistered_max', baselines.max_fusion)):
        fused[name] = fuse(case.deformed_unit, vi_y)
        scores[name] = {'fusion': fusion_scores(fused[name], ir, vi_y),
                        'registration': unregistered}
    ecc = baselines.ecc_register(case.deformed_unit, vi_y)
    fused['ecc_average'] = baselines.average_fusion(ecc.registered, vi_y)
    scores['ecc_average'] = {
        'fusion': fusion_scores(fused['ecc_average'], ir, vi_y),
        'registration': registration_scores(case, ecc.registered, ecc.flow_px)}
    with ZeroFlow(zero_engine.model):
        zero = zero_engine.infer(case.deformed, case.vi)
    fused['model_zero_flow'] = luma(zero.fused)
    scores['model_zero_flow'] = {
        'fusion': fusion_scores(fused['model_zero_flow'], ir, vi_y),
        'registration': registration_scores(case, zero.registered_ir, zero.flow_px)}
    return scores, ecc, zero, fused

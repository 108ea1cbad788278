"""The settings of one evaluation (:class:`EvalOptions`)."""

from dataclasses import dataclass

from tarfuse_ros.core.fine_passes import check_fine_passes, OPTION_OWN
from tarfuse_ros.core.sizes import check_input_max_long_side

__all__ = ['DEFORM_MODES', 'EvalOptions', 'STORED_IR_MODES']

DEFORM_MODES = ('auto', 'none', 'synthetic', 'dataset')
STORED_IR_MODES = ('auto', 'aligned', 'unregistered')


@dataclass(frozen=True)
class EvalOptions:
    """How to evaluate (the protocol is in :mod:`tarfuse_ros.evaluation.protocol`).

    Attributes:
        split: split name or list file (``'all'`` for every pair).
        deform: one of :data:`DEFORM_MODES`: the data set's ground-truth field where the pair
            has one (``'auto'``), ``'dataset'`` only, seeded ``'synthetic'``, or ``'none'``.
        seed: base seed of synthetic deformations.
        device: ``cpu``, ``cuda``, ``cuda:N``.
        max_pairs: evaluate only the first N pairs of the split (None: all).
        max_side: downscale pairs so the longer side is at most this many pixels (None: native).
        labels_dir: label sub-folder (``labels``, or e.g. ``labels_vi``).
        figures: number of pairs that get figures.
        conf, iou: NMS thresholds (a low ``conf`` for AP, as COCO evaluation does).
        threads: torch CPU threads for the evaluation (None: unchanged); restored afterwards.
        progress: show a progress bar.
        stored_ir: one of :data:`STORED_IR_MODES`: ``'aligned'`` (the stored IR is registered to
            the visible image: the ground truth; an IR of another aspect ratio is refused),
            ``'unregistered'`` (it is not: no aligned-IR metrics; any sizes), ``'auto'``
            (unregistered when the set has ``landmarks/`` or is the shared
            ``cvc14_misaligned``, else aligned).
        teachers: COCO teachers scored as reference rows on the labelled pairs: ``'yolov8n'``,
            ``'yolox'`` (from ``shared/teachers``) or ``.onnx`` paths (empty: none).
        prior: node parameters file holding a calibration prior (``registration.prior*``, as
            ``tarfuse-calibrate`` writes it) that the model (and its zero-flow ablation) runs
            with; None: no prior.
        input_max_long_side: the engines' ``input_max_long_side`` (the network runs frames
            shrunk to this longer side; metrics stay at the pairs' size); 0: never.
        fine_passes: the engines' ``fine_passes``: how many fine passes the global stage runs
            (0: none; None or -1: the checkpoint's own), to measure what fewer passes cost.

    Raises:
        ValueError: a value out of range, naming the command-line option.

    """

    split: str = 'test'
    deform: str = 'auto'
    seed: int = 0
    device: str = 'cpu'
    max_pairs: int = None
    max_side: int = None
    labels_dir: str = 'labels'
    figures: int = 8
    conf: float = 0.001
    iou: float = 0.6
    threads: int = None
    progress: bool = True
    stored_ir: str = 'auto'
    teachers: tuple = ()
    prior: str = None
    input_max_long_side: int = 0
    fine_passes: int = None

    def __post_init__(self):
        if self.deform not in DEFORM_MODES:
            raise ValueError(f'--deform must be one of {DEFORM_MODES}, got {self.deform!r}')
        if self.stored_ir not in STORED_IR_MODES:
            raise ValueError(
                f'--stored-ir must be one of {STORED_IR_MODES}, got {self.stored_ir!r}')
        if self.max_pairs is not None and int(self.max_pairs) < 1:
            raise ValueError(f'--max-pairs must be >= 1, got {self.max_pairs}')
        if self.max_side is not None and int(self.max_side) < 32:
            raise ValueError(f'--max-side must be >= 32, got {self.max_side}')
        for name, value in (('--conf', self.conf), ('--iou', self.iou)):
            if not 0.0 <= float(value) <= 1.0:  # NaN too; checked before the model loads
                raise ValueError(f'{name} must be a number in [0, 1], got {value}')
        check_input_max_long_side(self.input_max_long_side, '--input-max-long-side')
        if self.fine_passes == -1 and not isinstance(self.fine_passes, bool):
            object.__setattr__(self, 'fine_passes', None)  # as the tool's -1: the model's own
        check_fine_passes(self.fine_passes, '--fine-passes', OPTION_OWN)
        if int(self.figures) < 0:
            raise ValueError(f'--figures must be >= 0, got {self.figures}')
        if self.threads is not None and int(self.threads) < 1:
            raise ValueError(f'--threads must be >= 1, got {self.threads}')
        if isinstance(self.teachers, str):
            raise ValueError(f'teachers must be a sequence of names or paths, got '
                             f'{self.teachers!r}')
        object.__setattr__(self, 'teachers', tuple(str(t) for t in self.teachers))

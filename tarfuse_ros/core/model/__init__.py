"""The TarFuse network: feature extractors, registration, warping, fusion and detection heads."""

from tarfuse_ros.core.model.encoders import ConvBNAct, FeatureExtractor
from tarfuse_ros.core.model.heads import DetectionNeck, ReconstructionHead
from tarfuse_ros.core.model.registration import CSEB, MSRB, RegistrationNet
from tarfuse_ros.core.model.tarfuse import (build_model, parameter_counts, SIZE_MULTIPLE,
                                            TarFuse, TarFuseConfig)
from tarfuse_ros.core.model.warp import identity_grid, resize_flow, Warp, warp
from tarfuse_ros.core.model.yolo import build_detect, LegacyDetect

__all__ = [
    'CSEB', 'ConvBNAct', 'DetectionNeck', 'FeatureExtractor', 'LegacyDetect', 'MSRB',
    'ReconstructionHead', 'RegistrationNet', 'SIZE_MULTIPLE', 'TarFuse', 'TarFuseConfig', 'Warp',
    'build_detect', 'build_model', 'identity_grid', 'parameter_counts', 'resize_flow', 'warp',
]

"""The TarFuse network: feature extractors, registration, warping, fusion and detection heads."""

from tarfuse_ros.core.model.warp import identity_grid, resize_flow, Warp, warp

__all__ = ['Warp', 'identity_grid', 'resize_flow', 'warp']

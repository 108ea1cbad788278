"""Where the package finds its shipped files and the shared data sets."""

import os
from pathlib import Path
import sys

PACKAGE_NAME = 'tarfuse_ros'
DEFAULT_WEIGHTS_NAME = 'tarfuse_default.safetensors'

_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def share_dir():
    """Return the package's share directory, or the source tree when running from it."""
    if (_SOURCE_ROOT / 'package.xml').is_file() and (_SOURCE_ROOT / 'models').is_dir():
        return _SOURCE_ROOT
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(PACKAGE_NAME))
    except Exception:  # noqa: BLE001 - ament_index absent or package not indexed
        pass
    candidate = Path(sys.prefix) / 'share' / PACKAGE_NAME
    return candidate if candidate.is_dir() else _SOURCE_ROOT


def default_weights_path():
    """Return the path of the shipped default weights (it may not exist in a bare checkout)."""
    return share_dir() / 'models' / DEFAULT_WEIGHTS_NAME


def config_path(name):
    """Return the path of a shipped configuration file such as ``tarfuse.yaml``."""
    return share_dir() / 'config' / name


def _shared_candidates():
    env = os.environ.get('TARFUSE_SHARED')
    return ([Path(env)] if env else []) + [_SOURCE_ROOT.parent / 'shared']


def shared_datasets_dir():
    """Return ``shared/datasets`` (``$TARFUSE_SHARED`` or ``../shared`` beside the checkout)."""
    for base in _shared_candidates():
        datasets = base / 'datasets' if (base / 'datasets').is_dir() else base
        if (datasets / 'README.md').is_file() and (datasets / 'roadscene').is_dir():
            return datasets
    return None


def shared_datasets_missing():
    """Return where the shared data sets were looked for, for a message where none was found."""
    env = os.environ.get('TARFUSE_SHARED')
    places = [f'TARFUSE_SHARED={env}' if env else 'TARFUSE_SHARED (not set)',
              f'{_SOURCE_ROOT.parent / "shared"} (beside the checkout)']
    return (f'no shared data sets in {" nor ".join(places)}: set TARFUSE_SHARED to the folder '
            f'that holds datasets/ (with its README.md and roadscene/)')

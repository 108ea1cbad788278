"""Import one of the project's stand-ins (tools/ros_env/shims) for its tests, or skip them."""

import importlib
from pathlib import Path
import sys

import pytest

SHIMS = Path(__file__).resolve().parents[2] / 'tools' / 'ros_env' / 'shims'


def import_stand_in(name):
    """Return module ``name``; skip the calling test module if it is a distro package.

    Uses the installed stand-in, or the source tree when it is not installed yet.
    """
    try:
        module = importlib.import_module(name)
    except ImportError:
        sys.path.insert(0, str(SHIMS))
        module = importlib.import_module(name)
    if not getattr(module, '__tarfuse_shim__', False):
        pytest.skip(f'{name} is the distro package, not the tarfuse_ros stand-in',
                    allow_module_level=True)
    return module

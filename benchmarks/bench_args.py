"""Argument checks the benchmark scripts share: numbers, and outputs checked before any work.

A script that ran for minutes and then failed to write its ``--json`` file (a folder that does
not exist, one it may not write to) lost its figures; :func:`check_outputs` says so first.
"""

import argparse
import os
from pathlib import Path

from tarfuse_ros.core.files import output_problem

__all__ = ['check_outputs', 'non_negative_int', 'positive_int']


def positive_int(text):
    """Return ``text`` as an integer >= 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be an integer >= 1, got {text!r}')
    return value


def non_negative_int(text):
    """Return ``text`` as an integer >= 0 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be an integer >= 0, got {text!r}')
    return value


def check_outputs(parser, **paths):
    """Exit through ``parser.error`` when an output file named by an option cannot be written.

    ``paths``: ``{option name without dashes: path or None}`` (None: not asked for), e.g.
    ``check_outputs(parser, json=args.json)``; underscores name dashes (``max_side``).
    """
    for name, path in paths.items():
        if path is None:
            continue
        path, parent = Path(path), Path(path).parent
        # The scripts write with open(), which creates no folder. A file that exists (one to
        # replace, /dev/stdout, /dev/fd/1) is opened as it is: its folder need not be
        # writable (a probe file there refused --json /dev/fd/1).
        if path.exists() and not path.is_dir():
            problem = None if os.access(path, os.W_OK) else f'{path} is not writable'
        elif not parent.is_dir():
            problem = f'folder {parent} does not exist'
        else:
            problem = output_problem(path)
        if problem is not None:
            parser.error(f'--{name.replace("_", "-")} {path}: {problem}')

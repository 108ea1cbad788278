"""
The process that passes a node's stderr on, but for the codec's warnings of its decodings.

:func:`tarfuse_ros.ros.conversions._decode_taking_codec_warnings` points the process's file
descriptor 2 at a pipe from its first call on and starts this script (by its path, ``python -I
-S stderr_relay.py READ STDERR RESULTS``) in a session of its own: it reads the pipe and writes
what comes to the stderr the node had (``STDERR``), in the order it was written, but the
codec's lines written between a decoding's marks (``[`` and ``]``), which it sends back on
``RESULTS``, one line per mark (``]``, or ``=`` of :func:`~tarfuse_ros.ros.conversions.
settle_stderr`): its number, then each warning after a tab. As a process of its own, it passes
on the node's last lines where the node dies at once (an abort, a segfault, ``os._exit``), as a
thread of the node could not; it ends when the pipe does (the node and every process it handed
its stderr to have ended), ignoring Ctrl-C and SIGTERM meanwhile. Only ``os``, ``re``,
``signal`` and ``sys``: it starts in some 20 ms.
"""

import os
import re
import signal
import sys

# The first words of libjpeg's warnings (jerror.h, JWRN_*: a damaged JPEG it decodes all the
# same) and of libpng's (a PNG with a flawed ancillary chunk, 'libpng warning: sRGB: invalid'),
# which they print on stderr.
JPEG_WARNINGS = (b'Corrupt JPEG data', b'Premature end of JPEG file',
                 b'Invalid SOS parameters', b'Inconsistent progression sequence',
                 b'Unknown Adobe color transform', b'Warning: unknown JFIF revision',
                 b'Application transferred too many')
CODEC_WARNINGS = JPEG_WARNINGS + (b'libpng warning: ',)
# libjpeg's warning at the end of a line that another thread had begun (a progress print):
# written in one piece ('%s\n'), it holds no ')', which the node's own line quoting it does.
GLUED_JPEG_WARNING = re.compile(
    b'(?:' + b'|'.join(re.escape(start) for start in JPEG_WARNINGS) + rb')[^\n)]*\n\Z')
# Written to the pipe around a decoding ('[' and ']') and by settle_stderr ('='), each with its
# number, in one write (atomic on a pipe); no log line holds NUL bytes.
MARK = re.compile(rb'\x00tarfuse stderr ([\[\]=]) (\d+)\x00')
MARK_START = b'\x00tarfuse stderr '


def mark(kind, number):
    """Return the bytes of mark ``kind`` (``b'['``, ``b']'`` or ``b'='``) number ``number``."""
    return MARK_START + kind + b' %d\x00' % number


def relay(read, stderr, results):
    """Pass what comes on fd ``read`` on to fd ``stderr`` until the pipe ends (see above)."""
    pending, window, found = b'', None, []
    while True:
        try:
            data = os.read(read, 65536)
        except InterruptedError:
            continue
        except OSError:
            data = b''
        if not data:
            break
        pending += data
        while True:
            match = MARK.search(pending)
            if match is None:
                break
            window = _take(window, pending[:match.start()], found, stderr, True)
            pending = pending[match.end():]
            kind, number = match.group(1), match.group(2)
            if kind == b'[':
                window, found = b'', []
                continue
            write_all(results, number + b''.join(b'\t' + line for line in found) + b'\n')
            window, found = None, []
        # The end of what came may be the start of a mark: held for the next read.
        held = pending.rfind(b'\x00', max(0, len(pending) - len(MARK_START) - 24))
        if held < 0 or not (MARK_START.startswith(pending[held:])
                            or pending[held:].startswith(MARK_START)):
            held = len(pending)
        window = _take(window, pending[:held], found, stderr, False)
        pending = pending[held:]
    _take(window, pending, found, stderr, True)


def _take(window, data, found, stderr, ends):
    """Pass ``data`` on; in a decoding's ``window``, its codec's warnings go to ``found``.

    Returns the window's part line still to be judged (None outside a window); ``ends``: the
    window ends after ``data``.
    """
    if window is None:
        write_all(stderr, data)
        return None
    lines = (window + data).splitlines(keepends=True)
    rest = b'' if ends or not lines or lines[-1].endswith(b'\n') else lines.pop()
    other = []
    for line in lines:
        glued = None if line.startswith(CODEC_WARNINGS) else GLUED_JPEG_WARNING.search(line)
        if glued is not None:
            other.append(line[:glued.start()])  # its line goes on in the next write
            line = line[glued.start():]
        if line.startswith(CODEC_WARNINGS):
            found.append(line.strip().replace(b'\t', b' '))
        else:
            other.append(line)
    write_all(stderr, b''.join(other))
    return rest


def write_all(fd, data):
    """Write all of ``data`` to ``fd``; a full disk or a closed pipe loses it, silently."""
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass  # a full disk, a closed pipe: lost there, as any other line written to it


def main(argv=None):
    argv = sys.argv if argv is None else argv
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(number, signal.SIG_IGN)  # ends with the pipe, after the node's last line
    read, stderr, results = (int(fd) for fd in argv[1:4])
    relay(read, stderr, results)
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""Files: outputs that a crash never leaves half-written under their name, and file digests.

:func:`output_problem` tells, before any slow work, why an output cannot be written.
"""

from contextlib import contextmanager
import fcntl
import hashlib
import os
from pathlib import Path
import re
import secrets
import shutil
import stat
import tempfile
import zipfile

__all__ = ['atomic_output', 'claim_folder', 'file_sha256', 'is_safetensors', 'is_torch_pickle',
           'is_truncated_jpeg', 'is_truncated_jpeg_data', 'lock_exclusive', 'looks_like_onnx',
           'other_node_parameters', 'output_problem', 'plain_zip_members', 'plain_zip_problem',
           'remove_stale_outputs', 'remove_stale_temporaries', 'remove_unclaimed',
           'write_text_atomic']


def file_sha256(path):
    """Return the hex sha256 of a file (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def is_torch_pickle(path):
    """Return whether ``path`` starts as a ``torch.save`` file does: a zip or a pickle.

    Reads the first 4 bytes only (never unpickles): a zip header (bytes 50 4B 03 04, PyTorch
    1.6 and later) or a pickle protocol marker (byte 0x80, then the protocol 2-5).
    """
    with open(path, 'rb') as handle:
        head = handle.read(4)
    return head == b'PK\x03\x04' or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def plain_zip_members(path):
    """Return the member names of a zip archive that ``torch.save`` did not write, else None.

    A ``torch.save`` zip holds a ``data.pkl``; any other zip (weights downloaded as an archive)
    is a folder to extract, not a checkpoint. Reads the archive's directory only.
    """
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return None
    return None if any(name.endswith('data.pkl') for name in names) else names


def plain_zip_problem(path, expected, suffix, shown=3):
    """Return why ``path`` is a zip archive to extract, not ``expected``; None if it is none.

    ``'<path> is a zip archive (holding a.onnx, b and 2 more), not an ONNX model: extract the
    .onnx file from it and pass that'`` for ``expected='an ONNX model'``, ``suffix='.onnx'``
    (:func:`plain_zip_members`: a ``torch.save`` zip is no such archive).
    """
    names = plain_zip_members(path)
    if names is None:
        return None
    more = f' and {len(names) - shown} more' if len(names) > shown else ''
    listing = ('holding ' + ', '.join(names[:shown]) + more) if names else 'empty'
    return (f'{path} is a zip archive ({listing}), not {expected}: extract the {suffix} file '
            f'from it and pass that')


def is_safetensors(path):
    """Return whether ``path`` starts as a safetensors file does.

    Reads the first 9 bytes only: the header's length (8 bytes, little-endian), smaller than
    the file, then the header's opening ``{``.
    """
    with open(path, 'rb') as handle:
        head = handle.read(9)
    return (len(head) == 9 and head[8:] == b'{'
            and int.from_bytes(head[:8], 'little') < os.path.getsize(path))


def is_truncated_jpeg(path):
    """Return whether ``path`` is a JPEG file cut short: no end marker after its image's scan.

    OpenCV decodes such a file (a copy or download that stopped) without an error, the missing
    rows grey, and libjpeg only prints 'Premature end of JPEG file', naming no file. Files of
    other formats are not read past their first 3 bytes. See :func:`is_truncated_jpeg_data`.
    """
    with open(path, 'rb') as handle:
        head = handle.read(3)
        if head != _JPEG_START:
            return False
        return is_truncated_jpeg_data(head + handle.read())


_JPEG_START = b'\xff\xd8\xff'
# Markers without a length field: TEM, RST0-RST7, SOI (JPEG, ITU-T T.81, table B.1).
_STANDALONE_MARKERS = {0x01, *range(0xd0, 0xd8), 0xd8}


def is_truncated_jpeg_data(data):
    """Return whether the bytes ``data`` of a file are a JPEG cut short.

    The marker segments are walked from the start (each gives its length; ITU-T T.81, B.1) to
    the image's first start of scan (SOS, FF DA), past the header segments an EXIF thumbnail,
    itself a small JPEG, sits in. The file is cut short when no end-of-image marker (FF D9)
    follows: it cannot occur inside scan data (an FF byte there is stuffed or a restart
    marker), and bytes after it (a Motion Photo's video) are not the image's. Bytes of other
    formats, and a JPEG cut before its first scan (which no decoder takes), give False.
    """
    if data[:3] != _JPEG_START:
        return False
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xff:
            return False  # not a marker where one must be: the decoder says what is wrong
        marker = data[position + 1]
        if marker == 0xff:  # fill byte before a marker
            position += 1
        elif marker in _STANDALONE_MARKERS:
            position += 2
        elif marker == 0xda:
            return data.find(b'\xff\xd9', position) < 0
        else:
            position += 2 + int.from_bytes(data[position + 2:position + 4], 'big')
    return False


# The tags (field << 3 | wire type) of ModelProto's fields 2 to 8 and 14 (producer name and
# version, domain, model version, doc string, graph, opset imports, metadata).
_ONNX_TAGS = (0x12, 0x1a, 0x22, 0x28, 0x32, 0x3a, 0x42, 0x72)


def looks_like_onnx(path):
    """Return whether ``path`` starts as a serialised ONNX model does (a heuristic).

    Reads the first 3 bytes only: ``onnx.save`` writes ModelProto's ``ir_version`` first
    (byte 0x08, then the version, 3 or later, in one byte), then one of its other fields.
    """
    with open(path, 'rb') as handle:
        head = handle.read(3)
    return len(head) == 3 and head[0] == 0x08 and 3 <= head[1] < 0x80 and head[2] in _ONNX_TAGS


def output_problem(path, folder=False):
    """Return why ``path`` cannot be written, or None when it can (a check before slow work).

    Missing parent folders are no problem when the nearest existing one is a folder this
    process can create a file in (:func:`atomic_output` and the tools create them); the check
    creates and removes one empty file there.

    Args:
        path: the file to write or, with ``folder=True``, the folder to fill (an existing
            folder is fine).
        folder: ``path`` is a folder.

    Returns:
        None, or the reason as part of a sentence (e.g. ``'/data is not writable'``).

    """
    path = Path(path)
    if path.is_dir() and not folder:
        return f'{path} is a folder, not a file'
    if folder and path.exists() and not path.is_dir():
        return f'{path} is a file, not a folder'
    existing = path if path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f'{existing} is a file, not a folder'
    # Create a file there rather than ask os.access: root passes os.access on folders no one
    # can write to (/proc, /sys).
    try:
        handle, probe = tempfile.mkstemp(prefix='.tarfuse_probe_', dir=existing)
    except OSError:
        return f'folder {existing} is not writable'
    os.close(handle)
    os.unlink(probe)
    return None


def _create_temporary(path, folder, suffix=''):
    """Create an empty file (or folder) beside ``path`` under a new name ending in ``suffix``.

    It is created as ``open()`` and ``mkdir`` create them, so its mode (returned) is 0o666 (a
    folder: 0o777) less the umask: the umask is read without setting it (``os.umask`` would
    change it for every thread meanwhile). Until the output is done its owner may write it
    (and fill the folder), as through the file that ``open()`` returns, also under a umask
    that takes that right away (0o222).

    It is made as ``<name>.<hex>.new``, claimed (an exclusive ``flock``), and only then given
    its ``<name>.<hex>.tmp<suffix>`` name: made under that name, a run's
    :func:`remove_stale_outputs` could find it unclaimed between its creation and the lock, and
    remove the output being written.

    Returns:
        ``(temporary, mode, claim)``: ``claim`` the descriptor holding the lock, to close when
        done (None where the file system has no ``flock``).

    """
    while True:
        token = secrets.token_hex(4)
        temporary = path.with_name(f'{path.name}.{token}.tmp{suffix}')
        made = path.with_name(f'{path.name}.{token}.new')
        try:
            if folder:
                made.mkdir(mode=0o777)
                claim = claim_folder(made)
            else:
                claim = lock_exclusive(os.open(made, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:  # a name taken already: draw another
            continue
        if os.path.lexists(temporary):  # the name taken already
            if claim is not None:
                os.close(claim)
            if folder:
                made.rmdir()
            else:
                made.unlink()
            continue
        mode = stat.S_IMODE(made.stat().st_mode)
        writable = mode | (stat.S_IRWXU if folder else stat.S_IRUSR | stat.S_IWUSR)
        if writable != mode:
            made.chmod(writable)
        made.rename(temporary)
        return temporary, mode, claim


@contextmanager
def atomic_output(path, folder=False, keep_suffix=False):
    """Yield a temporary path beside ``path``; move it to ``path`` when the block succeeds.

    Write the file (or, with ``folder=True``, fill the folder) at the yielded path. On success a
    file replaces ``path`` in one ``os.replace``; a folder replaces it by two renames (the old one
    is first moved to ``<name>.old``, then deleted). A link at ``path`` is replaced, not
    followed: its target is left as it is. On an exception the temporary is removed and ``path``
    is left as it was. The parent folder is created if needed.

    Modes are those ``open()`` and ``mkdir`` give, whatever the writer did (safetensors'
    ``save_file`` and ``tempfile`` make files only their owner can read): a new file gets 0o666
    and a new folder 0o777, less the umask (0o644 and 0o755 under the usual umask 0o022), so
    that other users (a ROS node run as a service or container user) can read the output. So do
    the files and folders inside a folder output. An output that replaces a file (a folder)
    keeps the mode of the one it replaces, as a file rewritten by ``open()`` does: a ``chmod``
    given to it stays.

    The temporary is ``<name>.<8 hex digits>.tmp`` beside ``path``, a new name for every
    writer (two processes writing one output at once each write their own; the last to finish
    leaves its whole file).

    Args:
        path: the final file or folder.
        folder: the output is a folder (e.g. a training state of several files).
        keep_suffix: the temporary's name ends in ``path``'s suffix too
            (``<name>.<hex>.tmp.mp4`` for ``<stem>.mp4``), for writers that pick the format by
            the name (OpenCV's ``VideoWriter``, ``cv2.imwrite``).

    Yields:
        :class:`pathlib.Path` of the temporary file (empty) or of the empty folder.

    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary is claimed while it is written: one no process claims was left by a writer
    # that was killed (remove_stale_outputs).
    temporary, mode, claim = _create_temporary(path, folder, path.suffix if keep_suffix else '')
    try:
        yield temporary
        if folder:
            for inner in temporary.rglob('*'):
                if not inner.is_symlink():
                    inner.chmod(mode if inner.is_dir() else mode & 0o666)
        if path.exists() and path.is_dir() == folder:
            mode = stat.S_IMODE(path.stat().st_mode)
        temporary.chmod(mode)
        if not folder:
            os.replace(temporary, path)
            return
        old = path.with_name(path.name + '.old')
        if os.path.lexists(path):  # a link too, even a dangling one: it is replaced
            _remove(old)
            path.rename(old)
        # Without ``path``, an ``old`` (a writer killed between the renames) is all there is
        # until the new one is in place (a training state is resumed from it).
        temporary.rename(path)
        _remove(old)
    finally:
        _remove(temporary)
        if claim is not None:
            os.close(claim)


def remove_stale_outputs(path):
    """Remove the temporary files (folders) of ``atomic_output(path)`` killed writers left.

    A writer killed while it wrote its file or filled its folder (SIGKILL, the machine off)
    leaves it beside ``path`` as ``<name>.<8 hex digits>.tmp`` (``.tmp<suffix>`` with
    ``keep_suffix``); a writer that is still running claims its own (:func:`atomic_output`),
    which stays, and so does anything of another name.
    """
    path = Path(path)
    pattern = re.compile(re.escape(path.name) + r'\.[0-9a-f]{8}\.tmp'
                         + f'(?:{re.escape(path.suffix)})?')
    if path.parent.is_dir():
        remove_unclaimed(found for found in path.parent.iterdir()
                         if pattern.fullmatch(found.name))


def remove_stale_temporaries(folder, suffixes):
    """Remove the temporary files of ``atomic_output`` killed writers left in ``folder``.

    For a tool that writes many outputs into one folder (one per image), where
    :func:`remove_stale_outputs` for each would list the folder once per file: the temporaries
    (``<name>.<8 hex digits>.tmp``) of the outputs whose name ends in one of ``suffixes``
    (``('.png',)``) that no live process claims are removed in one listing; a live writer's,
    and anything of another name, stay.
    """
    folder = Path(folder)
    pattern = re.compile('.+(?:' + '|'.join(re.escape(suffix) for suffix in suffixes)
                         + r')\.[0-9a-f]{8}\.tmp')
    if folder.is_dir():
        remove_unclaimed(found for found in folder.iterdir() if pattern.fullmatch(found.name))


def claim_folder(folder):
    """Return a descriptor of ``folder`` holding an exclusive ``flock`` on it, or None.

    Close it when the folder is done. None where another descriptor holds the lock (a live
    process's claim), the folder cannot be opened or its file system has no ``flock``.
    """
    try:
        return lock_exclusive(os.open(folder, os.O_RDONLY | os.O_DIRECTORY))
    except OSError:
        return None


def lock_exclusive(descriptor, wait=False, no_flock=None):
    """Return ``descriptor`` once it holds an exclusive ``flock``; None where there is no flock.

    The lock lasts until the descriptor is closed (by the caller) or the process ends, however
    it ends. On a file system that cannot lock files (``flock`` fails with another error than
    "held", e.g. ENOLCK or EBADF on some network and overlay mounts) the descriptor is closed
    and None returned: the caller goes on without the lock, and ``no_flock`` (if given) is
    called with the reason (the error's text) to say what that costs.

    Args:
        descriptor: an open descriptor of the file or folder to lock; closed where this
            returns None or raises.
        wait: wait while another process holds the lock, instead of raising.
        no_flock: called with the reason where the file system cannot lock files.

    Raises:
        BlockingIOError: another open file (of this or another process) holds the lock, and
            ``wait`` is False.

    """
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError as exc:
        os.close(descriptor)
        if isinstance(exc, BlockingIOError):  # held
            raise
        if no_flock is not None:
            no_flock(exc.strerror or str(exc))
        return None
    except BaseException:  # an interrupt while it waits
        os.close(descriptor)
        raise
    return descriptor


def remove_unclaimed(paths):
    """Remove those of ``paths`` (temporary files or folders) that no live process claims.

    Links are left as they are.
    """
    for path in paths:
        path = Path(path)
        if path.is_symlink() or not (path.is_dir() or path.is_file()):
            continue
        try:
            claim = lock_exclusive(os.open(path, os.O_RDONLY))
        except OSError:  # held by a live process, or not to be opened
            continue
        if claim is not None:
            try:
                _remove(path)
            finally:
                os.close(claim)


def _remove(path):
    """Remove ``path`` if it is there: a file or a link (never its target), or a folder.

    The folders of a folder get their owner's rights back first (a umask of 0o222, or a
    ``chmod``, can leave them read-only), so that what they hold can be removed.
    """
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        try:
            path.unlink()
        except OSError:  # not this user's to remove: left, as rmtree leaves such files
            pass
        return
    folders = [path]
    while folders:  # top down: a folder is writable before its own folders are listed
        folder = folders.pop()
        try:
            folder.chmod(stat.S_IMODE(folder.stat().st_mode) | stat.S_IRWXU)
            folders += [inner for inner in folder.iterdir()
                        if inner.is_dir() and not inner.is_symlink()]
        except OSError:  # not this user's: rmtree below removes what it can
            pass
    shutil.rmtree(path, ignore_errors=True)


def write_text_atomic(path, text):
    """Write ``text`` (UTF-8) to the file ``path`` whole or not at all (:func:`atomic_output`).

    An interrupted or failed write leaves ``path`` as it was; the file's mode is that of
    :func:`atomic_output` (0o644 under the usual umask 0o022).
    """
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding='utf-8')


def other_node_parameters(path, own):
    """Return the node parameters an existing parameters file sets beyond ``own`` (dotted).

    A tool that writes a small parameters file (``tarfuse-calibrate``'s prior,
    ``tarfuse-time-offset``'s offset) replaces the whole file: given a full parameters file
    (``config/tarfuse.yaml``, or the prior file to add an offset to), every other parameter in
    it would be lost. Read with PyYAML's safe loader; the parameters of every
    ``ros__parameters`` section, nested keys joined by dots.

    Args:
        path: the output file about to be written.
        own: the dotted parameter names the tool writes.

    Returns:
        sorted list of the other names; empty when ``path`` does not exist, cannot be read or
        parsed, or is no parameters file (nothing of the node's to lose).

    """
    import yaml

    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    names = set()

    def parameters(node, prefix):
        for key, value in node.items():
            name = f'{prefix}{key}'
            if isinstance(value, dict):
                parameters(value, name + '.')
            else:
                names.add(name)

    def sections(node):
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            if key == 'ros__parameters':
                if isinstance(value, dict):
                    parameters(value, '')
            else:
                sections(value)

    sections(document)
    return sorted(names - set(own))

"""The pairs of a data set folder: image files by stem and split lists, without PyTorch.

The folder layout is described in :mod:`tarfuse_ros.core.data`, which gives these functions
too; tools that only list pairs (``tarfuse-make-bag``) import them from here and so do not load
PyTorch. ``ir_dir`` / ``vi_dir`` name other sub-folders than ``ir/`` and ``vi/`` (e.g.
``synthetic_misaligned/ir_warp`` for the deformed IR).
"""

import os
from pathlib import Path

__all__ = ['IMAGE_EXTENSIONS', 'MISALIGNED_DIR', 'dataset_folder', 'find_image', 'image_path',
           'list_split_names', 'misaligned_stems', 'pair_files', 'read_split', 'read_text_lines',
           'unpaired_notes', 'unpaired_stems']

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
MISALIGNED_DIR = 'synthetic_misaligned'


def read_text_lines(path):
    """Return the lines of a data set's text file (a list file, ``classes.txt``, a label file).

    The file is UTF-8; a byte-order mark (Windows Notepad's "UTF-8 with BOM") is dropped, so
    that it does not become part of the first stem, class name or class id.

    Raises:
        ValueError: the file is not UTF-8 text (e.g. UTF-16, Notepad's "Unicode"), naming it.

    """
    raw = Path(path).read_bytes()
    try:
        return raw.decode('utf-8-sig').splitlines()
    except UnicodeDecodeError as exc:
        kind = ' (it is UTF-16)' if raw[:2] in (b'\xff\xfe', b'\xfe\xff') else ''
        raise ValueError(f'{str(path)!r} is not UTF-8 text{kind}: byte {exc.start} is '
                         f'{raw[exc.start:exc.start + 1]!r}; save it as UTF-8') from None


def dataset_folder(dataset_dir, ir_dir='ir', vi_dir='vi'):
    """Return ``dataset_dir`` as a path; ``ValueError`` unless it holds both image folders."""
    path = Path(dataset_dir)
    if not path.is_dir():
        raise ValueError(f'data set folder {str(path)!r} does not exist')
    if not (path / ir_dir).is_dir() or not (path / vi_dir).is_dir():
        raise ValueError(
            f'data set folder {str(path)!r} must contain {ir_dir}/ and {vi_dir}/ sub-folders '
            f'(found: {sorted(p.name for p in path.iterdir())})')
    return path


_LISTINGS = {}  # folder -> {stem: path}; see _image_index


def _image_index(folder, fresh=False):
    """Map stem -> the paths of the images of that stem in ``folder`` (one, unless a mistake).

    Listings are kept per folder (loading a pair looks its files up); ``fresh`` lists the folder
    again. :func:`find_image` lists again before reporting a stem missing and :func:`read_split`
    lists both folders afresh, so a file added after a listing is always found.
    """
    index = None if fresh else _LISTINGS.get(folder)
    if index is None:
        index = {}
        for entry in os.scandir(folder):
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in IMAGE_EXTENSIONS and entry.is_file():
                index.setdefault(stem, []).append(entry.path)
        _LISTINGS[folder] = index
    return index


def find_image(folder, stem):
    """Return the path of ``stem`` in ``folder``, or None (listing the folder again first).

    Raises:
        ValueError: two images of the stem (``x.png`` and ``x.jpg``): which is the pair's?

    """
    index = _image_index(folder)
    if stem not in index:
        index = _image_index(folder, fresh=True)
    paths = sorted(index.get(stem, [None]))
    if len(paths) > 1:
        raise ValueError(
            f'{len(paths)} {Path(folder).name}/ images of stem {stem!r} in '
            f'{str(Path(folder).parent)!r}: {", ".join(Path(p).name for p in paths)}; keep the '
            f"pair's one")
    return paths[0]


def image_path(dataset_dir, modality, stem, listed=''):
    """Return the path of the image ``stem`` in the sub-folder ``modality`` (``'ir'``, ``'vi'``).

    ``listed``: where the stem comes from, added to the message of a missing image.

    Raises:
        ValueError: no image of the stem there, or two (:func:`find_image`).

    """
    path = find_image(str(Path(dataset_dir) / modality), stem)
    if path is None:
        raise ValueError(
            f'no {modality}/ image for stem {stem!r} in {str(dataset_dir)!r} '
            f'(extensions tried: {", ".join(IMAGE_EXTENSIONS)}){listed}')
    return path


def list_split_names(dataset_dir):
    """Return the split names a data set offers: ``<name>.txt`` list files, then ``'all'``.

    And ``'misaligned'`` where the set has ground-truth deformations (``synthetic_misaligned/``
    with ``list.txt`` or ``disp/``).
    """
    path = Path(dataset_dir)
    names = sorted(p.stem for p in path.glob('*.txt') if p.name != 'classes.txt')
    keywords = ['all'] + (['misaligned'] if _has_misaligned(path) else [])
    # An all.txt is listed once: 'all' names every pair (msrs_train's 'all' appeared twice).
    return [name for name in names if name not in keywords] + keywords


def _has_misaligned(path):
    """Return whether the set has ground-truth deformations (the split ``'misaligned'``)."""
    base = Path(path) / MISALIGNED_DIR
    return (base / 'list.txt').is_file() or (base / 'disp').is_dir()


def read_split(dataset_dir, split='all', unique=False, ir_dir='ir', vi_dir='vi'):
    """Return the stems of a split.

    Args:
        dataset_dir: data set folder (layout in :mod:`tarfuse_ros.core.data`).
        split: a list-file name without extension (``'train'``, ``'test'``, ``'det_labelled'``),
            ``'misaligned'`` (the stems of ``synthetic_misaligned/list.txt`` or ``disp/``;
            where the set has neither, its list file ``misaligned.txt``, else refused),
            ``'all'`` (every stem that has both an IR and a visible image), or a path to a
            list file (absolute, or relative to the working directory or to the data set
            folder).
        unique: refuse a list file that names a stem twice (its pair would count twice).
        ir_dir: the IR sub-folder.
        vi_dir: the visible sub-folder.

    Returns:
        list of stems in file order (``'all'``: sorted). Blank lines and ``#`` comments are
        skipped.

    Raises:
        ValueError: unknown split, a listed stem without its IR/visible image, a stem with two
            image files in ``ir/`` or ``vi/`` (``x.png`` and ``x.jpg``), or (``unique``) a stem
            listed twice, naming the file, the stem and both lines.

    """
    path = dataset_folder(dataset_dir, ir_dir, vi_dir)
    # Listed afresh: an image added or removed since an earlier listing counts.
    ir = _image_index(str(path / ir_dir), fresh=True)
    vi = _image_index(str(path / vi_dir), fresh=True)
    if split == 'all':
        return _checked(path, sorted(set(ir) & set(vi)), ir_dir, vi_dir)
    if split == 'misaligned' and _has_misaligned(path):
        return misaligned_stems(path)
    split_str = str(split)
    candidates = [Path(split_str)] if os.path.sep in split_str or split_str.endswith('.txt') \
        else []
    # Then a file of the working directory named without a folder or .txt (stems.lst).
    candidates += [path / split_str, path / f'{split_str}.txt', Path(split_str)]
    list_file = next((c for c in candidates if c.is_file()), None)
    # A path, or a folder of the set (a bare name in the working directory is no split's:
    # run from this repository, --split test would name its test/ folder).
    folder = next((c for c in candidates[:-1] if c.is_dir()), None)
    if list_file is None and folder is not None:  # said to be 'not found'
        raise ValueError(f'split {split_str!r}: {str(folder)!r} is a folder, not a list file: '
                         f'give a list file (one stem a line) or a split of '
                         f'{str(path)!r}: {", ".join(list_split_names(path))}')
    if list_file is None and split == 'misaligned':  # not an empty split: none to read
        raise ValueError(
            f"split 'misaligned' not found in {str(path)!r}: it needs {MISALIGNED_DIR}/"
            f'list.txt or {MISALIGNED_DIR}/disp/; available: {list_split_names(path)} or '
            f'a path to a list file')
    if list_file is None:
        raise ValueError(
            f'split {split_str!r} not found in {str(path)!r}; available: '
            f'{list_split_names(path)} or a path to a list file')
    stems, first_line = [], {}
    for number, stem in _listed(list_file):
        if unique and stem in first_line:
            raise ValueError(f'split file {str(list_file)!r} lists {stem!r} twice (lines '
                             f'{first_line[stem]} and {number}): its pair would count twice; '
                             f'remove one of the lines')
        first_line.setdefault(stem, number)
        stems.append(stem)
    return _checked(path, stems, ir_dir, vi_dir, {
        stem: f', listed in {str(list_file)!r} line {number}'
        for stem, number in first_line.items()})


def _listed(list_file):
    """Return ``[(line number, stem)]`` of a list file.

    Blank lines and ``#`` comments are skipped; an image name (``x.png``) stands for its stem.
    """
    listed = []
    for number, line in enumerate(read_text_lines(list_file), start=1):
        line = line.split('#', 1)[0].strip()
        if line:
            listed.append((number, Path(line).stem if Path(line).suffix.lower()
                           in IMAGE_EXTENSIONS else line))
    return listed


def _checked(dataset_dir, stems, ir_dir, vi_dir, listed=None):
    """Return ``stems`` once each has one IR and one visible image (``ValueError`` if not).

    ``listed``: optional ``{stem: where it is listed}``, added to the message of a missing image.
    """
    for stem in stems:
        where = (listed or {}).get(stem, '')
        image_path(dataset_dir, ir_dir, stem, where)
        image_path(dataset_dir, vi_dir, stem, where)
    return stems


def unpaired_stems(dataset_dir, ir_dir='ir', vi_dir='vi'):
    """Return the stems that have an image in only one of the IR and visible folders.

    They are what split ``'all'`` of :func:`read_split` leaves out.

    Returns:
        ``(ir_only, vi_only)``: two sorted lists of stems.

    Raises:
        ValueError: not a data set folder (no IR or visible folder).

    """
    path = dataset_folder(dataset_dir, ir_dir, vi_dir)
    ir = set(_image_index(str(path / ir_dir), fresh=True))
    vi = set(_image_index(str(path / vi_dir), fresh=True))
    return sorted(ir - vi), sorted(vi - ir)


def unpaired_notes(dataset_dir, shown=5):
    """Return one phrase per image folder of ``dataset_dir`` with :func:`unpaired_stems`.

    ``'left out 2 IR images without a visible image of the same stem: a, b'`` (the first
    ``shown`` stems, then how many more): what split ``'all'`` leaves out, for a warning.
    """
    notes = []
    for only, name, other in zip(unpaired_stems(dataset_dir), ('IR', 'visible'),
                                 ('a visible', 'an IR')):
        if only:
            more = f', ... ({len(only) - shown} more)' if len(only) > shown else ''
            notes.append(f'left out {len(only)} {name} image{"s" if len(only) > 1 else ""} '
                         f'without {other} image of the same stem: '
                         f'{", ".join(only[:shown])}{more}')
    return notes


def pair_files(dataset_dir, stem):
    """Return the ``(ir, vi)`` image paths of one pair (``ValueError`` when one is missing)."""
    path = dataset_folder(dataset_dir)
    return image_path(path, 'ir', stem), image_path(path, 'vi', stem)


def misaligned_stems(dataset_dir):
    """Return the stems that have a ground-truth deformation (``synthetic_misaligned/disp``).

    ``synthetic_misaligned/list.txt``, if there, lists them as a split's list file does (``#``
    comments, image names).
    """
    base = Path(dataset_dir) / MISALIGNED_DIR
    list_file = base / 'list.txt'
    if list_file.is_file():
        return [stem for _, stem in _listed(list_file)]
    if (base / 'disp').is_dir():
        return sorted(p.stem for p in (base / 'disp').glob('*.npz'))
    return []

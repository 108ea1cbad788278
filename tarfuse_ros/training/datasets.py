"""Where training and evaluation data come from: locating data sets and building the data set.

One spec names the pairs of one data set folder: :class:`tarfuse_ros.core.data.DataSource`
(path, split, exclude, labels). This module finds the folders (:func:`resolve_dataset_dir`, also
used by ``tarfuse-eval``), turns config entries into sources with absolute paths
(:func:`resolve_sources`) and builds the :class:`~tarfuse_ros.core.data.PairedDataset` from them.
The data set takes the sources as they are, ``exclude`` included: nothing is written to disk.
"""

from pathlib import Path

from tarfuse_ros.core.data import (DataSource, label_file, PairedDataset, read_classes,
                                   read_split, unpaired_notes)
from tarfuse_ros.core.paths import share_dir, shared_datasets_dir, shared_datasets_missing

__all__ = ['build_dataset', 'check_class_map', 'check_no_test_pairs', 'count_labelled',
           'dropped_class_lines', 'parse_data_spec', 'pinned_sources', 'resolve_dataset_dir',
           'resolve_sources', 'unpaired_lines']

DEFAULT_LABELS = 'labels'
DATASET_LAYOUT = ('a data set folder holds ir/ and vi/ with the infrared and the visible image of '
                  'each pair under one file stem (ir/a.png, vi/a.png), and optionally labels/ '
                  'and list files of stems (test.txt)')


def parse_data_spec(spec, default_split='train'):
    """Turn ``PATH[:SPLIT]`` (the command-line form) into a :class:`DataSource`.

    Raises:
        ValueError: an empty path, or a colon without a split.

    """
    path, sep, split = str(spec).partition(':')
    if not path or (sep and not split):
        raise ValueError(f'data spec must be PATH or PATH:SPLIT, got {spec!r}')
    return DataSource(path, split or default_split)


def resolve_dataset_dir(path, root=None, root_option=None):
    """Find a data set folder and return its absolute path.

    Args:
        path: absolute, or relative to ``root``, to the working directory, or to the shared
            data sets (``$TARFUSE_SHARED/datasets`` or ``../shared/datasets``), tried in this
            order.
        root: optional base folder for relative paths.
        root_option: the setting that gives ``root`` (``'data.root'`` of a training config),
            named when a relative path is found nowhere; None where the user has none.

    Raises:
        ValueError: ``root`` is given but is no folder, the folder is found nowhere, or the
            path is a file.

    """
    if root and not Path(root).expanduser().is_dir():
        # A typo'd root was passed over: the working directory's or the shared set of that
        # name was trained on instead, without a word.
        raise ValueError(f'{root_option or "root"} {str(root)!r} is not a folder: give the '
                         f'folder that holds the data sets, or leave it out (null)')
    candidate = Path(path).expanduser()
    bases = []
    if not candidate.is_absolute():
        bases = [Path(root).expanduser()] if root else []
        bases.append(Path.cwd())
        shared = shared_datasets_dir()
        if shared is not None:
            bases.append(shared)
    tried = [base / candidate for base in bases] or [candidate]
    found = next((folder for folder in tried if folder.is_dir()), None)
    if found is not None:
        return found.resolve()
    file = next((folder for folder in tried if folder.exists()), None)
    if file is not None:
        raise ValueError(f'data set {str(file)!r} is a file, not a data set folder: '
                         f'{DATASET_LAYOUT}')
    if not bases:
        raise ValueError(f'data set folder {str(candidate)!r} does not exist')
    setting = f', or set {root_option} to the folder that holds it' if root_option else ''
    # Without shared data sets a set's name finds nothing: say where they were looked for.
    missing = f'; {shared_datasets_missing()}' if shared is None else ''
    raise ValueError(f'data set {str(path)!r} not found (looked in {[str(b) for b in bases]}); '
                     f'give the path of a data set folder (ir/ and vi/) or the name of a shared '
                     f'data set (TARFUSE_SHARED){setting}{missing}')


def resolve_sources(sources, root=None):
    """Return the sources with absolute folders, checking that each keeps some pairs.

    A ``split`` that names a list file relative to the working directory is made absolute, and
    so is a ``labels`` folder found relative to the working directory rather than inside the
    data set (e.g. pseudo-labels kept in this repository for a shared data set), so the sources
    read the same from any directory (and in the run's provenance).

    Args:
        sources: :class:`DataSource` objects or what :meth:`DataSource.parse` reads
            (``'PATH[:SPLIT]'`` strings are read by :func:`parse_data_spec`).
        root: base folder of relative paths (see :func:`resolve_dataset_dir`).

    Raises:
        ValueError: a folder not found, a bad entry, a stem listed twice in a split file, or
            no pair left after ``exclude``.

    """
    resolved = []
    for value in sources or ():
        source = parse_data_spec(value) if isinstance(value, str) else \
            DataSource.parse(value, default_split='train')
        folder = resolve_dataset_dir(source.path, root, root_option='data.root')
        split = source.split
        split_path = Path(split).expanduser()
        if not split_path.is_absolute():
            found = next((base / split_path for base in _repository_bases()
                          if (base / split_path).is_file()), None)
            if found is not None:
                split = str(found.resolve())
        # A label folder inside the data set, else one relative to the working directory or
        # the package (e.g. pseudo-labels kept in this repository for a shared data set).
        labels = Path(source.labels).expanduser()
        if not labels.is_absolute() and not (folder / labels).is_dir():
            labels = next(((base / labels).resolve() for base in _repository_bases()
                           if (base / labels).is_dir()), labels)
        if source.labels != DEFAULT_LABELS and not (folder / labels).is_dir():
            # The default folder may be absent (an unlabelled set); a named one must exist.
            raise ValueError(f'data source {str(folder)!r} split {source.split!r}: labels '
                             f'folder {source.labels!r} not found in {str(folder)!r}, the '
                             f'working directory or the package')
        if source.labels != DEFAULT_LABELS and not any(
                path.suffix == '.txt' and path.name != 'classes.txt'
                for path in (folder / labels).iterdir()):
            # A folder named by mistake (the set's ir/): every pair trained as unlabelled.
            raise ValueError(f'data source {str(folder)!r} split {source.split!r}: labels '
                             f'folder {source.labels!r} ({str(folder / labels)!r}) holds no '
                             f'label file (<stem>.txt): name the folder of its label files, or '
                             f'leave labels out')
        source = DataSource(folder, split, source.exclude, str(labels))
        # A stem listed twice would be trained (or validated) twice per epoch, unnoticed.
        listed = read_split(folder, split, unique=True)
        if not source.stems():
            why = (f'all {len(listed)} are in {", ".join(source.exclude)} (exclude)' if listed
                   else 'the split lists none' if split != 'all'
                   else 'no stem has an image in both ir/ and vi/')
            raise ValueError(f'data source {str(folder)!r} split {source.split!r}: no pair to '
                             f'use ({why})')
        resolved.append(source)
    return resolved


def pinned_sources(given, resolved, root=None):
    """Return a config's sources ``given`` with their data set folders made absolute.

    The absolute folders and list files are those of ``resolved`` (:func:`resolve_sources`).
    A run's saved config is read again on a resume, perhaps from another directory: a relative
    data set folder, list file or label folder found in this one was not found there (or
    another was: a shared set of that name). A shared data set's name is pinned too: looked up
    in the working directory first, it found a folder of that name there (other data, trained
    on without a word). So are list files and label folders found outside the data set, the
    package's too (``config/train.yaml``'s ``data/...`` files): looked up in the working
    directory first, a resume from one holding a ``data/...`` of that name read that one.
    Folders named under ``root``, and list files and label folders of the data set, stay as
    given.
    """
    pinned = []
    for value, source in zip(given, resolved):
        value = parse_data_spec(value) if isinstance(value, str) else \
            DataSource.parse(value, default_split='train')
        path, split, labels = value.path, value.split, value.labels
        relative = not Path(path).expanduser().is_absolute()
        under_root = root and (Path(root).expanduser() / path).is_dir()
        if relative and not under_root:
            path = str(source.path)
        # A list file or label folder found outside the data set (the working directory's, or
        # the package's data/...): the one used. Kept as given, a resume from a directory
        # holding a data/... of that name (another checkout) read that one, without a word.
        if not Path(split).expanduser().is_absolute() and Path(source.split).is_absolute():
            split = source.split
        if not Path(labels).expanduser().is_absolute() and Path(source.labels).is_absolute():
            labels = source.labels
        pinned.append(DataSource(path, split, value.exclude, labels))
    return tuple(pinned)


def check_no_test_pairs(sources):
    """Refuse training sources that hold pairs of a test split: the test sets are never trained on.

    A test split is the ``test.txt`` of the data set folder, or the ``test.txt`` beside the list
    file a source names as its split (``data/splits/harvard_mri_pet/``). ``exclude`` (e.g.
    ``exclude: [test]``) keeps its pairs out.

    Raises:
        ValueError: naming the source, the test list, how many of its pairs the source holds
            and the ``exclude`` that keeps them out.

    """
    for source in sources:
        tests = [Path(source.path) / 'test.txt']
        if Path(source.split).is_absolute():  # a list file by path: the test.txt beside it too
            tests.append(Path(source.split).parent / 'test.txt')
        for test in dict.fromkeys(test for test in tests if test.is_file()):
            listed = set(read_split(source.path, str(test)))
            held = [stem for stem in source.stems() if stem in listed]
            if held:
                name = 'test' if test == Path(source.path) / 'test.txt' else str(test)
                raise ValueError(
                    f'data source {source.path!r} split {source.split!r} holds {len(held)} '
                    f'test pairs of {str(test)!r} (e.g. {held[0]}): the test sets are never '
                    f'trained on; add exclude: [{name}] to the source or choose another split')


def unpaired_lines(sources, shown=5):
    """Return one line per folder of a split-``all`` source with images that lack a partner.

    Split ``all`` takes the stems that have both images; an IR image without its visible
    image (or the reverse) is left out of the run, and these lines say which (the first
    ``shown`` stems), as ``tarfuse-eval`` and ``tarfuse-calibrate`` do.
    """
    return [f'data source {str(source.path)!r} split all: {note}' for source in sources
            if source.split == 'all' for note in unpaired_notes(source.path, shown)]


def _repository_bases():
    """Folders a relative list file or label folder of a config is looked up in, in order.

    The working directory, then the package's share folder (the source tree when run from
    it), so the shipped ``config/train.yaml``'s ``data/...`` paths work from any directory.
    """
    return [Path.cwd(), share_dir()]


def check_class_map(sources, class_map):
    """Refuse class ids none of whose names a labelled data set lists (their boxes would go).

    A label file's class ids are mapped to names by its folder's (else its set's) ``classes.txt``
    (:func:`~tarfuse_ros.core.data.read_classes`) and the names to
    ``class_map`` ids (:class:`~tarfuse_ros.core.data.PairedDataset`); a map name that no set
    lists (e.g. ``pedestrian`` for ``person``) keeps none of its boxes, and the pairs would
    teach the detector that there is nothing there. Sets without labels or ``classes.txt``
    are not consulted; nothing is checked when none has them.

    Raises:
        ValueError: naming the ids' names and the names the sets list.

    """
    listed = set()
    for source in sources:
        names = read_classes(source.path, source.labels)
        if names and (Path(source.path) / source.labels).is_dir():
            listed.update(name.lower() for name in names)
    if not listed:
        return
    by_id = {}
    for name, class_id in class_map.items():
        by_id.setdefault(int(class_id), []).append(str(name).lower())
    missing = [names for _, names in sorted(by_id.items())
               if not any(name in listed for name in names)]
    if missing:
        raise ValueError(f'data.class_map: {", ".join("/".join(n) for n in missing)} is in no '
                         f'classes.txt of the labelled data sets (they list '
                         f'{", ".join(sorted(listed))}), so none of its boxes would be kept')


def build_dataset(sources, data_config, training, seed=0, min_long_side=0):
    """Create the :class:`PairedDataset` of a run.

    Args:
        sources: resolved sources (:func:`resolve_sources`).
        data_config: the run's :class:`~tarfuse_ros.training.config.DataConfig`.
        training: random crops and flips (``data.crop``, with ``data.context`` pixels of IR
            around them) when true; centre crops of ``data.val_crop`` (or whole frames for
            ``val_crop`` 0) otherwise.
        seed: base seed of the crops and flips.
        min_long_side: the model's ``input_min_long_side``: pairs with a shorter longer side
            are enlarged to it first, as the engines do at inference (0: never).

    Raises:
        ValueError: a malformed label file (:meth:`PairedDataset.check_labels`), or pairs
            whose IR and visible images differ in aspect ratio
            (:meth:`PairedDataset.check_sizes`).

    """
    crop = data_config.crop if training else data_config.eval_crop
    dataset = PairedDataset(
        list(sources), class_map=dict(data_config.class_map), crop_size=crop or None,
        augment=training, hflip_prob=data_config.hflip, vflip_prob=data_config.vflip, seed=seed,
        context=data_config.context if training and crop else 0,
        scale_range=data_config.scale_range if training else None,
        min_long_side=min_long_side,
        photometric=data_config.photometric if training else 0.0,
        mosaic=data_config.mosaic if training else 0.0)
    # A bad label file or a pair not aligned as stored stops the run before it starts, not in
    # a loader worker mid-epoch.
    dataset.check_labels()
    dataset.check_sizes()
    return dataset


def dropped_class_lines(train_set, val_set=None):
    """Return one line per data set whose boxes of classes absent from the class map are left out.

    Such boxes are not trained (their objects count as background); ``data.class_map`` is how
    they would be kept. The counts are those of :meth:`PairedDataset.check_labels`.
    """
    lines = []
    for name, dataset in (('training', train_set), ('validation', val_set)):
        dropped = dataset.dropped_classes if dataset is not None else {}
        if dropped:
            counts = ', '.join(f'{label} ({_boxes(count)})' for label, count in dropped.items())
            lines.append(f'data.class_map has no class {counts}: '
                         f'{_boxes(sum(dropped.values()), name)} left out (background for the '
                         f'detector; its classes: {", ".join(dataset.class_names)})')
    return lines


def _boxes(count, kind=''):
    """Return ``'1 box'``, ``'3 boxes'`` (``kind`` before the noun: ``'3 training boxes'``)."""
    return f'{count} {kind + " " if kind else ""}box{"es" if count != 1 else ""}'


def count_labelled(sources):
    """Return how many pairs of the sources have a label file."""
    return sum(1 for source in sources for stem in source.stems()
               if label_file(source.path, stem, source.labels).is_file())

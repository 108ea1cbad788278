"""Record (or replay) short seeded ``tarfuse-train`` runs: the losses the training must keep.

``python test/training/loss_fixture.py --write`` runs, with the code on ``PYTHONPATH``:

- ``colour`` and ``grey``: two epochs of a narrow network (the paper's registration, small
  widths) on a tiny data set cut from ``samples/`` (4 training pairs, 1 validation pair, whole
  224x480 frames), with the shipped ``config/train.yaml`` (every deformation and loss key);
- ``resume``: one epoch of the grey run whose training state is kept, so that a later version
  of the code can resume it;

and writes ``fixtures/losses.json`` (every epoch record of the log: loss parts, learning rate,
validation figures) and ``fixtures/state_epoch1/`` (the state after one epoch). The fixture of
this repository was recorded with the code of commit 598e2b9, the last one before
``tarfuse_ros.training`` existed; ``test_training_equality.py`` replays the runs with the current
code. A change that alters the numbers on purpose (a new architecture, another loss) records the
fixture again, with the commit it was recorded at, and says so.

To record with another checkout without touching the working tree::

    git archive 598e2b9 | tar -x -C /tmp/tarfuse_old
    PYTHONPATH=/tmp/tarfuse_old:$PYTHONPATH python test/training/loss_fixture.py --write \
        --commit 598e2b9
"""

import argparse
import json
from pathlib import Path
import shutil
import sys
import tempfile

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / 'fixtures'
LOSSES = FIXTURES / 'losses.json'
STATE = FIXTURES / 'state_epoch1'
FRAME_H, FRAME_W = 224, 480  # multiples of 32: validation runs on whole frames
TRAIN_STEMS = ('FLIR_00122', 'FLIR_00993', 'FLIR_04229', 'FLIR_04968')
VAL_STEMS = ('FLIR_05016',)
# A narrow network with the paper's registration (MSRB): the fixture guards the training
# machinery (data, crops, seeds, deformations, losses, schedule, state), not the matching
# registration, whose numbers change on purpose while it is developed (test_matching and
# test_model cover it).
NARROW = ('model={registration: paper, feature_channels: 4, cseb_channels: 8, '
          'msrb_channels: [8, 8, 16, 16], reconstruction_channels: [8, 4], '
          'neck_stem_channels: [8, 16], detect_channels: [16, 16, 16], reg_max: 4}')


def _crop_labels(lines, height, width):
    """Return YOLO label lines of boxes cut to the top-left ``FRAME_H x FRAME_W`` window."""
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) != 5:
            continue
        cls, cx, cy, w, h = int(parts[0]), *(float(v) for v in parts[1:])
        x1 = min(max((cx - w / 2) * width, 0.0), FRAME_W)
        x2 = min(max((cx + w / 2) * width, 0.0), FRAME_W)
        y1 = min(max((cy - h / 2) * height, 0.0), FRAME_H)
        y2 = min(max((cy + h / 2) * height, 0.0), FRAME_H)
        if x2 - x1 >= 2 and y2 - y1 >= 2:
            out.append(f'{cls} {(x1 + x2) / 2 / FRAME_W:.6f} {(y1 + y2) / 2 / FRAME_H:.6f} '
                       f'{(x2 - x1) / FRAME_W:.6f} {(y2 - y1) / FRAME_H:.6f}')
    return out


def make_dataset(folder, grey=False):
    """Write the tiny data set (``ir/``, ``vi/``, ``labels/``, ``train.txt``, ``val.txt``).

    Pairs are the top-left 224x480 windows of the five RoadScene pairs in ``samples/`` (exact
    crops, PNG, so every machine gets the same pixels); ``grey`` stores the visible images
    as grey (OpenCV's BT.601 luma). Returns the folder.
    """
    folder = Path(folder)
    samples = ROOT / 'samples'
    for sub in ('ir', 'vi', 'labels'):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(samples / 'labels' / 'classes.txt', folder / 'classes.txt')
    for stem in TRAIN_STEMS + VAL_STEMS:
        ir = cv2.imread(str(samples / 'ir' / f'{stem}.jpg'), cv2.IMREAD_GRAYSCALE)
        vi = cv2.imread(str(samples / 'vi' / f'{stem}.jpg'), cv2.IMREAD_COLOR)
        height, width = vi.shape[:2]
        vi = vi[:FRAME_H, :FRAME_W]
        if grey:
            vi = cv2.cvtColor(vi, cv2.COLOR_BGR2GRAY)
        cv2.imwrite(str(folder / 'ir' / f'{stem}.png'), ir[:FRAME_H, :FRAME_W])
        cv2.imwrite(str(folder / 'vi' / f'{stem}.png'), vi)
        lines = (samples / 'labels' / f'{stem}.txt').read_text().splitlines()
        labels = _crop_labels(lines, height, width)
        (folder / 'labels' / f'{stem}.txt').write_text(''.join(f'{x}\n' for x in labels))
    (folder / 'train.txt').write_text('\n'.join(TRAIN_STEMS) + '\n')
    (folder / 'val.txt').write_text('\n'.join(VAL_STEMS) + '\n')
    return folder


def train_args(dataset, out, epochs):
    """Return the ``tarfuse-train`` arguments of a fixture run."""
    return ['--config', str(ROOT / 'config' / 'train.yaml'),
            '--data', f'{dataset}:train', '--val-data', f'{dataset}:val',
            '--epochs', str(epochs), '--crop', '64', '--batch', '2', '--workers', '0',
            '--device', 'cpu', '--seed', '0', '--val-every', '1', '--out', str(out),
            '--set', 'train.threads=1', '--set', 'data.val_crop=0', '--set', NARROW,
            '--set', RECORDED_RANGES, '--set', 'data.context=0', '--set', 'loss.target=0']


# The deformation ranges of config/train.yaml when the fixture was recorded (the shipped recipe
# has changed since; crops deformed with context and the target-aware loss term came later too):
# the replay pins them.
RECORDED_RANGES = ('deformation={prob: 1.0, rotation_deg: 12.0, translation: 0.0, '
                   'translation_px: 40.0, scale: [0.75, 1.3], aspect: 0.1, shear_deg: 4.0, '
                   'perspective: 0.03, elastic_sigma_px: 8.0, elastic_sigma_max_px: 32.0, '
                   'elastic_alpha_px: 5.0, elastic_kernel_sigmas: 3.0, elastic_downsample: 4, '
                   'inverse_iterations: 20}')


def read_records(out):
    """Return the epoch records of a run's ``log.jsonl`` without the wall times."""
    records = []
    for line in (Path(out) / 'log.jsonl').read_text().splitlines():
        record = json.loads(line)
        records.append({key: record[key] for key in ('epoch', 'step', 'lr', 'train', 'val')
                        if key in record})
    return records


def run_all(workdir, keep_state=None, names=('colour', 'grey', 'resume')):
    """Run the fixture runs ``names`` under ``workdir``; return ``{name: records}``.

    ``keep_state``: copy the one-epoch run's ``state/`` folder there.
    """
    from tarfuse_ros.tools.train import main
    workdir = Path(workdir)
    colour = make_dataset(workdir / 'data_colour')
    grey = make_dataset(workdir / 'data_grey', grey=True)
    runs = {}
    for name, dataset, epochs in (('colour', colour, 2), ('grey', grey, 2),
                                  ('resume', grey, 1)):
        if name not in names:
            continue
        out = workdir / f'run_{name}'
        code = main(train_args(dataset, out, epochs))
        if code != 0:
            raise RuntimeError(f'fixture run {name} failed with exit status {code}')
        runs[name] = read_records(out)
        if name == 'resume' and keep_state is not None:
            shutil.rmtree(keep_state, ignore_errors=True)
            shutil.copytree(out / 'state', keep_state)
    return runs


def main(argv=None):
    """Write the fixture files (``--write``), or what the current code gives (``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--write', action='store_true', help='write fixtures/')
    parser.add_argument('--json', default=None, help='write the losses to this file instead')
    parser.add_argument('--commit', default=None, help='the commit of the code, to record')
    args = parser.parse_args(argv)
    import torch
    import tarfuse_ros
    with tempfile.TemporaryDirectory(prefix='tarfuse_fixture_') as workdir:
        runs = run_all(workdir, keep_state=STATE if args.write else None)
    result = {'code': str(Path(tarfuse_ros.__file__).parent), 'commit': args.commit,
              'torch': torch.__version__,
              'cpu_capability': torch.backends.cpu.get_cpu_capability(),
              'numpy': np.__version__, 'opencv': cv2.__version__, 'runs': runs}
    text = json.dumps(result, indent=1, sort_keys=True) + '\n'
    if args.write:
        FIXTURES.mkdir(parents=True, exist_ok=True)
        LOSSES.write_text(text)
        print(f'wrote {LOSSES} and {STATE}')
    elif args.json:
        Path(args.json).write_text(text)
    else:
        print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())

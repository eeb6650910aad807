"""Preparing a tfds data set: tfds's real CIFAR-10 builder run end to end on a few fake records
(written in CIFAR-10's binary format where the download would extract them), then read without
TensorFlow with the CIFAR-10 config's data settings.

TensorFlow, which only preparing needs (the ``data`` extra installs it for users), comes from a
folder of its own (`TENSORFLOW`, installed by the Makefile) on the path of the one process that
prepares; this process reads the prepared records without it.
"""

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import cifar10_edm
from jaxdiff.cli import main
from jaxdiff.data import prepare
from jaxdiff.data.pipeline import make_dataset
from jaxdiff.errors import UserError

TENSORFLOW = Path(sys.prefix) / "tensorflow-prepare"
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer"]
CLASS_NAMES += ["dog", "frog", "horse", "ship", "truck"]
BATCH_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
PER_FILE = 2  # records in each batch file: 10 for training, 2 for testing

# The download manager hands the builder the folder the archive would have been extracted to.
PREPARE = """
import sys

import tensorflow_datasets as tfds

from jaxdiff.cli import main

extracted, data_dir = sys.argv[1:]
tfds.download.DownloadManager.download_and_extract = lambda self, url: extracted
sys.exit(main(["prepare-data", "cifar10", "--data-dir", data_dir]))
"""


def write_cifar10_binary(folder: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``cifar-10-batches-bin`` in ``folder``: each record a label byte and the image's 3072
    bytes, channel by channel; returns the images `[N, 32, 32, 3]` and labels `[N]` of every
    file in order."""
    batches = folder / "cifar-10-batches-bin"
    batches.mkdir(parents=True)
    (batches / "batches.meta.txt").write_text("\n".join(CLASS_NAMES) + "\n\n")
    images = rng.integers(0, 256, (len(BATCH_FILES), PER_FILE, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, (len(BATCH_FILES), PER_FILE), dtype=np.uint8)
    records = np.concatenate([labels[..., None], images.reshape(*labels.shape, -1)], axis=-1)
    for name, file_records in zip(BATCH_FILES, records, strict=True):  # [PER_FILE, 1 + 3072]
        (batches / name).write_bytes(file_records.tobytes())
    return images.transpose(0, 1, 3, 4, 2).reshape(-1, 32, 32, 3), labels.reshape(-1)


def test_real_cifar10_builder_prepares_what_the_config_reads(tmp_path):
    images, labels = write_cifar10_binary(tmp_path / "extracted", np.random.default_rng(0))
    data_dir = tmp_path / "tensorflow_datasets"
    env = {**os.environ, "PYTHONPATH": str(TENSORFLOW)}
    args = [sys.executable, "-c", PREPARE, str(tmp_path / "extracted"), str(data_dir)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    prepared = Path(prepare.prepare_data("cifar10", str(data_dir)))  # prepared: no TensorFlow
    assert done.stdout.splitlines()[-1] == (
        f"cifar10 is prepared in {prepared}; train on it with --config.data.data_dir={data_dir}"
    )
    assert sorted(p.name for p in prepared.glob("*.array_record-*")) == [
        "cifar10-test.array_record-00000-of-00001",
        "cifar10-train.array_record-00000-of-00001",
    ]

    config = cifar10_edm.get_config()
    config.data.data_dir = str(data_dir)
    data = make_dataset(config.data)
    train_records = (len(BATCH_FILES) - 1) * PER_FILE  # the last file is the test split
    assert len(data.source) == train_records
    ids = [data.source.records[i]["id"] for i in range(train_records)]  # b"train_00006", ...
    order = [int(record_id.removeprefix(b"train_")) for record_id in ids]  # tfds shuffles
    assert sorted(order) == list(range(train_records))
    batch = data.unaugmented().batch(np.arange(train_records))  # [10, 32, 32, 3] in [-1, 1]
    np.testing.assert_array_equal(batch["image"], images[order] / np.float32(127.5) - 1)
    assert batch["caption"] == [f"a photo of a {CLASS_NAMES[label]}" for label in labels[order]]


def test_an_unknown_data_set_is_one_line(capsys):
    assert main(["prepare-data", "no_such_data"]) == 2
    assert "tfds data set 'no_such_data' does not exist" in capsys.readouterr().err


def test_without_tensorflow_names_the_commands_that_work(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` fails
    with pytest.raises(UserError) as error:
        prepare.prepare_data("cifar10", str(tmp_path))
    assert str(error.value).startswith("`jaxdiff prepare-data cifar10` needs tensorflow")
    assert str(error.value).endswith("install it with pip install 'jaxdiff[data]'")


def test_data_set_prepared_in_another_format_says_how_to_convert_it(monkeypatch, tmp_path):
    info = types.SimpleNamespace(available_file_formats=lambda: {tfds.core.FileFormat.TFRECORD})
    builder = types.SimpleNamespace(info=info, data_dir=tmp_path, is_prepared=lambda: True)
    monkeypatch.setattr(prepare, "open_builder", lambda name, data_dir: builder)
    with pytest.raises(UserError, match=rf"prepared at {tmp_path} in tfrecord, not ArrayRecord; "):
        prepare.prepare_data("cifar10")

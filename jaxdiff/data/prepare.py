"""Preparing a tensorflow-datasets data set once, in the ArrayRecord format that jaxdiff reads.

tfds's builders download the original files and write the records through TensorFlow (file
reads, image encoding), which jaxdiff installs only with its ``data`` extra
(``pip install 'jaxdiff[data]'``); reading the prepared records (`jaxdiff.data.tfds_source`)
needs no TensorFlow. ``jaxdiff prepare-data NAME`` runs `prepare_data`.
"""

from __future__ import annotations

from typing import Any

from jaxdiff.errors import UserError, first_line
from jaxdiff.extras import import_optional

ARRAY_RECORD = "array_record"


def prepare_command(tfds_name: str, data_dir: str | None = None) -> str:
    """The shell commands that prepare ``tfds_name`` for jaxdiff."""
    where = f" --data-dir {data_dir}" if data_dir else ""
    return f"pip install 'jaxdiff[data]'; jaxdiff prepare-data {tfds_name}{where}"


def open_builder(tfds_name: str, data_dir: str | None = None) -> Any:
    """The tfds builder of ``tfds_name`` (``tfds.core.DatasetBuilder``) in ``data_dir`` (tfds's
    default, $TFDS_DATA_DIR or ~/tensorflow_datasets, when None); opening one needs no
    TensorFlow."""
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(tfds_name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise UserError(
            f"tfds data set {tfds_name!r} does not exist; see `tfds.list_builders()` for the names"
        ) from None
    except Exception as error:  # builders fail in many ways: name the cause
        raise UserError(
            f"tfds data set {tfds_name!r} cannot be opened: {first_line(error)}"
        ) from None


def prepare_data(tfds_name: str, data_dir: str | None = None) -> str:
    """Downloads ``tfds_name`` and writes it in the ArrayRecord format under ``data_dir``
    (tfds's default when None); returns the folder of the prepared version. A data set already
    prepared in ArrayRecord is kept as it is, without TensorFlow; tfds writes into a temporary
    folder and renames it when done, so an interrupted run leaves nothing half-written."""
    builder = open_builder(tfds_name, data_dir)
    if builder.is_prepared():
        formats = {str(f.value) for f in builder.info.available_file_formats()}
        if ARRAY_RECORD not in formats:
            raise UserError(
                f"tfds data set {tfds_name!r} is prepared at {builder.data_dir} in "
                f"{', '.join(sorted(formats))}, not ArrayRecord; convert it with `tfds "
                f"convert_format --dataset_version_dir={builder.data_dir} "
                f"--out_file_format={ARRAY_RECORD}`"
            )
        return str(builder.data_dir)
    import_optional("tensorflow", f"`jaxdiff prepare-data {tfds_name}`", extra="data")
    builder.download_and_prepare(file_format=ARRAY_RECORD)
    return str(builder.data_dir)

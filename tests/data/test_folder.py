"""Image-caption folders: the diffusers layout, and one-line errors for every broken folder."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs import common
from jaxdiff.data.folder import FolderSource
from jaxdiff.data.pipeline import make_dataset
from jaxdiff.errors import UserError


def write_image(path: Path, size=(12, 12), value: int = 0, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 2 * value % 256, 3)).save(path)


def write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def folder(tmp_path) -> Path:
    write_image(tmp_path / "a.png", value=10)
    write_image(tmp_path / "sub" / "b.jpg", value=20, mode="L")
    write_jsonl(
        tmp_path / "captions.jsonl",
        [
            {"file_name": "a.png", "text": "A red bicycle."},
            {"file_name": "sub/b.jpg", "text": ["a grey wall", "concrete"]},
        ],
    )
    return tmp_path


def test_records_captions_and_vocabulary(folder):
    source = FolderSource(folder)
    assert len(source) == 2 and source.image_shape() == (12, 12)
    first, second = source[0], source[1]
    assert first["image"].shape == (12, 12, 3) and first["image"].dtype == np.uint8
    assert first["image"][0, 0].tolist() == [10, 20, 3]
    assert second["image"][0, 0].tolist() == [20, 20, 20]  # grey read as RGB
    assert first["caption"] == "A red bicycle." and second["caption"] == ["a grey wall", "concrete"]
    assert source.vocabulary() == [".", "a", "bicycle", "concrete", "grey", "red", "wall"]


def test_csv_metadata_and_the_training_stream(tmp_path):
    for i, size in enumerate([(20, 10), (10, 16), (12, 12)]):
        write_image(tmp_path / f"{i}.png", size=size, value=40 * i)
    rows = "file_name,text\n" + "".join(f'{i}.png,"caption {i},\nhere"\n' for i in range(3))
    (tmp_path / "metadata.csv").write_text("\ufeff" + rows)  # with Excel's byte-order mark
    data = make_dataset(common.folder_data(str(tmp_path), image_size=8, crop="random", flip=True))
    batch = data.batch(np.arange(6))
    assert batch["image"].shape == (6, 8, 8, 3)
    assert sorted(batch["caption"][:3]) == [f"caption {i},\nhere" for i in range(3)]
    config = common.folder_data(str(tmp_path), image_size=8)
    config.resize = False
    with pytest.raises(UserError, match=r"holds images of different sizes; set data.resize=True"):
        make_dataset(config)


def test_images_of_one_other_size_without_resize(folder):
    config = common.folder_data(str(folder), image_size=8)
    config.resize = False
    with pytest.raises(UserError, match=r"holds 12x12 images, not data.image_size 8x8"):
        make_dataset(config)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, r"is empty: it holds no images and no caption file"),
        (lambda d: write_image(d / "x.png"), r"holds 1 images but no caption file; add one of"),
        (
            lambda d: [(d / name).write_text("") for name in ("captions.jsonl", "metadata.csv")],
            r"holds captions.jsonl and metadata.csv; keep only one",
        ),
        (lambda d: (d / "captions.jsonl").write_text("\n"), r"captions.jsonl lists no images"),
        (
            lambda d: write_jsonl(d / "captions.jsonl", [{"file_name": "gone.png", "text": "t"}]),
            r"captions.jsonl line 1 names 'gone.png', which is not a file in data folder",
        ),
        (
            lambda d: write_jsonl(d / "metadata.jsonl", [{"file_name": "../up.png", "text": "t"}]),
            r"metadata.jsonl line 1 names '../up.png', which is outside data folder",
        ),
        (
            lambda d: (
                write_image(d / "x.png"),
                write_jsonl(d / "captions.jsonl", [{"file_name": "x.png"}]),
            ),
            r"captions.jsonl line 1 has no 'text' field; it has 'file_name'",
        ),
        (
            lambda d: (write_image(d / "x.png"), (d / "captions.jsonl").write_text("[1]\n")),
            r"captions.jsonl line 1 is not a JSON object",
        ),
        (
            lambda d: (
                write_image(d / "x.png"),
                write_jsonl(d / "captions.jsonl", [{"file_name": "x.png", "text": 3}]),
            ),
            r"captions.jsonl line 1: caption 3 is not a string or a non-empty list of strings",
        ),
    ],
)
def test_broken_folders(tmp_path, make, message):
    root = tmp_path / "data"
    root.mkdir()
    make(root)
    with pytest.raises(UserError, match=message):
        FolderSource(root)


def test_not_a_folder_and_unreadable_images(tmp_path):
    with pytest.raises(UserError, match=r"data folder '.*missing' is not a directory"):
        FolderSource(tmp_path / "missing")
    (tmp_path / "x.png").write_bytes(b"not a png")
    write_jsonl(tmp_path / "captions.jsonl", [{"file_name": "x.png", "text": "t"}])
    with pytest.raises(UserError, match=r"x.png is not a readable image"):
        FolderSource(tmp_path).image_shape()


def test_a_truncated_image_is_a_one_line_error_when_read(folder):
    data = (folder / "a.png").read_bytes()
    (folder / "a.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"a.png is not a readable image"):
        FolderSource(folder)[0]


def test_conditioning_images_get_the_image_crop_and_flip(tmp_path):
    """Each row's conditioning image (diffusers' ControlNet column) is resized, cropped and
    flipped as its image: here it is the image itself."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        pixels = rng.integers(0, 255, (10, 14, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "conditioning_file_name": f"{i}.png", "text": "x"})
    write_jsonl(tmp_path / "metadata.jsonl", rows)
    config = common.folder_data(
        str(tmp_path), 8, crop="random", flip=True, conditioning_column="conditioning_file_name"
    )
    batch = make_dataset(config).batch(np.arange(12))
    assert batch["conditioning_image"].shape == (12, 8, 8, 3)
    np.testing.assert_allclose(batch["conditioning_image"], (batch["image"] + 1) / 2, atol=1e-6)


def test_conditioning_column_errors(tmp_path):
    write_image(tmp_path / "a.png", size=(12, 12))
    write_image(tmp_path / "c.png", size=(10, 12))
    write_jsonl(tmp_path / "metadata.jsonl", [{"file_name": "a.png", "text": "x"}])
    with pytest.raises(UserError, match="line 1 has no 'conditioning_file_name' field"):
        FolderSource(tmp_path, conditioning_column="conditioning_file_name")
    write_jsonl(
        tmp_path / "metadata.jsonl",
        [{"file_name": "a.png", "text": "x", "conditioning_file_name": "c.png"}],
    )
    config = common.folder_data(str(tmp_path), 12, conditioning_column="conditioning_file_name")
    with pytest.raises(UserError, match="conditioning image of size 12x10 for an image of size"):
        make_dataset(config).batch(np.arange(1))

import io
import json
import os
import socket
import tarfile
import time

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import modeling_vlp.data as data_module
from modeling_vlp.data import (
    SCENE_COLOURS,
    SCENE_SHAPES,
    ZERO_SHOT_TEMPLATES,
    load_image_text_dataset,
    make_scenes_dataset,
    pick_eval_split,
    scene_class_names,
)


@pytest.fixture(scope="module")
def scenes():
    return make_scenes_dataset(num_train=300, num_validation=100, seed=0)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network at all: HF offline flags set and every socket connection refused."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)

    def refuse(*args, **kwargs):
        raise RuntimeError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return str(tmp_path / "hf_cache")


# --- scenes -----------------------------------------------------------------------------------


def test_scene_class_names_and_templates():
    names = scene_class_names()
    assert len(names) == len(SCENE_COLOURS) * len(SCENE_SHAPES) == 35
    assert len(set(names)) == 35
    assert names[0] == "red circle"
    assert all("{}" in template for template in ZERO_SHOT_TEMPLATES)
    assert "a {}." in ZERO_SHOT_TEMPLATES


def test_scenes_columns_and_features(scenes):
    assert list(scenes) == ["train", "validation"]
    assert scenes["train"].num_rows == 300 and scenes["validation"].num_rows == 100
    features = scenes["train"].features
    assert set(features) == {"image", "caption", "captions", "image_id", "label", "relation", "objects"}
    assert isinstance(features["image"], datasets.Image)
    assert isinstance(features["label"], datasets.ClassLabel)
    assert features["label"].names == scene_class_names()
    assert scenes["train"]["image_id"][:3] == [0, 1, 2]
    assert scenes["validation"]["image_id"][:3] == [300, 301, 302]
    image = scenes["validation"][0]["image"]
    assert image.size == (64, 64) and image.mode == "RGB"


def test_scenes_are_consistent_with_their_objects(scenes):
    class_names = scene_class_names()
    counts = {1: 0, 2: 0}
    for example in scenes["train"]:
        objects, captions, relation = example["objects"], example["captions"], example["relation"]
        counts[len(objects)] += 1
        assert captions[0] == example["caption"]
        assert len(captions) == 3 and len(set(captions)) == 3
        assert class_names[example["label"]] == f"{objects[0]['colour']} {objects[0]['shape']}"
        for caption in captions:
            for obj in objects:
                assert obj["colour"] in caption and obj["shape"] in caption
        for obj in objects:
            assert 0.0 < obj["x"] < 1.0 and 0.0 < obj["y"] < 1.0
        if len(objects) == 1:
            assert relation == ""
        else:
            first, second = objects
            assert relation in example["caption"]
            assert (first["colour"], first["shape"]) != (second["colour"], second["shape"])
            check = {
                "to the left of": first["x"] < second["x"] - 0.3,
                "to the right of": first["x"] > second["x"] + 0.3,
                "above": first["y"] < second["y"] - 0.3,
                "below": first["y"] > second["y"] + 0.3,
            }
            assert check[relation], example
    assert counts[1] > 100 and counts[2] > 100
    objects = [obj for example in scenes["train"] for obj in example["objects"]]
    assert {obj["colour"] for obj in objects} == set(SCENE_COLOURS)
    assert {obj["shape"] for obj in objects} == set(SCENE_SHAPES)
    assert {obj["size"] for obj in objects} == {"small", "large"}
    assert {obj["position"] for obj in objects} == {"left", "right", "top", "bottom", "center"}


def test_scenes_pixels_show_the_described_objects(scenes):
    for example in scenes["validation"].select(range(40)):
        pixels = np.asarray(example["image"]).astype(int)
        assert pixels[0, 0].min() >= 235  # light background in the corners
        for obj in example["objects"]:
            x, y = int(obj["x"] * 64), int(obj["y"] * 64)
            expected = np.array(SCENE_COLOURS[obj["colour"]])
            assert np.abs(pixels[y, x] - expected).max() <= 20, (obj, pixels[y, x])


def test_scenes_are_deterministic_and_splits_disjoint():
    no_decode = {"image": datasets.Image(decode=False)}
    first = make_scenes_dataset(20, 10, seed=3)
    again = make_scenes_dataset(20, 10, seed=3)
    other = make_scenes_dataset(20, 10, seed=4)
    for split in ("train", "validation"):
        a = first[split].cast_column("image", no_decode["image"])
        b = again[split].cast_column("image", no_decode["image"])
        c = other[split].cast_column("image", no_decode["image"])
        assert [x["bytes"] for x in a["image"]] == [x["bytes"] for x in b["image"]]
        assert a["captions"] == b["captions"] and a["objects"] == b["objects"]
        assert sum(x["bytes"] == y["bytes"] for x, y in zip(a["image"], c["image"])) == 0
    train = {x["bytes"] for x in first["train"].cast_column("image", no_decode["image"])["image"]}
    validation = {x["bytes"] for x in first["validation"].cast_column("image", no_decode["image"])["image"]}
    assert len(train) == 20 and len(validation) == 10 and not train & validation
    # An example depends only on (seed, split, index), not on how many others are drawn.
    bigger = make_scenes_dataset(30, 10, seed=3)
    assert bigger["validation"]["caption"] == first["validation"]["caption"]
    assert bigger["train"]["caption"][:20] == first["train"]["caption"]


def test_scenes_generation_is_fast():
    start = time.perf_counter()
    scenes = make_scenes_dataset(num_train=2000, num_validation=0)
    elapsed = time.perf_counter() - start
    assert scenes["train"].num_rows == 2000 and scenes["validation"].num_rows == 0
    assert elapsed < 15, f"2000 scenes took {elapsed:.1f}s"


def test_scenes_options_and_errors():
    scenes = make_scenes_dataset(2, 2, image_size=32, num_test=3)
    assert list(scenes) == ["train", "validation", "test"]
    assert scenes["test"][0]["image"].size == (32, 32)
    assert scenes["test"]["image_id"] == [4, 5, 6]
    with pytest.raises(ValueError, match="num_train"):
        make_scenes_dataset(num_train=-1)
    with pytest.raises(ValueError, match="image_size"):
        make_scenes_dataset(image_size=8)


# --- loading local corpora --------------------------------------------------------------------


def _png_bytes(colour, size=16):
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 200, 0)]
_CAPTIONS = ["a red tile", "a green tile", "a blue tile", "a yellow tile"]


def _write_imagefolder(directory, rows, metadata="jsonl", text_key="text"):
    os.makedirs(directory, exist_ok=True)
    lines = []
    for name, colour, caption in rows:
        with open(os.path.join(directory, name), "wb") as f:
            f.write(_png_bytes(colour))
        lines.append((name, caption))
    if metadata == "jsonl":
        with open(os.path.join(directory, "metadata.jsonl"), "w") as f:
            for name, caption in lines:
                f.write(json.dumps({"file_name": name, text_key: caption, "score": 1.5}) + "\n")
    else:
        with open(os.path.join(directory, "metadata.csv"), "w") as f:
            f.write(f"file_name,{text_key}\n")
            for name, caption in lines:
                f.write(f'{name},"{caption}"\n')


def _write_tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _mean_colour(image):
    return tuple(int(v) for v in np.asarray(image.convert("RGB")).reshape(-1, 3).mean(0).round())


def test_load_imagefolder_with_split_folders(tmp_path, offline):
    rows = [(f"{i}.png", _COLOURS[i], _CAPTIONS[i]) for i in range(4)]
    _write_imagefolder(tmp_path / "data" / "train", rows[:3])
    _write_imagefolder(tmp_path / "data" / "validation", rows[3:])
    loaded = load_image_text_dataset(tmp_path / "data", cache_dir=offline)
    assert set(loaded) == {"train", "validation"}
    assert {"image", "caption", "score"} <= set(loaded["train"].column_names)
    assert "text" not in loaded["train"].column_names
    assert sorted(loaded["train"]["caption"]) == sorted(_CAPTIONS[:3])
    example = loaded["validation"][0]
    assert example["caption"] == "a yellow tile" and _mean_colour(example["image"]) == (200, 200, 0)
    assert pick_eval_split(loaded) == "validation"


def test_load_flat_imagefolder_with_csv_and_test_folder(tmp_path, offline):
    rows = [(f"{i}.png", _COLOURS[i], _CAPTIONS[i]) for i in range(4)]
    _write_imagefolder(tmp_path / "flat", rows, metadata="csv", text_key="caption")
    loaded = load_image_text_dataset(tmp_path / "flat", cache_dir=offline)
    assert list(loaded) == ["train"]
    by_caption = {ex["caption"]: _mean_colour(ex["image"]) for ex in loaded["train"]}
    assert by_caption == dict(zip(_CAPTIONS, _COLOURS))
    with pytest.raises(ValueError, match="found splits \\['train'\\]"):
        pick_eval_split(loaded)

    os.makedirs(tmp_path / "pq_metadata")
    for name, colour, _ in rows:
        (tmp_path / "pq_metadata" / name).write_bytes(_png_bytes(colour))
    metadata = pa.table({"file_name": [row[0] for row in rows], "txt": _CAPTIONS})
    pq.write_table(metadata, str(tmp_path / "pq_metadata" / "metadata.parquet"))
    loaded = load_image_text_dataset(tmp_path / "pq_metadata", cache_dir=offline)
    assert {ex["caption"]: _mean_colour(ex["image"]) for ex in loaded["train"]} == dict(zip(_CAPTIONS, _COLOURS))

    _write_imagefolder(tmp_path / "split" / "train", rows[:2], text_key="sentence")
    _write_imagefolder(tmp_path / "split" / "test", rows[2:], text_key="sentence")
    loaded = load_image_text_dataset(tmp_path / "split", cache_dir=offline)
    assert set(loaded) == {"train", "test"} and pick_eval_split(loaded) == "test"
    assert sorted(loaded["test"]["caption"]) == ["a blue tile", "a yellow tile"]


def test_load_parquet_file_and_split_directory(tmp_path, offline):
    scenes = make_scenes_dataset(6, 4, image_size=32)
    scenes["train"].to_parquet(str(tmp_path / "one.parquet"))
    loaded = load_image_text_dataset(tmp_path / "one.parquet", cache_dir=offline)
    assert list(loaded) == ["train"]
    assert loaded["train"]["caption"] == scenes["train"]["caption"]
    assert loaded["train"]["captions"] == scenes["train"]["captions"]
    assert loaded["train"].features["label"].names == scene_class_names()
    assert loaded["train"][0]["image"].size == (32, 32)

    os.makedirs(tmp_path / "pq" / "validation")
    scenes["train"].to_parquet(str(tmp_path / "pq" / "train-00000-of-00001.parquet"))
    scenes["validation"].to_parquet(str(tmp_path / "pq" / "validation" / "part-0.parquet"))
    loaded = load_image_text_dataset(tmp_path / "pq", cache_dir=offline)
    assert set(loaded) == {"train", "validation"}
    assert loaded["validation"]["caption"] == scenes["validation"]["caption"]


def test_load_raw_parquet_with_binary_images_and_caption_lists(tmp_path, offline):
    table = pa.table(
        {
            "jpg": pa.array([_png_bytes(c) for c in _COLOURS], pa.binary()),
            "sentence": [[caption, caption.upper()] for caption in _CAPTIONS],
            "uid": [10, 11, 12, 13],
        }
    )
    pq.write_table(table, str(tmp_path / "raw.parquet"))
    loaded = load_image_text_dataset(tmp_path / "raw.parquet", cache_dir=offline)["train"]
    assert set(loaded.column_names) == {"image", "caption", "captions", "uid"}
    assert isinstance(loaded.features["image"], datasets.Image)
    assert loaded["caption"] == _CAPTIONS
    assert loaded[1]["captions"] == ["a green tile", "A GREEN TILE"]
    assert _mean_colour(loaded[2]["image"]) == (0, 0, 255)


def test_load_parquet_with_explicit_columns(tmp_path, offline):
    pictures = [{"bytes": _png_bytes(c), "path": None} for c in _COLOURS]
    features = {"picture": datasets.Image(), "desc": datasets.Value("string"), "caption": datasets.Value("string")}
    ds = datasets.Dataset.from_dict(
        {"picture": pictures, "desc": _CAPTIONS, "caption": _CAPTIONS}, features=datasets.Features(features)
    )
    ds.to_parquet(str(tmp_path / "cols.parquet"))
    loaded = load_image_text_dataset(tmp_path / "cols.parquet", image_column="picture", cache_dir=offline)["train"]
    assert set(loaded.column_names) == {"image", "desc", "caption"}
    with pytest.raises(ValueError, match="already has a 'caption' column"):
        load_image_text_dataset(tmp_path / "cols.parquet", text_column="desc", cache_dir=offline)
    with pytest.raises(ValueError, match="text_column='title' is not a column .*columns found"):
        load_image_text_dataset(tmp_path / "cols.parquet", text_column="title", cache_dir=offline)
    with pytest.raises(ValueError, match="image_column='photo' is not a column"):
        load_image_text_dataset(tmp_path / "cols.parquet", image_column="photo", cache_dir=offline)


def test_load_webdataset_shards(tmp_path, offline):
    os.makedirs(tmp_path / "wds")
    json_samples = [
        (f"{i:04d}", {"png": _png_bytes(_COLOURS[i]), "json": json.dumps({"caption": _CAPTIONS[i], "id": i}).encode()})
        for i in range(4)
    ]
    _write_tar(tmp_path / "wds" / "train-000000.tar", json_samples[:3])
    _write_tar(tmp_path / "wds" / "validation-000000.tar", json_samples[3:])
    loaded = load_image_text_dataset(tmp_path / "wds", cache_dir=offline)
    assert set(loaded) == {"train", "validation"}
    assert loaded["train"]["caption"] == _CAPTIONS[:3]
    assert _mean_colour(loaded["validation"][0]["image"]) == (200, 200, 0)

    txt_samples = [(f"s{i}", {"jpg": _png_bytes(_COLOURS[i]), "txt": _CAPTIONS[i].encode()}) for i in range(4)]
    _write_tar(tmp_path / "single.tar", txt_samples)
    loaded = load_image_text_dataset(tmp_path / "single.tar", cache_dir=offline)["train"]
    assert loaded["caption"] == _CAPTIONS
    assert isinstance(loaded.features["image"], datasets.Image)
    assert _mean_colour(loaded[0]["image"]) == (255, 0, 0)


def test_load_save_to_disk(tmp_path, offline):
    scenes = make_scenes_dataset(4, 3, image_size=32)
    scenes.save_to_disk(str(tmp_path / "dict"))
    loaded = load_image_text_dataset(tmp_path / "dict", cache_dir=offline)
    assert set(loaded) == {"train", "validation"}
    assert loaded["validation"]["caption"] == scenes["validation"]["caption"]
    assert loaded["validation"].column_names == scenes["validation"].column_names

    renamed = scenes["train"].rename_column("caption", "text").remove_columns("captions")
    renamed.save_to_disk(str(tmp_path / "single"))
    loaded = load_image_text_dataset(tmp_path / "single", cache_dir=offline)
    assert list(loaded) == ["train"] and loaded["train"]["caption"] == scenes["train"]["caption"]


def test_load_errors(tmp_path, offline, monkeypatch):
    with pytest.raises(ValueError, match="does not exist"):
        load_image_text_dataset(tmp_path / "missing", cache_dir=offline)

    no_text = datasets.Dataset.from_dict(
        {"image": [{"bytes": _png_bytes(c), "path": None} for c in _COLOURS], "label": [0, 1, 2, 3]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    no_text.to_parquet(str(tmp_path / "no_text.parquet"))
    with pytest.raises(ValueError, match="No text column found in .*no_text.parquet.*'image', 'label'"):
        load_image_text_dataset(tmp_path / "no_text.parquet", cache_dir=offline)

    pq.write_table(pa.table({"caption": _CAPTIONS, "width": [1, 2, 3, 4]}), str(tmp_path / "no_image.parquet"))
    with pytest.raises(ValueError, match="No image column found in .*no_image.parquet.*caption"):
        load_image_text_dataset(tmp_path / "no_image.parquet", cache_dir=offline)

    os.makedirs(tmp_path / "empty_split")
    schema = pa.schema([("image", pa.binary()), ("caption", pa.string())])
    pq.write_table(pa.table({"image": [_png_bytes(_COLOURS[0])], "caption": ["red"]}, schema=schema),
                   str(tmp_path / "empty_split" / "train.parquet"))  # fmt: skip
    pq.write_table(schema.empty_table(), str(tmp_path / "empty_split" / "validation.parquet"))
    # datasets' parquet builder cannot read a zero-row file; the failure names the path.
    with pytest.raises(ValueError, match="Could not read .*empty_split.* with the 'parquet' builder"):
        load_image_text_dataset(tmp_path / "empty_split", cache_dir=offline)
    # datasets 5.x writes a zero-row split with save_to_disk but cannot read it back.
    scenes = make_scenes_dataset(num_train=2, num_validation=0, image_size=32)
    scenes.save_to_disk(str(tmp_path / "saved_empty"))
    with pytest.raises(ValueError, match="Could not read .*saved_empty.*one of its splits is empty"):
        load_image_text_dataset(tmp_path / "saved_empty", cache_dir=offline)

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt.*parquet"):
        load_image_text_dataset(tmp_path / "notes.txt", cache_dir=offline)
    os.makedirs(tmp_path / "nothing")
    (tmp_path / "nothing" / "readme.md").write_text("hello")
    with pytest.raises(ValueError, match="Cannot load .*nothing.*readme.md"):
        load_image_text_dataset(tmp_path / "nothing", cache_dir=offline)

    # Should a builder hand back an empty split, it is refused by name.
    monkeypatch.setattr(data_module, "_load_raw", lambda path, cache_dir: scenes)
    with pytest.raises(ValueError, match="Split 'validation' of .*saved_empty.* is empty"):
        load_image_text_dataset(tmp_path / "saved_empty", cache_dir=offline)


def test_pick_eval_split():
    empty = datasets.Dataset.from_dict({"caption": []})
    assert pick_eval_split(datasets.DatasetDict({"train": empty, "validation": empty, "test": empty})) == "validation"
    assert pick_eval_split(datasets.DatasetDict({"train": empty, "test": empty})) == "test"
    with pytest.raises(ValueError, match="found splits \\['train', 'extra'\\]"):
        pick_eval_split(datasets.DatasetDict({"train": empty, "extra": empty}))


def test_loading_opens_no_connection_even_without_offline_flags(tmp_path, monkeypatch):
    attempts = []

    def record(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", True)
    monkeypatch.setattr(socket.socket, "connect", lambda self, *args: record(*args))
    monkeypatch.setattr(socket, "create_connection", record)
    rows = [(f"{i}.png", _COLOURS[i], _CAPTIONS[i]) for i in range(4)]
    _write_imagefolder(tmp_path / "folder", rows)
    loaded = load_image_text_dataset(tmp_path / "folder", cache_dir=str(tmp_path / "cache"))
    assert sorted(loaded["train"]["caption"]) == sorted(_CAPTIONS)
    assert attempts == []
    assert datasets.config.HF_UPDATE_DOWNLOAD_COUNTS is True  # restored after loading

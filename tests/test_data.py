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

import modeling_vlp.data.local as data_module
from modeling_vlp.data.scenes import SCENE_COLOURS, SCENE_SHAPES, VQA_NUM_ANNOTATORS, VQA_QUESTION_TYPES, ZERO_SHOT_TEMPLATES, make_scenes_dataset, make_scenes_vqa_dataset, scene_class_names, scene_region_features, vqa_answer_vocabulary
from modeling_vlp.data.local import load_image_text_dataset, load_region_text_dataset, pick_eval_split, read_region_column


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


# --- VQA on the scenes ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vqa():
    return make_scenes_vqa_dataset(num_train=300, num_validation=40, seed=0)


def _objects_by_image(num_images, seed=0):
    scenes = make_scenes_dataset(num_images, 0, seed=seed)["train"]
    return dict(zip(scenes["image_id"], scenes["objects"]))


def _expected_answer(question, objects):
    """Answer a question from the scene's objects, independently of the generator's code."""
    words = question.rstrip("?").split()
    if question.startswith(("what colour is the", "what is the colour of the")):
        (obj,) = [obj for obj in objects if obj["shape"] == words[-1]]
        return obj["colour"]
    if question.startswith(("what shape is the", "which shape is")):
        colour = words[-2] if question.startswith("what shape") else words[-1]
        (obj,) = [obj for obj in objects if obj["colour"] == colour]
        return obj["shape"]
    if question == "how many objects are there?":
        return str(len(objects))
    if question.startswith("how many"):
        word = words[2]
        if word in SCENE_COLOURS:
            return str(sum(obj["colour"] == word for obj in objects))
        return str(sum(word in (obj["shape"] + "s", obj["shape"] + "es") for obj in objects))
    assert question.startswith("is the ")
    first, second = [obj for name in (words[2:4], words[-2:]) for obj in objects
                     if [obj["colour"], obj["shape"]] == name]  # fmt: skip
    relation = " ".join(words[4:-3])
    dx, dy = first["x"] - second["x"], first["y"] - second["y"]
    truth = {"left of": dx < -0.3, "right of": dx > 0.3, "above": dy < -0.3, "below": dy > 0.3}[relation]
    return "yes" if truth else "no"


def test_vqa_columns_and_answers_match_the_scenes(vqa):
    assert list(vqa) == ["train", "validation"]
    train = vqa["train"]
    assert set(train.column_names) == {
        "image", "question", "answers", "answer", "question_type", "image_id", "question_id"
    }  # fmt: skip
    assert isinstance(train.features["image"], datasets.Image)
    objects_by_image = _objects_by_image(300)
    per_image = {}
    for row in train.remove_columns("image"):
        objects = objects_by_image[row["image_id"]]
        assert row["answer"] == _expected_answer(row["question"], objects), row
        assert len(row["answers"]) == VQA_NUM_ANNOTATORS
        assert row["answers"].count(row["answer"]) >= VQA_NUM_ANNOTATORS - 2
        per_image.setdefault(row["image_id"], []).append(row["question_type"])
    for image_id, types in per_image.items():
        objects = objects_by_image[image_id]
        # a colour question needs a shape no other object has ("the circle"), a shape question a unique colour
        unique_shape = any(sum(o["shape"] == obj["shape"] for o in objects) == 1 for obj in objects)
        unique_colour = any(sum(o["colour"] == obj["colour"] for o in objects) == 1 for obj in objects)
        expected = ["colour"] * unique_shape + ["shape"] * unique_colour + ["count"] + ["relation"] * (len(objects) - 1)
        assert types == expected
    assert len(per_image) == 300 and train["question_id"] == list(range(len(train)))
    assert vqa["validation"]["question_id"][0] == len(train)
    assert vqa["validation"]["image_id"][0] == 300


def test_vqa_balance_noise_and_images(vqa):
    train = vqa["train"].remove_columns("image")
    assert set(train["question_type"]) == set(VQA_QUESTION_TYPES)
    relation_answers = [a for a, t in zip(train["answer"], train["question_type"]) if t == "relation"]
    assert abs(relation_answers.count("yes") / len(relation_answers) - 0.5) < 0.1
    counts = {a for a, t in zip(train["answer"], train["question_type"]) if t == "count"}
    assert counts == {"0", "1", "2"}
    noisy = [answers for answer, answers in zip(train["answer"], train["answers"]) if set(answers) != {answer}]
    assert 0.3 < len(noisy) / len(train) < 0.9  # some but not all questions have disagreeing annotators
    assert any("two" in answers or "violet" in answers for answers in train["answers"])  # synonyms
    # image i is image i of make_scenes_dataset with the same seed
    no_decode = datasets.Image(decode=False)
    vqa_images = vqa["validation"].cast_column("image", no_decode)
    scenes = make_scenes_dataset(300, 40, seed=0)["validation"].cast_column("image", no_decode)
    first = vqa_images[0]
    assert first["image"]["bytes"] == scenes[0]["image"]["bytes"]


def test_vqa_is_deterministic_and_validates():
    first, again = make_scenes_vqa_dataset(10, 5, seed=1), make_scenes_vqa_dataset(10, 5, seed=1)
    other = make_scenes_vqa_dataset(10, 5, seed=2)
    for split in ("train", "validation"):
        assert first[split]["question"] == again[split]["question"]
        assert first[split]["answers"] == again[split]["answers"]
    assert first["train"]["question"] != other["train"]["question"]
    with_test = make_scenes_vqa_dataset(2, 2, image_size=32, num_test=2)
    assert list(with_test) == ["train", "validation", "test"] and with_test["test"][0]["image"].size == (32, 32)
    with pytest.raises(ValueError, match="num_validation"):
        make_scenes_vqa_dataset(num_validation=-1)
    with pytest.raises(ValueError, match="image_size"):
        make_scenes_vqa_dataset(image_size=4)


def test_vqa_answer_vocabulary(vqa):
    id2label, label2id = vqa_answer_vocabulary(vqa)
    assert list(id2label) == list(range(len(id2label))) and {v: k for k, v in id2label.items()} == label2id
    assert list(id2label.values()) == sorted(id2label.values())
    assert set(SCENE_COLOURS) | set(SCENE_SHAPES) | {"yes", "no", "0", "1", "2"} <= set(label2id)
    assert "two" not in label2id  # normalised to "2"
    frequent, _ = vqa_answer_vocabulary(vqa, min_count=50)
    assert "yes" in frequent.values() and len(frequent) < len(id2label)
    toy = datasets.Dataset.from_dict({"answers": [["A Cat", "cat", "dog"], ["two", "2"]]})
    assert vqa_answer_vocabulary(toy)[0] == {0: "2", 1: "cat", 2: "dog"}
    assert vqa_answer_vocabulary(toy, min_count=2)[0] == {0: "2", 1: "cat"}
    with pytest.raises(ValueError, match="answers_column='labels'"):
        vqa_answer_vocabulary(toy, answers_column="labels")
    with pytest.raises(ValueError, match="split='train' is not a split"):
        vqa_answer_vocabulary(datasets.DatasetDict({"validation": toy}))
    with pytest.raises(ValueError, match="min_count=5"):
        vqa_answer_vocabulary(toy, min_count=5)


# --- region features --------------------------------------------------------------------------


def feats_of(row):
    return np.array(row["visual_feats"])


def test_scenes_region_features():
    with_regions = make_scenes_dataset(num_train=60, num_validation=10, seed=0, region_features=12)
    no_decode = datasets.Image(decode=False)
    for split in ("train", "validation"):
        # the images and captions do not change when region features are added
        plain = make_scenes_dataset(60, 10, seed=0)[split].cast_column("image", no_decode)
        regions = with_regions[split].cast_column("image", no_decode)
        assert [x["bytes"] for x in plain["image"]] == [x["bytes"] for x in regions["image"]]
        assert plain["caption"] == regions["caption"]
    projection_rows = {}
    for row in with_regions["train"].remove_columns("image"):
        objects = row["objects"]
        feats, boxes = np.array(row["visual_feats"]), np.array(row["visual_pos"])
        scores, labels = np.array(row["region_class_scores"]), row["region_labels"]
        assert feats.shape == (len(objects) + 1, 12) and boxes.shape == (len(objects) + 1, 4)
        assert scores.shape == (len(objects) + 1, len(SCENE_SHAPES))
        np.testing.assert_allclose(scores.sum(axis=1), 1, atol=1e-5)
        assert labels == [-100] + [SCENE_SHAPES.index(obj["shape"]) for obj in objects]
        assert boxes[0].tolist() == [0, 0, 1, 1] and boxes.min() >= 0 and boxes.max() <= 1
        for obj, box, score in zip(objects, boxes[1:], scores[1:]):
            assert box[0] < obj["x"] < box[2] and box[1] < obj["y"] < box[3]
            assert score.argmax() == SCENE_SHAPES.index(obj["shape"]) or score.max() < 0.9
        for obj, feat in zip(objects, feats[1:]):
            projection_rows.setdefault((obj["shape"], obj["colour"], obj["size"]), []).append(feat)
    # one fixed projection plus small noise: the same object kind gives close features, different kinds do not
    groups = [np.stack(v) for v in projection_rows.values() if len(v) >= 2]
    within = np.mean([np.linalg.norm(g - g.mean(0), axis=1).mean() for g in groups])
    centres = np.stack([g.mean(0) for g in groups])
    between = np.mean([np.linalg.norm(a - b) for i, a in enumerate(centres) for b in centres[i + 1 :]])
    assert within < 0.5 and between > 3 * within
    # the "detector" does not depend on the dataset seed: an object gets the same features up to the noise
    obj = with_regions["train"][0]["objects"][0]
    seeded_features = [
        scene_region_features([obj], 12, np.random.default_rng(seed))["visual_feats"][1] for seed in range(20)
    ]
    assert np.abs(np.mean(seeded_features, axis=0) - feats_of(with_regions["train"][0])[1]).max() < 0.5
    with pytest.raises(ValueError, match="region_features"):
        make_scenes_dataset(2, 2, region_features=-1)


def test_region_features_are_deterministic():
    first = make_scenes_dataset(5, 0, seed=3, region_features=4)["train"]
    again = make_scenes_dataset(5, 0, seed=3, region_features=4)["train"]
    assert first["visual_feats"] == again["visual_feats"]
    assert first["region_class_scores"] == again["region_class_scores"]


def _region_rows(num_rows, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(num_rows):
        count = 2 + index % 3
        low = rng.uniform(0, 0.5, (count, 2))
        rows.append({
            "caption": f"caption {index}",
            "visual_feats": rng.standard_normal((count, dim)).astype(np.float32),
            "visual_pos": np.concatenate([low, low + 0.4], axis=1).astype(np.float32),
            "image_id": index,
        })  # fmt: skip
    return rows


def test_load_region_dataset_with_inline_lists(tmp_path, offline):
    rows = _region_rows(4)
    os.makedirs(tmp_path / "inline")
    with open(tmp_path / "inline" / "metadata.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps({k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in row.items()}) + "\n")
    loaded = load_region_text_dataset(tmp_path / "inline", cache_dir=offline)
    assert list(loaded) == ["train"]
    train = loaded["train"]
    assert {"caption", "visual_feats", "visual_pos", "image_id"} <= set(train.column_names)
    for row, expected in zip(train, rows):
        assert row["caption"] == expected["caption"]
        np.testing.assert_allclose(read_region_column(row, "visual_feats"), expected["visual_feats"], rtol=1e-6)

    os.makedirs(tmp_path / "pq" / "train")
    os.makedirs(tmp_path / "pq" / "val")
    table = pa.table({"text": [r["caption"] for r in rows], "visual_feats": [r["visual_feats"].tolist() for r in rows],
                      "visual_pos": [r["visual_pos"].tolist() for r in rows]})  # fmt: skip
    pq.write_table(table.slice(0, 3), str(tmp_path / "pq" / "train" / "metadata.parquet"))
    pq.write_table(table.slice(3), str(tmp_path / "pq" / "val" / "metadata.parquet"))
    loaded = load_region_text_dataset(tmp_path / "pq", cache_dir=offline)
    assert set(loaded) == {"train", "validation"} and loaded["validation"]["caption"] == ["caption 3"]


def test_load_region_dataset_with_npy_files(tmp_path, offline):
    rows = _region_rows(3)
    directory = tmp_path / "npy"
    os.makedirs(directory / "features")
    with open(directory / "metadata.csv", "w") as f:
        f.write("caption,visual_feats_file,visual_pos_file\n")
        for index, row in enumerate(rows):
            np.save(directory / "features" / f"{index}_feats.npy", row["visual_feats"])
            np.save(directory / "features" / f"{index}_boxes.npy", row["visual_pos"])
            f.write(f"{row['caption']},features/{index}_feats.npy,features/{index}_boxes.npy\n")
    train = load_region_text_dataset(directory, cache_dir=offline)["train"]
    assert set(train.column_names) == {"caption", "visual_feats_file", "visual_pos_file"}
    for row, expected in zip(train, rows):
        assert os.path.isabs(row["visual_feats_file"])
        np.testing.assert_array_equal(read_region_column(row, "visual_feats"), expected["visual_feats"])
        np.testing.assert_array_equal(read_region_column(row, "visual_pos"), expected["visual_pos"])
    assert read_region_column({"caption": "x"}, "visual_feats") is None

    os.remove(directory / "features" / "1_boxes.npy")
    with pytest.raises(ValueError, match="1 visual_pos_file file.*do not exist.*row 1.*1_boxes.npy"):
        load_region_text_dataset(directory, cache_dir=offline)
    np.save(directory / "features" / "1_boxes.npy", np.zeros((5, 4), dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="Could not read visual_pos_file"):
        read_region_column({"visual_pos_file": str(directory / "features" / "1_boxes.npy")}, "visual_pos")


def test_load_region_dataset_errors(tmp_path, offline):
    with pytest.raises(ValueError, match="is not an existing folder"):
        load_region_text_dataset(tmp_path / "missing", cache_dir=offline)
    os.makedirs(tmp_path / "empty")
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="expected a metadata.jsonl.*notes.txt"):
        load_region_text_dataset(tmp_path / "empty", cache_dir=offline)
    os.makedirs(tmp_path / "no_boxes")
    with open(tmp_path / "no_boxes" / "metadata.jsonl", "w") as f:
        f.write(json.dumps({"caption": "a cat", "visual_feats": [[0.0, 1.0]]}) + "\n")
    with pytest.raises(ValueError, match="has no visual_pos column.*columns found"):
        load_region_text_dataset(tmp_path / "no_boxes", cache_dir=offline)
    os.makedirs(tmp_path / "bad_boxes")
    with open(tmp_path / "bad_boxes" / "metadata.jsonl", "w") as f:
        f.write(json.dumps({"caption": "a cat", "visual_feats": [[0.0, 1.0]], "visual_pos": [[0.0, 1.0]]}) + "\n")
    with pytest.raises(ValueError, match=r"visual_pos of the first row .* shape \(1, 2\); expected \(1, 4\)"):
        load_region_text_dataset(tmp_path / "bad_boxes", cache_dir=offline)
    os.makedirs(tmp_path / "no_text")
    with open(tmp_path / "no_text" / "metadata.jsonl", "w") as f:
        f.write(json.dumps({"title": "a cat", "visual_feats": [[0.0, 1.0]], "visual_pos": [[0, 0, 1, 1]]}) + "\n")
    with pytest.raises(ValueError, match="No text column found"):
        load_region_text_dataset(tmp_path / "no_text", cache_dir=offline)
    assert load_region_text_dataset(tmp_path / "no_text", text_column="title", cache_dir=offline)["train"][0][
        "caption"
    ] == "a cat"


def test_load_region_dataset_saved_to_disk(tmp_path, offline):
    scenes = make_scenes_dataset(4, 2, image_size=32, region_features=4)
    scenes.save_to_disk(str(tmp_path / "saved"))
    loaded = load_region_text_dataset(tmp_path / "saved", cache_dir=offline)
    assert set(loaded) == {"train", "validation"}
    assert loaded["train"]["visual_feats"] == scenes["train"]["visual_feats"]

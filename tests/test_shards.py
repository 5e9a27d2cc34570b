"""`vlp shards`: a local corpus written as webdataset shards in img2dataset's layout, read back with webdataset."""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from modeling_vlp.commands import main
from modeling_vlp.commands.shards import write_shards
from modeling_vlp.data import load_image_text_dataset

wds = pytest.importorskip("webdataset")

VLP = shutil.which("vlp", path=str(Path(sys.executable).parent)) or shutil.which("vlp")
COLOURS = [(220, 30, 30), (30, 160, 50), (30, 70, 220), (240, 200, 20)]


def _pixels(index: int, side: int = 24) -> np.ndarray:
    rng = np.random.default_rng(index)
    base = np.full((side, side + 4, 3), COLOURS[index % len(COLOURS)], dtype=np.int16)
    return np.clip(base + rng.integers(-8, 9, base.shape), 0, 255).astype(np.uint8)


def _encoded(index: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_pixels(index)).save(buffer, format=fmt)
    return buffer.getvalue()


def _write_imagefolder(root: Path, num_images: int) -> list[str]:
    """PNG images but every third one a JPEG; metadata.jsonl with a caption and a label column."""
    root.mkdir(parents=True)
    captions = []
    with open(root / "metadata.jsonl", "w") as handle:
        for index in range(num_images):
            suffix = "jpg" if index % 3 == 0 else "png"
            name = f"img_{index:03d}.{suffix}"
            (root / name).write_bytes(_encoded(index, "JPEG" if suffix == "jpg" else "PNG"))
            captions.append(f"a square of colour {index % len(COLOURS)} number {index}")
            handle.write(json.dumps({"file_name": name, "caption": captions[-1], "label": index % 4}) + "\n")
    return captions


def _read_shards(paths) -> list[dict]:
    """Every sample of the shards, decoded by webdataset itself (images as PIL)."""
    dataset = wds.WebDataset([str(p) for p in paths], shardshuffle=False, empty_check=False).decode("pil")
    return list(dataset)


def _tars(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.tar"))


def test_imagefolder_round_trip_with_shard_size(tmp_path):
    captions = _write_imagefolder(tmp_path / "folder", 12)
    out = tmp_path / "shards"
    cache = str(tmp_path / "c")
    summary = write_shards(str(tmp_path / "folder"), str(out), shard_size=5, progress=False, cache_dir=cache)

    tars = _tars(out)
    assert [p.name for p in tars] == ["train-00000.tar", "train-00001.tar", "train-00002.tar"]
    assert [len(_read_shards([p])) for p in tars] == [5, 5, 2]
    samples = _read_shards(tars)
    assert [s["txt"] for s in samples] == captions
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(12)]
    for index, sample in enumerate(samples):
        assert set(sample) >= {"jpg", "txt", "json"} and "png" not in sample
        image = sample["jpg"]
        assert isinstance(image, Image.Image) and image.size == (28, 24)
        # JPEG quality 95 of flat colours: the decoded pixels stay close to the source's.
        assert np.abs(np.asarray(image.convert("RGB"), dtype=float) - _pixels(index)).mean() < 6
        meta = sample["json"]
        assert meta["key"] == sample["__key__"] and meta["caption"] == captions[index]
        assert meta["label"] == index % 4 and (meta["width"], meta["height"]) == (28, 24)

    # JPEG sources pass through byte for byte; PNG ones are re-encoded as JPEG.
    raw = list(wds.WebDataset([str(p) for p in tars], shardshuffle=False, empty_check=False))
    assert raw[0]["jpg"] == (tmp_path / "folder" / "img_000.jpg").read_bytes()
    assert raw[1]["jpg"][:2] == b"\xff\xd8" and raw[1]["jpg"] != (tmp_path / "folder" / "img_001.png").read_bytes()

    stats = [json.loads((out / f"train-{i:05d}_stats.json").read_text()) for i in range(3)]
    assert [(s["count"], s["successes"], s["failed"]) for s in stats] == [(5, 5, 0), (5, 5, 0), (2, 2, 0)]
    assert summary["splits"]["train"]["url_pattern"] == str(out / "train-{00000..00002}.tar")
    assert json.loads((out / "stats.json").read_text())["splits"]["train"]["samples"] == 12

    # The shards are a corpus the loaders read back.
    reloaded = load_image_text_dataset(out, cache_dir=str(tmp_path / "c"))["train"]
    assert sorted(reloaded["caption"]) == sorted(captions)


def _write_parquet(path: Path, images: list[bytes], captions: list, extra: dict) -> None:
    features = datasets.Features(
        {"image": datasets.Image(), "caption": datasets.Value("string"), **{k: v[1] for k, v in extra.items()}}
    )
    columns = {"image": [{"bytes": b, "path": None} for b in images], "caption": captions}
    columns.update({k: v[0] for k, v in extra.items()})
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(path))


def test_parquet_with_splits_and_keep_png(tmp_path):
    source = tmp_path / "pq"
    source.mkdir()
    for split, offset in (("train", 0), ("validation", 10)):
        images = [_encoded(offset + i, "PNG") for i in range(4)]
        tags = ([[f"t{i}", "x"] for i in range(4)], datasets.List(datasets.Value("string")))
        _write_parquet(source / f"{split}-0000.parquet", images, [f"{split} caption {i}" for i in range(4)],
                       {"tags": tags})  # fmt: skip
    out = tmp_path / "shards"
    summary = write_shards(str(source), str(out), shard_size=3, keep_png=True, progress=False,
                           cache_dir=str(tmp_path / "c"))  # fmt: skip
    assert [p.name for p in _tars(out)] == [
        "train-00000.tar", "train-00001.tar", "validation-00000.tar", "validation-00001.tar",
    ]  # fmt: skip
    for split, offset in (("train", 0), ("validation", 10)):
        assert summary["splits"][split]["samples"] == 4
        raw = list(wds.WebDataset(str(out / f"{split}-{{00000..00001}}.tar"), shardshuffle=False, empty_check=False))
        assert [s["txt"].decode() for s in raw] == [f"{split} caption {i}" for i in range(4)]
        # --keep-png: the PNG bytes as they were, under .png, lossless.
        assert [s["png"] for s in raw] == [_encoded(offset + i, "PNG") for i in range(4)]
        assert json.loads(raw[2]["json"])["tags"] == ["t2", "x"]
    assert set(load_image_text_dataset(out, cache_dir=str(tmp_path / "c"))) == {"train", "validation"}


def test_bad_rows_are_skipped_and_counted(tmp_path, capsys):
    images = [_encoded(0, "JPEG"), b"not an image at all", _encoded(2, "PNG"), _encoded(3, "PNG")[:60],
              _encoded(4, "JPEG"), _encoded(5, "PNG")]  # fmt: skip
    captions = ["first", "undecodable", "  ", "truncated", "fifth", None]
    _write_parquet(tmp_path / "bad.parquet", images, captions, {})
    out = tmp_path / "shards"
    status = main(["shards", "--dataset", str(tmp_path / "bad.parquet"), "--output", str(out), "--shard-size", "1",
                   "--cache-dir", str(tmp_path / "c"), "--no-progress"])  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    assert "train: 2 samples in 2 shard(s) from 6 rows; skipped 4" in printed
    assert "2 undecodable image" in printed and "2 empty caption" in printed
    samples = _read_shards(_tars(out))
    assert [(s["__key__"], s["txt"]) for s in samples] == [("000000000", "first"), ("000000004", "fifth")]
    train = json.loads((out / "stats.json").read_text())["splits"]["train"]
    assert train["skipped_by_reason"] == {"undecodable image": 2, "empty caption": 2}
    per_shard = [json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))]
    assert sum(s["count"] for s in per_shard) == 6 and sum(s["failed"] for s in per_shard) == 4

    # A folder that already holds shards is refused, not mixed into.
    assert main(["shards", "--dataset", str(tmp_path / "bad.parquet"), "--output", str(out), "--no-progress"]) == 1
    assert "already holds .tar shards" in capsys.readouterr().err


def test_every_row_skipped_writes_no_shard(tmp_path):
    _write_parquet(tmp_path / "empty.parquet", [b"junk", b"junk"], ["a", "b"], {})
    summary = write_shards(str(tmp_path / "empty.parquet"), str(tmp_path / "out"), progress=False,
                           cache_dir=str(tmp_path / "c"))  # fmt: skip
    assert _tars(tmp_path / "out") == []
    train = summary["splits"]["train"]
    assert (train["rows"], train["samples"], train["skipped"], train["url_pattern"]) == (2, 0, 2, None)


@pytest.mark.skipif(VLP is None, reason="the `vlp` console script is not installed")
@pytest.mark.slow  # runs a subprocess
def test_vlp_shards_entry_point(tmp_path):
    captions = _write_imagefolder(tmp_path / "folder", 5)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "cache")}  # fmt: skip
    result = subprocess.run(
        [VLP, "shards", "--dataset", str(tmp_path / "folder"), "--output", str(tmp_path / "out"), "--shard-size", "2"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train: 5 samples in 3 shard(s) from 5 rows; skipped 0 (none)" in result.stdout
    assert "samples/s" in result.stderr  # the progress bar
    assert [s["txt"] for s in _read_shards(_tars(tmp_path / "out"))] == captions


def test_reshard_shards_and_a_save_to_disk_folder(tmp_path):
    captions = _write_imagefolder(tmp_path / "folder", 6)
    cache = str(tmp_path / "c")
    write_shards(str(tmp_path / "folder"), str(tmp_path / "big"), shard_size=6, progress=False, cache_dir=cache)
    # Shards in, smaller shards out: the source's json is kept, its key as source_key, new keys.
    write_shards(str(tmp_path / "big"), str(tmp_path / "small"), shard_size=4, progress=False, cache_dir=cache)
    samples = _read_shards(_tars(tmp_path / "small"))
    assert [p.name for p in _tars(tmp_path / "small")] == ["train-00000.tar", "train-00001.tar"]
    assert sorted(s["txt"] for s in samples) == sorted(captions)
    for sample in samples:
        meta = sample["json"]
        assert meta["key"] == sample["__key__"] and meta["caption"] == sample["txt"]
        assert captions[int(meta["source_key"])] == sample["txt"] and "label" in meta

    ds = datasets.Dataset.from_dict(
        {"img": [{"bytes": _encoded(i, "PNG"), "path": None} for i in range(3)], "text": ["x", "y", "z"]},
        features=datasets.Features({"img": datasets.Image(), "text": datasets.Value("string")}),
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    summary = write_shards(str(tmp_path / "saved"), str(tmp_path / "from_saved"), progress=False, cache_dir=cache)
    assert summary["splits"]["train"]["url_pattern"] == str(tmp_path / "from_saved" / "train-00000.tar")
    assert [s["txt"] for s in _read_shards(_tars(tmp_path / "from_saved"))] == ["x", "y", "z"]

"""Streaming training data (`modeling_vlp.data.streaming`): open_clip's URL patterns, the split across ranks and
workers, resampling, mixing, bad samples skipped and reported, and resuming mid-stream from a `StatefulDataLoader`
state without reading the shards already done."""

import io
import json
import os
import tarfile
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from torchdata.stateful_dataloader import StatefulDataLoader

from modeling_vlp.data.sources import load_training_data
from modeling_vlp.data.streaming import ImageTextStream, ShardSource, expand_shard_urls, stream_image_text


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_shards(folder, shards: int, per_shard: int, bad: dict | None = None, prefix: str = "") -> list[str]:
    """img2dataset-style shards `{prefix}{00000..}.tar` of `key.jpg` + `key.txt` + `key.json`; `bad` maps a key to
    what is wrong with it: "truncated" (half a JPEG), "no_caption", "blank_caption", "no_image"."""
    bad = bad or {}
    os.makedirs(folder, exist_ok=True)
    paths, index = [], 0
    for shard in range(shards):
        path = os.path.join(folder, f"{prefix}{shard:05d}.tar")
        with tarfile.open(path, "w") as tar:
            for _ in range(per_shard):
                key = f"{index:09d}"
                members = {"jpg": _jpeg(index), "txt": f"caption {key}".encode(), "json": json.dumps({"key": key}).encode()}
                kind = bad.get(key)
                if kind == "truncated":
                    members["jpg"] = members["jpg"][:40]
                elif kind == "no_caption":
                    del members["txt"]
                elif kind == "blank_caption":
                    members["txt"] = b"  \n"
                elif kind == "no_image":
                    del members["jpg"]
                for extension, payload in members.items():
                    info = tarfile.TarInfo(f"{key}.{extension}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                index += 1
        paths.append(path)
    return paths


def _key(row) -> str:
    return row["__where__"].split()[-1]


def _keys(rows) -> list[str]:
    return [_key(row) for row in rows]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, shards=6, per_shard=10)
    return str(folder)


def test_url_patterns_expand_as_open_clip_train_data(shards):
    assert len(expand_shard_urls(f"{shards}/{{00000..00005}}.tar")) == 6
    joined = expand_shard_urls(f"{shards}/{{00000..00001}}.tar::{shards}/00005.tar")
    assert [os.path.basename(url) for url in joined] == ["00000.tar", "00001.tar", "00005.tar"]
    with pytest.raises(ValueError, match="2 of its 8 shards do not exist"):
        expand_shard_urls(f"{shards}/{{00000..00007}}.tar")


def test_a_pipe_command_streams(shards):
    stream = stream_image_text(f"pipe:cat {shards}/00000.tar", shuffle=False)
    stream.one_pass = True
    rows = list(stream)
    assert _keys(rows) == [f"{index:09d}" for index in range(10)]
    assert rows[0]["caption"] == "caption 000000000" and rows[0]["image"].size == (16, 16)


@pytest.mark.parametrize("world_size, workers", [(2, 2), (1, 3), (4, 2)])
def test_every_sample_once_per_pass_across_ranks_and_workers(shards, world_size, workers):
    # (4, 2): 8 readers for 6 shards, so every reader reads every shard and keeps every 8th sample.
    seen = []
    for rank in range(world_size):
        stream = stream_image_text(f"{shards}/{{00000..00005}}.tar", seed=3).distribute(rank, world_size)
        stream.one_pass = True
        loader = StatefulDataLoader(stream, batch_size=None, num_workers=workers)
        seen += _keys(loader)
    assert sorted(seen) == [f"{index:09d}" for index in range(60)]


def test_each_pass_has_a_new_order(shards):
    stream = stream_image_text(f"{shards}/{{00000..00005}}.tar", seed=0, shuffle_buffer=5)
    rows = iter(stream)
    first, second = [_key(next(rows)) for _ in range(60)], [_key(next(rows)) for _ in range(60)]
    assert sorted(first) == sorted(second) and first != second


def test_resampled_draws_shards_with_replacement(shards):
    stream = stream_image_text(f"{shards}/{{00000..00005}}.tar", seed=1, resampled=True)
    stream.one_pass = True
    per_shard = Counter(int(key) // 10 for key in _keys(stream))
    assert sum(per_shard.values()) == 60 and all(count % 10 == 0 for count in per_shard.values())
    assert max(per_shard.values()) > 10  # some shard drawn twice in one pass, so another not at all


def test_weights_mix_sources(tmp_path):
    first = write_shards(tmp_path / "a", shards=2, per_shard=20)
    second = write_shards(tmp_path / "b", shards=2, per_shard=20, prefix="b")
    spec = f"{tmp_path}/a/{{00000..00001}}.tar::{tmp_path}/b/b{{00000..00001}}.tar"
    stream = stream_image_text(spec, weights=[1, 3], seed=0, samples_per_epoch=400)
    rows = iter(stream)
    sources = Counter("/b/" in next(rows)["__where__"] for _ in range(400))
    assert 0.68 < sources[True] / 400 < 0.82, sources
    assert len(first) == len(second) == 2


def test_bad_samples_are_skipped_and_reported(tmp_path):
    bad = {"000000003": "truncated", "000000004": "no_caption", "000000005": "blank_caption", "000000011": "no_image"}
    urls = write_shards(tmp_path, shards=2, per_shard=10, bad=bad)
    with open(urls[1], "r+b") as handle:  # the second shard breaks off in the middle of a member
        handle.truncate(os.path.getsize(urls[1]) // 2)
    stream = stream_image_text(f"{tmp_path}/{{00000..00001}}.tar", shuffle=False)
    stream.one_pass = True
    rows = list(stream)
    skipped = [item for row in rows for item in row.get("__skipped__", [])]
    reasons = {where.split()[-1]: reason for where, reason in skipped}
    assert "could not be decoded" in reasons["000000003"]
    assert "no caption member" in reasons["000000004"] and "whitespace" in reasons["000000005"]
    assert "no image member" in reasons["000000011"]
    assert any("unreadable tar data" in reason for _, reason in skipped)
    kept = _keys(rows)
    assert not set(kept) & set(bad) and kept[:3] == ["000000000", "000000001", "000000002"]
    assert {"000000010", "000000012"} <= set(kept)  # the readable start of the broken shard is used


class _CountingSource(ShardSource):
    opened: list = []

    def read(self, index, errors):
        _CountingSource.opened.append(self.names[index])
        return super().read(index, errors)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_stream_gives_the_next_unseen_samples(shards, workers):
    urls = expand_shard_urls(f"{shards}/{{00000..00005}}.tar")

    def loader():
        stream = ImageTextStream([_CountingSource(urls)], seed=5, shuffle_buffer=4)
        return StatefulDataLoader(stream, batch_size=4, num_workers=workers, collate_fn=_keys)

    uninterrupted = iter(loader())
    expected = [next(uninterrupted) for _ in range(20)]
    interrupted = loader()
    batches = iter(interrupted)
    assert [next(batches) for _ in range(9)] == expected[:9]
    state = interrupted.state_dict()
    del batches
    _CountingSource.opened = []
    resumed = loader()
    resumed.load_state_dict(state)
    batches = iter(resumed)
    assert [next(batches) for _ in range(11)] == expected[9:]
    if workers == 0:  # 9 batches of 4 = 36 samples: the first three shards are not opened again
        done = {url for url in urls if all(os.path.basename(url) != os.path.basename(o) for o in _CountingSource.opened)}
        assert len(done) >= 2, _CountingSource.opened


def test_a_folder_of_shards_streams_with_the_last_shard_held_out(shards):
    stream, evaluation = load_training_data(shards, num_validation=5, seed=0)
    assert isinstance(stream, ImageTextStream) and len(evaluation) == 5
    assert [len(source) for source in stream.sources] == [5]
    assert evaluation[0]["caption"] == "caption 000000050"


def test_streaming_parquet_holds_out_its_first_rows(tmp_path):
    import datasets

    images = [{"bytes": _jpeg(index), "path": None} for index in range(30)]
    table = datasets.Dataset.from_dict(
        {"image": images, "caption": [f"caption {index}" for index in range(30)]},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}),
    )
    table.to_parquet(str(tmp_path / "train.parquet"))
    stream, evaluation = load_training_data(str(tmp_path / "train.parquet"), num_validation=4, seed=0, streaming=True)
    assert evaluation["caption"] == [f"caption {index}" for index in range(4)]
    stream.one_pass = True
    captions = sorted(row["caption"] for row in stream)
    assert captions == sorted(f"caption {index}" for index in range(4, 30))


@pytest.mark.slow
def test_vlp_pretrain_streams_shards_and_resumes_after_kill_9(tmp_path):
    """`vlp pretrain --dataset 'DIR/{...}.tar'` streams (no Arrow cache is written), is killed with SIGKILL right after
    its first checkpoint, and the re-run logs the very losses of an uninterrupted run after the resume."""
    import signal
    import subprocess
    import sys
    import time

    write_shards(tmp_path / "shards", shards=4, per_shard=24)
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                       HF_DATASETS_CACHE=str(tmp_path / "datasets-cache"))  # fmt: skip
    command = [sys.executable, "-m", "modeling_vlp.commands", "pretrain", "--family", "dual", "--preset", "dual-tiny",
               "--dataset", f"{tmp_path}/shards/{{00000..00003}}.tar", "--max-steps", "8", "--save-steps", "4",
               "--per-device-train-batch-size", "8", "--logging-steps", "1", "--vocab-size", "100",
               "--dataloader-num-workers", "1", "--num-validation", "8", "--shuffle-buffer", "8"]  # fmt: skip
    subprocess.run([*command, "--output-dir", str(tmp_path / "whole")], env=environment, check=True,
                   capture_output=True)  # fmt: skip
    killed = subprocess.Popen([*command, "--output-dir", str(tmp_path / "resumed")], env=environment,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    marker = tmp_path / "resumed" / "checkpoint-4" / "trainer_state.json"
    deadline = time.time() + 300
    while not marker.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert marker.exists()
    subprocess.run([*command, "--output-dir", str(tmp_path / "resumed")], env=environment, check=True,
                   capture_output=True)  # fmt: skip

    def losses(folder):
        history = json.load(open(folder / "trainer_state.json"))["log_history"]
        return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}

    whole, resumed = losses(tmp_path / "whole"), losses(tmp_path / "resumed")
    assert [resumed[step] for step in range(5, 9)] == [whole[step] for step in range(5, 9)]
    assert not (tmp_path / "datasets-cache").exists() or not any((tmp_path / "datasets-cache").rglob("*.arrow"))

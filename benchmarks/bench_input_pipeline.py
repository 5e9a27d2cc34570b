"""Input pipeline: images per second from the same webdataset shards to model-ready 224 px batches, ours
(`ImageTextStream` + `VLPCollator` in a `StatefulDataLoader`) against open_clip's `open_clip_train.data.get_wds_dataset`
(its `image_transform` at 224 px and its tokenizer), same workers and batch size, measured in the same run; and the
peak RSS of our stream over 1x and 10x as many shards (memory must not grow with the corpus).

    python benchmarks/bench_input_pipeline.py [--shards 8] [--per-shard 64] [--batch-size 64] [--workers 1] [--batches 16]
"""

import argparse
import io
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from types import SimpleNamespace

import numpy as np
from PIL import Image


def write_shards(folder: str, shards: int, per_shard: int, side: int = 320, offset: int = 0) -> str:
    """JPEG photos-like noise at `side` px with captions, img2dataset layout; returns the brace pattern."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (side // 8, side // 8, 3), dtype=np.uint8)
    for shard in range(shards):
        with tarfile.open(os.path.join(folder, f"{offset + shard:05d}.tar"), "w") as tar:
            for index in range(per_shard):
                key = f"{(offset + shard) * per_shard + index:09d}"
                image = Image.fromarray(np.roll(base, index, axis=0)).resize((side, side), Image.BILINEAR)
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=90)
                for extension, payload in (("jpg", buffer.getvalue()), ("txt", f"a photo number {key}".encode()),
                                           ("json", json.dumps({"key": key}).encode())):  # fmt: skip
                    info = tarfile.TarInfo(f"{key}.{extension}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return os.path.join(folder, f"{{{offset:05d}..{offset + shards - 1:05d}}}.tar")


def ours(pattern: str, batch_size: int, workers: int):
    from torchdata.stateful_dataloader import StatefulDataLoader

    from modeling_vlp.data.streaming import stream_image_text
    from modeling_vlp.processors.image_processing_vlp import VLPImageProcessor
    from modeling_vlp.processors.processing_vlp import VLPProcessor
    from modeling_vlp.training.collators import VLPCollator

    image_processor = VLPImageProcessor(
        size={"height": 224, "width": 224}, do_center_crop=False, resize_backend="torchvision",
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )  # fmt: skip
    collator = VLPCollator(VLPProcessor(image_processor, _clip_tokenizer()), max_length=77)
    stream = stream_image_text(pattern, seed=0)
    return StatefulDataLoader(stream, batch_size=batch_size, num_workers=workers, collate_fn=collator,
                              persistent_workers=workers > 0, drop_last=True)  # fmt: skip


def _clip_tokenizer():
    """A transformers CLIP tokenizer built from open_clip's BPE vocabulary (no download)."""
    import gzip

    import open_clip
    from transformers import CLIPTokenizer

    path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    merges = gzip.open(path).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    folder = tempfile.mkdtemp()
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(merge.split()) for merge in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    json.dump({token: index for index, token in enumerate(vocab)}, open(os.path.join(folder, "vocab.json"), "w"))
    open(os.path.join(folder, "merges.txt"), "w").write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), pad_token="<|endoftext|>")


def _bytes_to_unicode():
    characters = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = characters[:]
    extra = 0
    for byte in range(256):
        if byte not in characters:
            characters.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(characters, [chr(code) for code in codes]))


def open_clip_loader(pattern: str, batch_size: int, workers: int, samples: int):
    from open_clip import get_tokenizer
    from open_clip.transform import image_transform
    import open_clip_train.data as open_clip_data
    from webdataset.tariterators import tar_file_expander

    # webdataset 1.0 ends each shard with an empty marker that open_clip_train's group_by_keys_nothrow cannot take
    # (KeyError 'fname'; webdataset #384, open_clip #935): the fix given there.
    open_clip_data.tar_file_expander = lambda *args, **kwargs: tar_file_expander(*args, eof_value=None, **kwargs)
    get_wds_dataset = open_clip_data.get_wds_dataset

    args = SimpleNamespace(
        train_data=pattern, val_data=None, train_num_samples=samples, dataset_resampled=False,
        train_data_upsampling_factors=None, seed=0, batch_size=batch_size, workers=workers, world_size=1,
    )  # fmt: skip
    preprocess = image_transform(224, is_train=True, mean=None, std=None)
    return get_wds_dataset(args, preprocess, is_train=True, tokenizer=get_tokenizer("ViT-B-32")).dataloader


def images_per_second(loader, batches: int, batch_size: int) -> float:
    iterator = iter(loader)
    next(iterator)  # start-up (workers, first shard) excluded
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def _peak_rss_child(pattern: str, rows: int) -> None:
    from modeling_vlp.data.streaming import stream_image_text

    stream = iter(stream_image_text(pattern, seed=0))
    for _ in range(rows):
        next(stream)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def peak_rss_mib(pattern: str, rows: int) -> float:
    """Peak RSS (MiB) of a fresh process that streams `rows` rows of `pattern`."""
    code = f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import bench_input_pipeline as b; b._peak_rss_child({pattern!r}, {rows})"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--per-shard", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        pattern = write_shards(folder, args.shards, args.per_shard)
        total = args.shards * args.per_shard
        results = {}
        for name in ("open_clip", "ours", "open_clip", "ours"):  # interleaved, best of two each
            loader = (ours(pattern, args.batch_size, args.workers) if name == "ours"
                      else open_clip_loader(pattern, args.batch_size, args.workers, total * 4))  # fmt: skip
            rate = images_per_second(loader, args.batches, args.batch_size)
            results[name] = max(results.get(name, 0.0), rate)
            del loader
        print(f"input pipeline, {args.workers} workers, batch {args.batch_size}, 320 px JPEG -> 224 px batches:")
        print(f"  open_clip get_wds_dataset: {results['open_clip']:.1f} images/s")
        print(f"  ours (ImageTextStream + VLPCollator): {results['ours']:.1f} images/s")
        print(f"  ratio ours / open_clip: {results['ours'] / results['open_clip']:.2f}x")

        big = tempfile.mkdtemp(dir=folder)
        small_pattern = write_shards(big, args.shards, 16, side=64)
        large_pattern = write_shards(big, args.shards * 9, 16, side=64, offset=args.shards)
        large_pattern = f"{small_pattern}::{large_pattern}"
        rows = args.shards * 16
        small_rss, large_rss = peak_rss_mib(small_pattern, rows), peak_rss_mib(large_pattern, rows * 10)
        print(f"peak RSS streaming {args.shards} shards: {small_rss:.0f} MiB; {args.shards * 10} shards (10x the rows): "
              f"{large_rss:.0f} MiB ({large_rss / small_rss:.2f}x)")


if __name__ == "__main__":
    multiprocessing.set_start_method("fork", force=True)
    main()

"""benchmarks/real_data.py (openclipart dataset builder + benchmark harness), `vlp pretrain --text-model` and the
collator's random resized crop, on a handful of SVG files written here (no openclipart install needed)."""

import hashlib
import importlib.util
import json
import os
import sys

import pytest
import torch
from PIL import Image


pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = importlib.util.spec_from_file_location("real_data", os.path.join(ROOT, "benchmarks", "real_data.py"))
real_data = importlib.util.module_from_spec(SPEC)
sys.modules["real_data"] = real_data  # pickled by name into the rendering processes
SPEC.loader.exec_module(real_data)

SVG = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
     xmlns:cc="http://web.resource.org/cc/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
     {size}>
  <metadata>
    <rdf:RDF>
      <cc:Work rdf:about="">
        <dc:title>{title}</dc:title>
        <dc:description>{description}</dc:description>
        <dc:creator><cc:Agent><dc:title>Some Author</dc:title></cc:Agent></dc:creator>
      </cc:Work>
    </rdf:RDF>
  </metadata>
  <rect x="0" y="0" width="{width}" height="{height}" fill="{colour}"/>
</svg>
"""


def write_svg(path, title, description="", colour="red", width=40, height=40, size=None):
    size = size if size is not None else f'width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(SVG.format(title=title, description=description, colour=colour, width=width, height=height,
                                size=size))  # fmt: skip


def is_test(relative_path):
    return int(hashlib.sha1(relative_path.encode()).hexdigest()[:8], 16) % 10 == 0


def names_in_split(prefix, want_test, count):
    names, index = [], 0
    while len(names) < count:
        name = f"{prefix}{index}.svg"
        if is_test(name) == want_test:
            names.append(name)
        index += 1
    return names


@pytest.fixture(scope="module")
def svg_root(tmp_path_factory):
    """Three training drawings and two test drawings (by the hash rule), a broken one, one without a usable title
    and one that is not XML."""
    root = tmp_path_factory.mktemp("openclipart")
    train_names = names_in_split("animals/a", False, 3)
    test_names = names_in_split("plants/p", True, 2)
    drawings = [
        (train_names[0], "  Red\n  square  ", "A plain red square.", "red", 40, 40),
        (train_names[1], "Blue bar", "", "blue", 10, 80),  # tall: scaled to the height, padded with white
        (train_names[2], "Green square", "Green square", "green", 40, 40),  # the description repeats the title
        (test_names[0], "Yellow square", "", "yellow", 40, 40),
        (test_names[1], "Black square", "", "black", 40, 40),
    ]
    for name, title, description, colour, width, height in drawings:
        write_svg(str(root / name), title, description, colour, width, height)
    write_svg(str(root / "broken.svg"), "Broken drawing", size="")  # no size at all: cairosvg refuses it
    write_svg(str(root / "7.svg"), "")  # no title, and no words in the file name
    (root / "not_xml.svg").write_text("<svg <<<")
    return {"root": str(root), "train": train_names, "test": test_names}


@pytest.fixture(scope="module")
def dataset(svg_root, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("data") / "openclipart-32")
    info = real_data.build_openclipart_dataset(output, svg_root["root"], image_size=32, workers=1, show_progress=False)
    return {"dir": output, "info": info}


def read_metadata(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def test_metadata_and_captions(svg_root):
    title, description = real_data.parse_svg_metadata(os.path.join(svg_root["root"], svg_root["train"][0]))
    assert (title, description) == ("Red square", "A plain red square.")  # the work's title, not the author's
    assert real_data.make_caption("Red square", "A plain red square.") == "Red square. A plain red square."
    assert real_data.make_caption("Green square", "Green square") == "Green square"
    long = real_data.make_caption("Title", "word " * 100, max_chars=30)
    assert long == "Title. word word word word" and len(long) <= 30
    assert real_data.file_name_words("icons/flat-theme/music_halfnote2.svg") == "music halfnote"
    for name in svg_root["train"] + svg_root["test"] + ["x/y.svg", "z.svg"]:
        assert real_data.split_of(name) == ("test" if is_test(name) else "train")


def test_build_dataset_splits_renders_and_counts_skips(svg_root, dataset):
    info, directory = dataset["info"], dataset["dir"]
    assert info["counts"] == {"train": 3, "test": 2}
    assert info["skipped"]["render_failed"] == 1 and list(info["render_failures"]) == ["broken.svg"]
    assert info["skipped"]["no_usable_title"] == 1 and info["skipped"]["unparsable_xml"] == 1
    train = read_metadata(os.path.join(directory, "train", "metadata.jsonl"))
    test = read_metadata(os.path.join(directory, "test", "metadata.jsonl"))
    assert sorted(row["source"] for row in train) == sorted(svg_root["train"])
    assert sorted(row["source"] for row in test) == sorted(svg_root["test"])
    captions = {row["source"]: row["caption"] for row in train}
    assert captions[svg_root["train"][0]] == "Red square. A plain red square."
    assert captions[svg_root["train"][2]] == "Green square"
    bar = next(row for row in train if row["source"] == svg_root["train"][1])
    image = Image.open(os.path.join(directory, "train", bar["file_name"]))
    assert image.size == (32, 32) and image.mode == "RGB"
    assert image.getpixel((0, 16)) == (255, 255, 255)  # padding beside the tall bar
    red, green, blue = image.getpixel((16, 16))
    assert blue > 200 and red < 50 and green < 50
    # Built once: a second call reuses the folder even without the SVGs.
    again = real_data.build_openclipart_dataset(directory, "/nonexistent", image_size=32, show_progress=False)
    assert again == info


def test_benchmark_harness_end_to_end(svg_root, dataset, tmp_path):
    output = str(tmp_path / "runs")
    summary = real_data.main([
        "--steps", "3", "--batch-size", "2", "--image-size", "32", "--preset", "dual-tiny", "--max-text-length", "16",
        "--vocab-size", "40", "--data-dir", dataset["dir"], "--output-dir", output, "--skip-minilm",
        "--runs", "ours,ours_crop,clip,ours_clip_init",
    ])  # fmt: skip
    assert list(summary["results"]) == ["ours", "ours_crop", "clip", "ours_clip_init"]
    for result in summary["results"].values():
        assert result["metrics"]["num_images"] == 2
        assert len(result["losses"]) == 3 and result["train_runtime"] > 0
    assert "--random-crop-scale" in summary["results"]["ours_crop"]["command"]
    assert "--random-crop-scale" not in summary["results"]["ours"]["command"]
    # The baseline reads the shared tokenizer's vocabulary and ids and pools the text at its eos token.
    with open(os.path.join(output, "tokenizer", "tokenizer_config.json")) as handle:
        assert "VLPTokenizer" in handle.read()
    with open(os.path.join(output, "clip", "config.json")) as handle:
        clip_text = json.load(handle)["text_config"]
    with open(os.path.join(output, "ours", "config.json")) as handle:
        ours_text = json.load(handle)["text_config"]
    for key in ("vocab_size", "pad_token_id", "eos_token_id", "hidden_size", "num_hidden_layers",
                "max_position_embeddings"):  # fmt: skip
        assert clip_text[key] == ours_text[key], key
    with open(os.path.join(output, "results.md")) as handle:
        table = handle.read()
    assert "CLIPModel + Trainer" in table and "| chance |" in table
    assert Image.open(os.path.join(output, "losses.png")).size == (900, 480)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizer

    path = tmp_path_factory.mktemp("tiny-bert")
    words = ["red", "blue", "green", "yellow", "black", "square", "bar", "a", "plain", "."]
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(str(path))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=15, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    BertModel(config).save_pretrained(str(path))
    return str(path)


def test_pretrain_with_a_pretrained_text_model(dataset, tiny_bert, tmp_path):
    from transformers import AutoTokenizer, BertModel

    from modeling_vlp import VLPDualEncoderModel
    from modeling_vlp.commands import main
    from modeling_vlp.commands.arguments import PretrainArguments
    from modeling_vlp.commands.common import build_config, build_model_with_text_model

    output = str(tmp_path / "run")
    argv = ["pretrain", "--family", "dual", "--preset", "dual-tiny", "--dataset", dataset["dir"], "--output-dir", output,
            "--text-model", tiny_bert, "--max-text-length", "8", "--max-steps", "2", "--per-device-train-batch-size", "2",
            "--save-strategy", "no", "--logging-steps", "1"]  # fmt: skip
    assert main(argv) == 0
    model = VLPDualEncoderModel.from_pretrained(output)
    assert isinstance(model.text_model, BertModel) and model.config.vision_config.image_size == 32
    assert AutoTokenizer.from_pretrained(output).model_max_length == 8
    with open(os.path.join(output, "eval_results.json")) as handle:
        assert json.load(handle)["num_images"] == 2

    # Built from the folder, the text tower holds its pretrained weights (post_init does not re-initialise them).
    args = PretrainArguments(text_model=tiny_bert, preset="dual-tiny")
    built = build_model_with_text_model(build_config(args, "dual-tiny"), tiny_bert)
    reference = BertModel.from_pretrained(tiny_bert).state_dict()
    for name, value in built.text_model.state_dict().items():
        torch.testing.assert_close(value, reference[name], rtol=0, atol=0)
    assert built.text_model.config._attn_implementation == "sdpa"

    with pytest.raises(ValueError, match="--text-layers cannot change the pretrained text tower"):
        main(argv[:-6] + ["--text-layers", "1", "--output-dir", str(tmp_path / "refused")])


def test_random_resized_crop():
    from modeling_vlp.training.collators import VLPCollator, random_resized_crop

    image = Image.new("RGB", (60, 40), "white")
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        crop = random_resized_crop(image, 0.5, generator)
        share = crop.width * crop.height / (60 * 40)
        # Ten draws that do not fit (a 4/3 crop of most of a 3/2 image may not) fall back to the whole image.
        assert crop.size == image.size or (0.45 <= share <= 1.0 and 0.7 <= crop.width / crop.height <= 1.4)
    assert len({random_resized_crop(image, 0.5, generator).size for _ in range(20)}) > 5
    first = [random_resized_crop(image, 0.5, torch.Generator().manual_seed(3)).size for _ in range(2)]
    assert first[0] == first[1]
    with pytest.raises(ValueError, match="random_crop_scale must be in"):
        VLPCollator(processor=None, random_crop_scale=1.5)

    class Recorder:
        def __call__(self, images, text, **kwargs):
            self.sizes = [image.size for image in images]
            return {"input_ids": torch.zeros(len(text), 2, dtype=torch.long)}

    rows = [{"image": Image.new("RGB", (64, 64), "white"), "caption": "a drawing"} for _ in range(8)]
    sizes = {}
    for name, scale, seed in (("whole", None, 0), ("crop", 0.5, 0), ("again", 0.5, 0), ("other", 0.5, 1)):
        recorder = Recorder()
        VLPCollator(recorder, random_crop_scale=scale, seed=seed)(rows)
        sizes[name] = recorder.sizes
    assert sizes["whole"] == [(64, 64)] * 8
    assert sizes["crop"] != sizes["whole"] and all(w * h >= 0.45 * 64 * 64 for w, h in sizes["crop"])
    assert sizes["crop"] == sizes["again"] and sizes["crop"] != sizes["other"]

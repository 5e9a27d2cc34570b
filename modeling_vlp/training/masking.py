"""Masking for the masked-modeling objectives, as plain functions of tensors.

Collators call these on CPU with their own seeded `torch.Generator`, so a run's masks are reproducible and a
`DataLoader` worker draws from its own stream. Each function also takes tensors on an accelerator: the random
numbers are drawn on the generator's device and moved.

Every function guarantees at least one masked position in each row that has something to mask: with tiny
batches and short captions a 15% rate often masks nothing in a row, and a batch with no masked position at all
gives a NaN masked-modeling loss (a mean over zero elements).
"""

import math

import torch
import torch.nn.functional as F


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    generator_device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=generator_device).to(device)


def _choose_per_row(valid: torch.Tensor, counts: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A bool mask choosing `counts[b]` positions uniformly at random among the `valid[b]` ones of each row."""
    scores = _rand(tuple(valid.shape), generator, valid.device).masked_fill(~valid, math.inf)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return (ranks < counts[:, None]) & valid


def _check_ratio(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}.")


def mask_tokens_for_mlm(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masked language modeling corruption.

    Each maskable token (not special, not padding) is selected with `probability`; a row with maskable tokens but
    none selected gets one selected at random. Selected tokens become `mask_token_id` 80% of the time, a uniformly
    random token of the vocabulary 10% of the time, and stay unchanged 10% of the time.

    Args:
        input_ids: `(B, T)` token ids.
        special_tokens_mask: `(B, T)` bool, True on special tokens (BOS/CLS, EOS/SEP, PAD, ...), never masked.
        mask_token_id: Id of the mask token.
        vocab_size: Random replacements are drawn from `[0, vocab_size)`.
        probability: Share of maskable tokens selected, in [0, 1]; 0 selects nothing (and labels are all -100).
        generator: Source of randomness (a seeded `torch.Generator` makes the masks reproducible).
        attention_mask: `(B, T)`, 0 on padding, which is never masked.

    Returns:
        `masked_input_ids` `(B, T)` and `mlm_labels` `(B, T)`: the original id on selected tokens, -100 elsewhere.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}.")
    if special_tokens_mask.shape != input_ids.shape:
        raise ValueError(
            f"special_tokens_mask has shape {tuple(special_tokens_mask.shape)}; expected the shape of input_ids "
            f"{tuple(input_ids.shape)}."
        )
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; expected the shape of input_ids "
            f"{tuple(input_ids.shape)}."
        )
    if vocab_size < 1 or not 0 <= mask_token_id < vocab_size:
        raise ValueError(
            f"mask_token_id must be in [0, vocab_size); got mask_token_id={mask_token_id}, vocab_size={vocab_size}."
        )
    _check_ratio("probability", probability)
    device = input_ids.device
    maskable = ~special_tokens_mask.bool()
    if attention_mask is not None:
        maskable &= attention_mask.bool()
    if probability == 0:
        return input_ids.clone(), torch.full_like(input_ids, -100)

    selected = (_rand(tuple(input_ids.shape), generator, device) < probability) & maskable
    empty_rows = maskable.any(dim=1) & ~selected.any(dim=1)
    if empty_rows.any():
        selected |= _choose_per_row(maskable, empty_rows.long(), generator)

    labels = input_ids.masked_fill(~selected, -100)
    draw = _rand(tuple(input_ids.shape), generator, device)
    to_mask = selected & (draw < 0.8)
    to_random = selected & (draw >= 0.8) & (draw < 0.9)
    generator_device = generator.device if generator is not None else torch.device("cpu")
    random_ids = torch.randint(vocab_size, tuple(input_ids.shape), generator=generator, device=generator_device)
    masked = input_ids.masked_fill(to_mask, mask_token_id)
    masked = torch.where(to_random, random_ids.to(device=device, dtype=input_ids.dtype), masked)
    return masked, labels


def _mask_counts(valid: torch.Tensor, ratio: float) -> torch.Tensor:
    """round(ratio * valid) per row, at least 1 where the row has a valid position and ratio > 0."""
    num_valid = valid.sum(dim=1)
    counts = torch.round(num_valid.double() * ratio).long()
    if ratio > 0:
        counts = torch.maximum(counts, (num_valid > 0).long())
    return torch.minimum(counts, num_valid)


def random_patch_mask(
    batch_size: int,
    grid_height: int,
    grid_width: int,
    ratio: float,
    generator: torch.Generator | None = None,
    valid_mask: torch.Tensor | None = None,
    block_masking: bool = False,
    min_block_patches: int = 16,
) -> torch.Tensor:
    """Patches to mask for masked image modeling.

    Args:
        batch_size, grid_height, grid_width: The patch grid; patches are numbered row-major (as a flattened
            `(grid_height, grid_width)` grid, the order of ViT's patch tokens).
        ratio: Share of the valid patches of each row to mask, in [0, 1]: exactly `round(ratio * num_valid)`
            patches, at least one when `ratio > 0`.
        generator: Source of randomness.
        valid_mask: `(B, grid_height * grid_width)` bool, False on patches that only hold padding (of a padded
            variable-size image); those are never masked. Defaults to all valid.
        block_masking: BEiT's blockwise masking: rectangles of at least `min_block_patches` patches (capped by
            the number to mask) with aspect ratios in [0.3, 1/0.3], placed at random until the count is reached (the
            last few patches are random when no block fits). `False` masks uniformly random patches.
        min_block_patches: Smallest block of the blockwise masking (BEiT: 16 on a 14 x 14 grid).

    Returns:
        `(B, grid_height * grid_width)` bool, True = masked.
    """
    _check_ratio("ratio", ratio)
    if batch_size < 1 or grid_height < 1 or grid_width < 1:
        raise ValueError(
            f"batch_size, grid_height and grid_width must be positive, got {batch_size}, {grid_height}, {grid_width}."
        )
    num_patches = grid_height * grid_width
    if valid_mask is None:
        valid = torch.ones(batch_size, num_patches, dtype=torch.bool)
    else:
        if tuple(valid_mask.shape) != (batch_size, num_patches):
            raise ValueError(
                f"valid_mask has shape {tuple(valid_mask.shape)}; expected (batch_size, grid_height * grid_width) = "
                f"({batch_size}, {num_patches})."
            )
        valid = valid_mask.bool()
    counts = _mask_counts(valid, ratio)
    if not block_masking:
        return _choose_per_row(valid, counts, generator)
    rows = [
        _block_mask_row(valid[row].view(grid_height, grid_width), int(counts[row]), min_block_patches, generator)
        for row in range(batch_size)
    ]
    return torch.stack(rows).view(batch_size, num_patches).to(valid.device)


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(_rand((), generator, torch.device("cpu")))


def _block_mask_row(valid: torch.Tensor, count: int, min_block_patches: int, generator) -> torch.Tensor:
    """BEiT's `MaskingGenerator` for one image, restricted to valid patches, topped up at random to `count`."""
    valid = valid.cpu()
    height, width = valid.shape
    mask = torch.zeros_like(valid)
    log_ratio = (math.log(0.3), math.log(1 / 0.3))
    attempts_left = 10 * max(count, 1)
    while int(mask.sum()) < count and attempts_left > 0:
        remaining = count - int(mask.sum())
        attempts_left -= 1
        target_area = _uniform(min(min_block_patches, remaining), remaining, generator)
        aspect = math.exp(_uniform(*log_ratio, generator))
        block_height = int(round(math.sqrt(target_area * aspect)))
        block_width = int(round(math.sqrt(target_area / aspect)))
        if not (1 <= block_height <= height and 1 <= block_width <= width):
            continue
        top = int(_uniform(0, height - block_height + 1, generator))
        left = int(_uniform(0, width - block_width + 1, generator))
        block = torch.zeros_like(valid)
        block[top : top + block_height, left : left + block_width] = True
        new = block & valid & ~mask
        if 0 < int(new.sum()) <= remaining:
            mask |= new
    remaining = count - int(mask.sum())
    if remaining > 0:
        flat_valid = (valid & ~mask).view(1, -1)
        mask |= _choose_per_row(flat_valid, torch.tensor([remaining]), generator).view(height, width)
    return mask


def random_region_mask(
    visual_attention_mask: torch.Tensor, ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Regions to mask for masked region modeling: `round(ratio * num_regions)` of each row's real regions (at
    least one when `ratio > 0`), never padding.

    Args:
        visual_attention_mask: `(B, N)`, 1 on real regions, 0 on padding.
        ratio: Share of the real regions to mask, in [0, 1].
        generator: Source of randomness.

    Returns:
        `(B, N)` bool, True = masked.
    """
    _check_ratio("ratio", ratio)
    if visual_attention_mask.dim() != 2:
        raise ValueError(
            f"visual_attention_mask must have shape (batch, num_regions), got {tuple(visual_attention_mask.shape)}."
        )
    valid = visual_attention_mask.bool()
    return _choose_per_row(valid, _mask_counts(valid, ratio), generator)


def patch_valid_mask(pixel_mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """`(B, H, W)` pixel mask (1 = real pixel) -> `(B, (H // p) * (W // p))` bool, True on the patches a ViLT-style
    model keeps: the pixel mask resized to the patch grid by nearest neighbour, as ViLT does."""
    if pixel_mask.dim() != 3:
        raise ValueError(f"pixel_mask must have shape (batch, height, width), got {tuple(pixel_mask.shape)}.")
    grid = (pixel_mask.shape[1] // patch_size, pixel_mask.shape[2] // patch_size)
    return (F.interpolate(pixel_mask[:, None].float(), size=grid).squeeze(1) != 0).flatten(1)


__all__ = ["mask_tokens_for_mlm", "patch_valid_mask", "random_patch_mask", "random_region_mask"]

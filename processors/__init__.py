"""Image processor, caption tokenizer and processor; installed as `modeling_vlp.processors`."""

from .image_processing_vlp import VLPImageProcessor
from .processing_vlp import VLPProcessor
from .tokenization_vlp import VLPTokenizer


__all__ = ["VLPImageProcessor", "VLPProcessor", "VLPTokenizer"]

"""The one seam between modeling_vlp and the parts of transformers that are private or that moved between releases.

Everything here is either a private transformers name that has no public equivalent, or a difference between the
transformers releases we support. `tests/test_transformers_compat.py` tests each use on its own, so that the next
rename upstream fails one test that names it instead of many scattered ones. Model files import this module
relatively (it is copied with a checkpoint's remote code), so it imports nothing but transformers.
"""

from collections import OrderedDict

from transformers.cache_utils import Cache
from transformers.models.auto.auto_factory import _BaseAutoModelClass, _LazyAutoMapping
from transformers.utils import ModelOutput

# --- KV cache naming ------------------------------------------------------------------------------------------------
# transformers 5.24 renamed the cache of every output and `forward` from `past_key_values` to `cache` (the old name
# stays readable on outputs and accepted by `forward` for a while). Our outputs and `forward`s use the new name.

if hasattr(ModelOutput, "past_key_values"):
    # transformers >= 5.24: `output.past_key_values` is a deprecated alias of `output.cache` on every output.
    CacheModelOutput = ModelOutput
else:

    class CacheModelOutput(ModelOutput):
        """transformers < 5.24: outputs also answer to the old name of their `cache` field, as attribute and as key
        (which is how that `generate` finds the cache to pass back at the next step), like 5.24's own outputs."""

        @property
        def past_key_values(self):
            return self.cache

        def __contains__(self, key):
            return super().__contains__("cache" if key == "past_key_values" else key)

        def __getitem__(self, key):
            return super().__getitem__("cache" if key == "past_key_values" else key)


def cache_argument(cache: Cache | None, kwargs: dict) -> Cache | None:
    """The cache a `forward` was given: `cache`, or `past_key_values` (popped from `kwargs`) as transformers < 5.24's
    `generate` and older callers pass it."""
    legacy = kwargs.pop("past_key_values", None)
    if legacy is None:
        return cache
    if cache is not None:
        raise ValueError("Pass the KV cache as `cache` or as `past_key_values`, not both.")
    return legacy


# --- Auto classes -----------------------------------------------------------------------------------------------------
# transformers has no public way to define a new Auto class (there is no "image-text-retrieval" task upstream): the
# factory base class and the lazy mapping are private. Registering into such a class is public (`.register`).


AutoModelFactoryBase = _BaseAutoModelClass


def empty_auto_mapping() -> _LazyAutoMapping:
    """The `_model_mapping` of a new Auto class: no built-in entries, ours registered into it."""
    return _LazyAutoMapping(OrderedDict(), OrderedDict())


__all__ = [
    "AutoModelFactoryBase",
    "CacheModelOutput",
    "cache_argument",
    "empty_auto_mapping",
]

"""The transformers releases modeling_vlp supports, checked at `import modeling_vlp` before any model code runs.

Imports nothing from transformers: an unsupported release must give one clear line, not a traceback from inside it.
"""

from importlib import metadata

from packaging.specifiers import SpecifierSet
from packaging.version import Version

# Kept equal to setup.cfg's `transformers` requirement (a test checks it): the releases the test suite has passed on.
SUPPORTED_TRANSFORMERS = ">=5.0,<5.25"


def check_transformers_version(installed: str | None = None, supported: str = SUPPORTED_TRANSFORMERS) -> None:
    """Raise an ImportError of one line when the installed transformers is outside `supported`."""
    if installed is None:
        try:
            installed = metadata.version("transformers")
        except metadata.PackageNotFoundError:
            raise ImportError(f"modeling_vlp needs transformers{supported}; it is not installed.") from None
    if Version(installed) not in SpecifierSet(supported, prereleases=True):
        raise ImportError(
            f"modeling_vlp supports transformers{supported}, found transformers {installed}: "
            f"install a supported release (pip install 'transformers{supported}')."
        )


__all__ = ["SUPPORTED_TRANSFORMERS", "check_transformers_version"]

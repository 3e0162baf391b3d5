"""GeoMIM: multi-camera backbones pretrained by masked image modeling against LiDAR BEV features.

`import geomim` registers the models with timm: `timm.create_model("geomim_base", pretrained=True)`.
"""

import os
import sys

__version__ = "0.1.0"
__all__ = ["GeoMIMSwin", "__version__"]


def _started_as_command() -> bool:
    """Whether this import is Python finding one of our command lines (`python -m geomim.X`,
    where argv[0] is "-m" until the module is found, or an installed `geomim-X` script): those
    import the models themselves where they need them, after parsing, so `--help` answers before
    torch and timm load."""
    program = sys.argv[0] if sys.argv else ""
    return program == "-m" or os.path.basename(program).startswith("geomim-")


def __getattr__(name: str):
    if name == "GeoMIMSwin":
        from geomim.models import GeoMIMSwin

        return GeoMIMSwin
    raise AttributeError(f"module 'geomim' has no attribute {name!r}")


if not _started_as_command():
    from geomim.models import GeoMIMSwin  # registers every model with timm

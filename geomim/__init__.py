"""GeoMIM: multi-camera backbones pretrained by masked image modeling against LiDAR BEV features.

`import geomim` registers the models with timm: `timm.create_model("geomim_base", pretrained=True)`.
"""

from geomim.models import GeoMIMSwin

__version__ = "0.1.0"
__all__ = ["GeoMIMSwin", "__version__"]

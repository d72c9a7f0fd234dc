"""SED open-vocabulary segmentation (Xie et al., CVPR 2024) in plain PyTorch on open_clip.

Reproduces xb534/SED @ db20d93 at inference: ConvNeXt CLIP towers from stock
open_clip_torch, the cost-volume decoder and category early rejection written here.
"""

from .build import build_sed
from .model import SED

__all__ = ["SED", "build_sed"]

"""Generic building blocks (no DERM or log knowledge): MLP, MaskNet, DHEN, feature encoders."""

from trainers.modules.dhen import DHEN, DHENLayer
from trainers.modules.masknet import MaskBlock, MaskNet
from trainers.modules.mlp import MLP

__all__ = ["DHEN", "DHENLayer", "MLP", "MaskBlock", "MaskNet"]

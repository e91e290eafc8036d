"""LightningModules: training (FP32 or fixed-plan QAT) and the supernet search."""
from .common import LMModule, SpaceConfig, load_net_weights
from .supernet import SupernetModule
from .train import LMTrainModule

__all__ = ["LMModule", "SpaceConfig", "load_net_weights", "SupernetModule", "LMTrainModule"]

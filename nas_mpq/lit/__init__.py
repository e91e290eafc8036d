"""LightningModules: training (FP32 or fixed-plan QAT), the supernet search, and finalize."""
from .common import LMModule, SpaceConfig, load_net_weights, stream_perplexity
from .finalize import FINALIZE_METHODS, FinalizeModule
from .supernet import SupernetModule
from .train import LMTrainModule

__all__ = ["LMModule", "SpaceConfig", "load_net_weights", "stream_perplexity", "SupernetModule", "LMTrainModule",
           "FinalizeModule", "FINALIZE_METHODS"]

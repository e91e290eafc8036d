"""LightningModules: training (FP32 or fixed-plan QAT), the supernet search, and finalize."""
from .checkpoint_io import AtomicCheckpointIO
from .common import LMModule, SpaceConfig, batch_logits, load_net_weights, stream_metrics
from .finalize import FINALIZE_METHODS, FinalizeModule
from .supernet import SupernetModule
from .train import LMTrainModule

__all__ = ["AtomicCheckpointIO", "LMModule", "SpaceConfig", "batch_logits", "load_net_weights", "stream_metrics", "SupernetModule", "LMTrainModule",
           "FinalizeModule", "FINALIZE_METHODS"]

"""LightningModules: training (FP32 or fixed-plan QAT), the supernet search, and finalize."""
from nas_mpq.metrics import batch_logits

from .checkpoint_io import AtomicCheckpointIO
from .common import TaskModule, SpaceConfig, load_net_weights
from .data_contract import SearchData, check_datamodule
from .finalize import FINALIZE_METHODS, FinalizeModule
from .supernet import SupernetModule
from .train import TrainModule

__all__ = ["AtomicCheckpointIO", "TaskModule", "SpaceConfig", "batch_logits", "load_net_weights", "SupernetModule",
           "TrainModule", "FinalizeModule", "FINALIZE_METHODS", "SearchData", "check_datamodule"]

"""Lightning's checkpoints written the way every other result file is: beside their destination,
then renamed over it, so a run killed while saving keeps its previous last.ckpt whole; and read as
data only (`torch.load(weights_only=True)` whatever the torch version's default), so a checkpoint
given to `--resume` cannot run code.

Lightning's own writer stages the file in the system's temporary directory and moves it, which is
a copy, not a rename, when that directory is on another file system than the run.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from nas_mpq.files import atomic_output


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose `save_checkpoint` is atomic on the local file system.

    Example:
        >>> trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_output(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)

"""What the LM LightningModules share: the search-space config, truncated BPTT with a carried
hidden state, perplexity metrics, per-epoch seeding, and loading network weights."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MeanMetric

from nas_mpq.search import SearchSpace, search_groups
from search_spaces import get_search_space

OptimizerFactory = Callable[[Iterable[Any]], torch.optim.Optimizer]


@dataclass
class SpaceConfig:
    """Which registered search space, and overrides of its defaults (None keeps the default)."""

    name: str = "lstm_lm"
    candidates: list[int] | None = None
    granularity: str | None = None
    method: str | None = None
    per_channel: bool | None = None

    def build(self) -> SearchSpace:
        overrides = {k: v for k, v in (("candidates", self.candidates), ("granularity", self.granularity),
                                       ("method", self.method), ("per_channel", self.per_channel))
                     if v is not None}
        return get_search_space(self.name).space(**overrides)


def detach_hidden(hidden: Any) -> Any:
    if isinstance(hidden, torch.Tensor):
        return hidden.detach()
    return None if hidden is None else tuple(detach_hidden(h) for h in hidden)


def load_net_weights(net: nn.Module, ckpt_path: str | Path) -> None:
    """Load the network weights of a Lightning checkpoint (keys "net.*") into `net`. Keys of the
    search machinery (choices.*) may be absent; any other mismatch is an error naming the keys."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{path} is not a readable Lightning checkpoint ({e})") from None
    weights = {k[4:]: v for k, v in state.items() if k.startswith("net.") and ".choices." not in k}
    own = {k: v for k, v in net.state_dict().items() if ".choices." not in k}
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    shapes = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or unexpected or shapes:
        raise ValueError(f"checkpoint {path} does not match the model: missing {missing}, "
                         f"unexpected {unexpected}, different shapes {shapes}")
    net.load_state_dict(weights, strict=False)


def weight_param_groups(net: nn.Module, exclude: Iterable[nn.Parameter] = ()) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the network's weights, then its quantizer scales (LSQ) without
    weight decay; parameters in `exclude` (the choices' theta) are left out."""
    skip = {id(p) for p in exclude}
    scales = {id(p) for g in search_groups(net) for p in g.choice.parameters()} - skip
    groups: list[dict[str, Any]] = [
        {"params": [p for p in net.parameters() if id(p) not in skip and id(p) not in scales]}]
    if scales:
        groups.append({"params": [p for p in net.parameters() if id(p) in scales], "weight_decay": 0.0})
    return groups


def perplexity(mean_loss: float) -> float:
    """exp(mean cross-entropy), capped so a diverged model reports a large finite number."""
    return math.exp(min(mean_loss, 50.0))


@torch.no_grad()
def stream_perplexity(net: nn.Module, batches: Iterable[tuple]) -> float:
    """Perplexity of `net` over (input, target, first) batches in order, carrying the hidden state
    as LMModule does, in a plain loop: no Trainer, no distributed metric sync, so one process can
    evaluate while others have finished."""
    was_training = net.training
    net.eval()
    total, count, hidden = 0.0, 0, None
    for x, y, first in batches:
        logits, hidden = net(x, None if first else hidden)
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"))
        count += y.numel()
    net.train(was_training)
    return perplexity(total / max(count, 1))


class LMModule(pl.LightningModule):
    """Base: runs the network over (input, target, first) batches, carrying its hidden state
    across batches and resetting it at the first batch of a pass; logs <stage>/loss and
    <stage>/ppl (perplexity over all tokens of the pass)."""

    def __init__(self, net: nn.Module, seed: int = 0) -> None:
        super().__init__()
        self.net = net
        self.seed = seed
        self._hidden: dict[str, Any] = {}
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_history: list[float] = []  # val/ppl per epoch, kept in checkpoints

    def lm_loss(self, batch: tuple, stream: str) -> torch.Tensor:
        x, y, first = batch
        hidden = None if first else self._hidden.get(stream)
        logits, hidden = self.net(x, hidden)
        self._hidden[stream] = detach_hidden(hidden)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # dropout masks depend on (seed, step, rank) only, so a resumed run continues exactly as
        # one that ran straight through, wherever it was stopped
        step = self.current_epoch * int(self.trainer.num_training_batches) + batch_idx
        torch.manual_seed((self.seed * 1_000_003 + step) * 101 + self.global_rank)

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        self.val_loss.update(self.lm_loss(batch, "val"), batch[1].numel())

    def test_step(self, batch: tuple, batch_idx: int) -> None:
        self.test_loss.update(self.lm_loss(batch, "test"), batch[1].numel())

    def on_validation_epoch_end(self) -> None:
        loss = self._log_ppl("val", self.val_loss)
        if not self.trainer.sanity_checking:
            self.val_history.append(perplexity(loss))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault("nas_mpq", {})["val_history"] = self.val_history

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.val_history = list(checkpoint.get("nas_mpq", {}).get("val_history", []))

    def on_test_epoch_end(self) -> None:
        self._log_ppl("test", self.test_loss)

    def _log_ppl(self, stage: str, metric: MeanMetric) -> float:
        loss = float(metric.compute())
        metric.reset()
        # the metric is already reduced over processes; sync_dist only tells Lightning so
        self.log(f"{stage}/loss", loss, sync_dist=True)
        self.log(f"{stage}/ppl", perplexity(loss), prog_bar=True, sync_dist=True)
        return loss

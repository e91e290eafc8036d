"""What the LightningModules share: the search-space config, batches run as the data contract
says (data_contract.py: a language model's hidden state carried across a stream, or plain
classifier batches), logged perplexity and accuracy (computed by nas_mpq.metrics), per-step
seeding, and loading network weights."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MeanMetric

from nas_mpq.metrics import forward_batch, perplexity
from nas_mpq.plan import PrecisionPlan
from nas_mpq.search import (GroupRule, MixedPrecisionChoice, SearchSpace, activation_groups, calibrate_activations_,
                            search_groups)
from search_spaces import build_space

OptimizerFactory = Callable[[Iterable[Any]], torch.optim.Optimizer]


@dataclass
class SpaceConfig:
    """Which search space, and overrides of its defaults (None keeps the default): `grouping` is
    how a layer's weight splits into groups (lstm_lm: gate, tensor; transformer_lm: tensor, head;
    cnn: tensor, block), `blocks` the number of heads (transformer_lm, grouping head) or of
    output-channel blocks (cnn, grouping block); `prune` adds the 0-bit candidate where the space
    allows it; `activation_candidates` searches the input bit-width of every Linear/Conv layer;
    `freq_buckets` splits a language model's embedding and softmax layer into that many frequency
    buckets of rows. `rules` (pattern over module or parameter names -> candidates, grouping,
    exclude) go in front of the space's own; a `name` nobody registered is a space of `rules`
    alone, for any network. `full_coverage` refuses, before training, a network with weights no
    rule excludes and no searchable layer covers (search_spaces.build_space)."""

    name: str = "lstm_lm"
    candidates: list[int] | None = None
    grouping: str | None = None
    method: str | None = None
    per_channel: bool | None = None
    blocks: int | None = None
    prune: bool | None = None
    activation_candidates: list[int] | None = None
    freq_buckets: int | None = None
    rules: list[GroupRule] | None = None
    full_coverage: bool | None = None

    def build(self) -> SearchSpace:
        return build_space(**asdict(self))

    def check_plan_settings(self, plan: PrecisionPlan) -> None:
        """ValueError naming the groups whose quantizer settings differ from the `method` or
        `per_channel` this config sets: a plan's groups carry their own, and those are used."""
        wanted = {k: v for k, v in (("method", self.method), ("per_channel", self.per_channel)) if v is not None}
        differ = sorted(n for n, g in plan.groups.items() if any(getattr(g, k) != v for k, v in wanted.items()))
        if differ:
            settings = ", ".join(f"{k}={v!r}" for k, v in wanted.items())
            raise ValueError(f"the space sets {settings}, but the plan's groups {differ} were searched with other "
                             "quantizer settings; the plan decides the quantizer of every group: drop "
                             f"{' and '.join(wanted)} from the space or search again with them")


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
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]  # data, never code
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{path} is not a readable Lightning checkpoint ({e})") from None
    weights = {k[4:]: v for k, v in state.items() if k.startswith("net.") and not _machinery(k)}
    own = {k: v for k, v in net.state_dict().items() if not _machinery(k)}
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    shapes = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or unexpected or shapes:
        raise ValueError(f"checkpoint {path} does not match the model: missing {missing}, "
                         f"unexpected {unexpected}, different shapes {shapes}")
    net.load_state_dict(weights, strict=False)


def _machinery(key: str) -> bool:
    """State-dict keys of the search machinery (weight and input choices), not network weights."""
    return ".choices." in key or "input_choice." in key


def weight_param_groups(net: nn.Module, exclude: Iterable[nn.Parameter] = ()) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the network's weights, then its quantizer scales (LSQ) and
    activation clipping values without weight decay; parameters in `exclude` (the choices'
    theta) are left out."""
    skip = {id(p) for p in exclude}
    choices = [g.choice for g in search_groups(net)] + [g.choice for g in activation_groups(net)]
    scales = {id(p) for c in choices for p in c.parameters()} - skip
    groups: list[dict[str, Any]] = [
        {"params": [p for p in net.parameters() if id(p) not in skip and id(p) not in scales]}]
    if scales:
        groups.append({"params": [p for p in net.parameters() if id(p) in scales], "weight_decay": 0.0})
    return groups


def check_plateau(lr_decay: float | None, lr_patience: int) -> None:
    """ValueError, before any training, for a learning-rate decay outside (0, 1) or a negative patience."""
    if lr_decay is not None and not 0.0 < lr_decay < 1.0:
        raise ValueError(f"lr_decay must be in (0, 1) (the factor the learning rate is multiplied by), got {lr_decay}")
    if lr_patience < 0:
        raise ValueError(f"lr_patience must be a non-negative number of epochs, got {lr_patience}")


def plateau_schedule(optimizer: torch.optim.Optimizer, lr_decay: float | None,
                     lr_patience: int = 0) -> torch.optim.Optimizer | dict[str, Any]:
    """`optimizer`, or Lightning's optimizer config with ReduceLROnPlateau on val/ppl: the
    learning rate is multiplied by `lr_decay` after `lr_patience` epochs without improvement."""
    if lr_decay is None:
        return optimizer
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=lr_decay,
                                                           patience=lr_patience)
    return {"optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val/ppl", "interval": "epoch"}}


class TaskModule(pl.LightningModule):
    """Base of the training, search and finalize modules, for a language model or a classifier:
    runs the network over its batches (the batch contract: nas_mpq.lit.data_contract), carrying a
    language model's hidden state across the batches of a stream; logs <stage>/loss, <stage>/ppl
    (exp of the mean cross-entropy over the pass: a language model's perplexity; for a classifier
    the same quantity, so one monitor serves every task) and, for a classifier, <stage>/acc."""

    def __init__(self, net: nn.Module, seed: int = 0) -> None:
        super().__init__()
        self.net = net
        self.seed = seed
        self._hidden: dict[str, Any] = {}
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_acc, self.test_acc = MeanMetric(), MeanMetric()
        self.val_history: list[float] = []  # val/ppl per epoch, kept in checkpoints

    def task_loss(self, batch: tuple, stream: str) -> torch.Tensor:
        """The mean cross-entropy of the batch (next-token or class), `stream` naming the hidden
        state a language model carries on."""
        return self._loss_and_accuracy(batch, stream)[0]

    def _loss_and_accuracy(self, batch: tuple, stream: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits, y, hidden, classifier = forward_batch(self.net, batch, self._hidden.get(stream))
        self._hidden[stream] = detach_hidden(hidden)
        accuracy = (logits.argmax(-1) == y).float().mean() if classifier else None
        return F.cross_entropy(logits, y), accuracy

    def setup(self, stage: str) -> None:
        # activation quantizers start from the same batch in every process (before DDP wraps);
        # without evaluation batches each calibrates on the first batch it sees
        evaluation_batches = getattr(self.trainer.datamodule, "evaluation_batches", None)
        if stage == "fit" and activation_groups(self.net) and callable(evaluation_batches):
            batch = next(iter(evaluation_batches("train")))
            calibrate_activations_(self.net, (batch[0],))

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer's step, then the kept scales forgotten (the search's manual steps call
        `clear_fitted_scales` themselves)."""
        super().optimizer_step(*args, **kwargs)
        self.clear_fitted_scales()

    def clear_fitted_scales(self) -> None:
        """Forget every choice's kept scales after the weights changed: they are kept while a
        weight's version counter stands, which fused optimizer steps and writes through `.data`
        do not move. A walk over the modules, no group is built or read from the device."""
        for module in self.net.modules():
            if isinstance(module, MixedPrecisionChoice):
                module.clear_stats()

    def training_batch_index(self, batch_idx: int) -> int:
        """The index of this training batch in the whole run (over epochs)."""
        return self.current_epoch * int(self.trainer.num_training_batches) + batch_idx

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # dropout masks depend on (seed, step, rank) only, so a resumed run continues exactly as
        # one that ran straight through, wherever it was stopped
        step = self.training_batch_index(batch_idx)
        torch.manual_seed((self.seed * 1_000_003 + step) * 101 + self.global_rank)

    def _eval_step(self, batch: tuple, stage: str, loss: MeanMetric, acc: MeanMetric) -> None:
        value, accuracy = self._loss_and_accuracy(batch, stage)
        loss.update(value, batch[1].numel())
        if accuracy is not None:
            acc.update(accuracy, batch[1].numel())

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_loss, self.val_acc)

    def test_step(self, batch: tuple, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_loss, self.test_acc)

    def on_validation_epoch_end(self) -> None:
        loss = self._log_metrics("val", self.val_loss, self.val_acc)
        if not self.trainer.sanity_checking:
            self.val_history.append(perplexity(loss))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault("nas_mpq", {})["val_history"] = self.val_history

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.val_history = list(checkpoint.get("nas_mpq", {}).get("val_history", []))

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_loss, self.test_acc)

    def _log_metrics(self, stage: str, loss_metric: MeanMetric, acc_metric: MeanMetric) -> float:
        # the metrics are already reduced over processes; sync_dist only tells Lightning so
        loss = float(loss_metric.compute())
        loss_metric.reset()
        self.log(f"{stage}/loss", loss, sync_dist=True)
        self.log(f"{stage}/ppl", perplexity(loss), prog_bar=True, sync_dist=True)
        if acc_metric.update_count:
            self.log(f"{stage}/acc", float(acc_metric.compute()), prog_bar=True, sync_dist=True)
            acc_metric.reset()
        return loss

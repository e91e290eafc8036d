"""A language model's output bias started at the log unigram probabilities of its training split.

A softmax layer's bias starts at zero, and Adam moves a parameter by about its learning rate per
step, so a short training run cannot take the bias to log-frequencies that span 10 nats (the
Transformer of configs/shakespeare_transformer: 1.6k steps at 1e-3, and its bias stayed within
+-0.13); the word frequencies are then learned through the embedding instead (BENCHMARKS.md,
"Transformer FP32: the softmax bias"). Starting the bias at the unigram prior (add-`smoothing`
counts) leaves the rest of the network the context.

    callbacks:
      - class_path: nas_mpq.lit.output_prior.UnigramOutputBias
        init_args: {layer: decoder}

Only an all-zero bias (as TransformerLM and LSTMLM build it) is set; any other (weights loaded
with `--init_ckpt`, or a layer that starts its bias at random) is left as it is, with a warning.
A resumed run restores its trained bias after this callback has run. List it before EMAWeights,
whose average starts as a copy of the model.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn


class UnigramOutputBias(pl.Callback):
    """At the start of fit, set the bias of the network's output layer `layer` (a dotted module
    name under the LightningModule's `net`) to log p(token) over the data module's training split
    (`split_tokens("train")`, as LMDataModule gives it), with `smoothing` added to every count,
    less its mean over the vocabulary: the softmax is the same, and weight decay pulls on the
    smallest values that give it."""

    def __init__(self, layer: str = "decoder", smoothing: float = 1.0) -> None:
        if not smoothing > 0:
            raise ValueError(f"smoothing must be a positive count, got {smoothing}")
        self.layer, self.smoothing = layer, smoothing

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        bias = self._bias(pl_module)
        if bool(bias.detach().any()):
            rank_zero_warn(f"UnigramOutputBias: the bias of {self.layer!r} is not all zeros (trained, or "
                           "initialised at random), so it is left as it is")
            return
        data = trainer.datamodule
        if not callable(getattr(data, "split_tokens", None)):
            raise ValueError(f"UnigramOutputBias needs a data module with split_tokens('train') (e.g. "
                             f"nas_mpq.data.LMDataModule), got {type(data).__name__}")
        tokens = data.split_tokens("train")
        if tokens.numel() and int(tokens.max()) >= bias.numel():
            raise ValueError(f"token id {int(tokens.max())} of the training split is out of range for the "
                             f"{bias.numel()} outputs of {self.layer!r}")
        counts = torch.bincount(tokens, minlength=bias.numel()).double() + self.smoothing
        with torch.no_grad():
            log_p = counts.log() - counts.sum().log()
            bias.copy_((log_p - log_p.mean()).to(bias))

    def _bias(self, pl_module: pl.LightningModule) -> nn.Parameter:
        net = getattr(pl_module, "net", None)
        if not isinstance(net, nn.Module):
            raise ValueError(f"UnigramOutputBias needs a LightningModule whose network is its `net` (as "
                             f"nas-mpq's modules), got {type(pl_module).__name__}")
        try:
            layer = net.get_submodule(self.layer)
        except AttributeError:
            linear = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
            raise ValueError(f"the network has no module {self.layer!r}; its linear layers: {linear}") from None
        bias = getattr(layer, "bias", None)
        if not isinstance(bias, torch.Tensor):
            raise ValueError(f"the network's {self.layer!r} ({type(layer).__name__}) has no bias to set")
        return bias

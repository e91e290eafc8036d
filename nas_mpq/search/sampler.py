"""The Gumbel-softmax sampler of the choices (ALGORITHMS.md section 2): one draw for every group's
logits at once, reproducible from its own generator, soft or straight-through hard."""
from __future__ import annotations

from typing import Any, Sequence

import torch


def one_hot(k: int, like: torch.Tensor) -> torch.Tensor:
    """The one-hot vector on index `k` with `like`'s length, dtype and device."""
    y = torch.zeros_like(like)
    y[k] = 1.0
    return y


class GumbelSampler:
    """Draws `y = softmax((theta + G) / tau)` with Gumbel noise G from its own torch.Generator, so a
    run is reproducible and a checkpoint can hold the generator state; `hard` gives the
    straight-through one-hot sample. Logits are vectors (one per choice)."""

    def __init__(self, tau: float = 5.0, hard: bool = False, seed: int = 0) -> None:
        if tau <= 0:
            raise ValueError(f"temperature tau must be positive, got {tau}")
        self.tau = float(tau)
        self.hard = hard
        self.fixed = False
        """True: training forwards draw nothing and run each choice's pinned candidate or argmax."""
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, theta: torch.Tensor) -> torch.Tensor:
        """One sample y for the logits theta."""
        return self.draw([theta])[0][0]

    def draw(self, thetas: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, int | None]]:
        """A sample y for each logit vector, in order, with the index y is one-hot on when hard
        (None when soft). The noise is drawn on the host and goes to the device in one copy. A hard
        sample's index is decided on the host: from y itself on the CPU, else from the logits
        read back in one transfer for all of them, and y is made one-hot on that index."""
        if not thetas:
            return []
        noise = self._gumbel([t.shape for t in thetas])
        moved = _to_devices(noise, thetas)
        kinds: dict[tuple, list[int]] = {}
        for i, t in enumerate(thetas):
            kinds.setdefault((t.shape, t.device, t.dtype), []).append(i)
        ys = list(thetas)  # each replaced by its sample below
        for same in kinds.values():  # the logits of one length, device and dtype in one pass
            mixed = torch.stack([thetas[i] for i in same]) + torch.stack([moved[i] for i in same])
            for i, y in zip(same, torch.softmax(mixed / self.tau, dim=-1).unbind(0)):
                ys[i] = y
        if not self.hard:
            return [(y, None) for y in ys]
        on_host = ys
        if any(t.device.type != "cpu" for t in thetas):
            logits = torch.cat([t.detach().reshape(-1) for t in thetas]).cpu().split([t.numel() for t in thetas])
            on_host = [torch.softmax((t + g.to(t.dtype)) / self.tau, dim=-1) for t, g in zip(logits, noise)]
        picks = torch.stack([y.detach().argmax() for y in on_host]).tolist()
        return [(one_hot(k, y.detach()) - y.detach() + y, k) for y, k in zip(ys, picks)]

    def _gumbel(self, shapes: Sequence[torch.Size]) -> list[torch.Tensor]:
        """Gumbel noise of each shape, drawn one after the other from the generator and
        transformed in one pass (the same numbers as one shape at a time)."""
        u = torch.cat([torch.rand(s, generator=self.generator).reshape(-1) for s in shapes])
        g = u.clamp_(1e-10, 1.0 - 1e-7).log_().neg_().log_().neg_()
        return [part.view(s) for part, s in zip(g.split([s.numel() for s in shapes]), shapes)]

    def state_dict(self) -> dict[str, Any]:
        return {"tau": self.tau, "hard": self.hard, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tau = float(state["tau"])
        self.hard = bool(state["hard"])
        self.generator.set_state(state["generator"])


def _to_devices(noise: list[torch.Tensor], thetas: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each noise tensor on its logits' device and dtype. Off the CPU, all of it goes in one
    copy, from pinned memory on CUDA so that the host does not wait for the device."""
    devices = {t.device for t in thetas}
    if devices == {torch.device("cpu")}:
        return [g.to(dtype=t.dtype) for g, t in zip(noise, thetas)]
    device = next(t.device for t in thetas if t.device.type != "cpu")
    flat = torch.cat([g.reshape(-1) for g in noise])
    if device.type == "cuda":
        flat = flat.pin_memory()
    moved = flat.to(device, non_blocking=device.type == "cuda").split([g.numel() for g in noise])
    return [m.view(g.shape).to(t.device, t.dtype) for m, g, t in zip(moved, noise, thetas)]

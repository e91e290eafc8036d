"""Cost of Hutchinson trace estimation on the Tiny Shakespeare LSTM LM (2 x 256 LSTM, 10k words).

In one process: the median time of one Hutchinson sample (a Hessian-vector product through the
double backward of the loss, reusing the graph of the first) relative to one FP32 training step
(forward, backward, Adam step) on the same 32 x 35 batch; and how many samples the relative
tolerance stop needs on each of a few batches. Prints JSON. Goal: sample / step <= 3.

    python benchmarks/hessian.py [--tol 1e-3] [--batches 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.nn import functional as F

from nas_mpq.data import LMDataModule
from nas_mpq.search import uniform_plan
from nas_mpq.sensitivity import hutchinson_traces
from search_spaces.lstm_lm import LSTMLM, lstm_lm_space


def loss_fn(model: torch.nn.Module, batch: tuple) -> torch.Tensor:
    x, y, _ = batch
    logits, _ = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--max_samples", type=int, default=100)
    args = ap.parse_args()
    dm = LMDataModule("tinyshakespeare", max_vocab=10000, batch_size=32, bptt=35)
    loader = iter(dm.train_dataloader())
    batches = [next(loader) for _ in range(max(args.batches, 2))]
    torch.manual_seed(0)
    net = LSTMLM(dm.vocab_size, 256, 256, 2, dropout=0.5)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    params = [p for n, p in net.named_parameters() if "bias" not in n]

    step_times, hvp_times = [], []
    for i in range(args.steps + 2):
        net.train()
        start = time.perf_counter()
        loss = loss_fn(net, batches[0])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step_times.append(time.perf_counter() - start)
        net.eval()
        grads = torch.autograd.grad(loss_fn(net, batches[0]), params, create_graph=True)
        v = [torch.randint(0, 2, p.shape).float() * 2 - 1 for p in params]
        start = time.perf_counter()
        torch.autograd.grad(grads, params, v, retain_graph=True)
        hvp_times.append(time.perf_counter() - start)
        del grads
    step, hvp = statistics.median(step_times[2:]), statistics.median(hvp_times[2:])

    net.eval()
    groups = uniform_plan(net, lstm_lm_space(), 32).groups
    start = time.perf_counter()
    est = hutchinson_traces(net, loss_fn, batches[: args.batches], groups, max_samples=args.max_samples,
                            tol=args.tol)
    print(json.dumps({
        "model": f"lstm_lm 2x256, vocab {dm.vocab_size}, batch 32x35, {len(groups)} groups",
        "threads": torch.get_num_threads(),
        "median_train_step_s": round(step, 4), "median_hutchinson_sample_s": round(hvp, 4),
        "sample_over_step": round(hvp / step, 3), "goal_sample_over_step": 3.0,
        "tol": args.tol, "samples_per_batch": est.samples,
        "trace_estimation_s": round(time.perf_counter() - start, 1),
        "largest_traces": dict(sorted(((n, round(t, 4)) for n, t in est.traces.items()),
                                      key=lambda kv: -kv[1])[:5]),
    }, indent=1))


if __name__ == "__main__":
    main()

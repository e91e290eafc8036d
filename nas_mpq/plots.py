"""Matplotlib figures written as PNGs into a run directory.

Figures are built as `matplotlib.figure.Figure` objects, not through pyplot: nothing here selects
or switches the backend of the process that imports it (a notebook keeps its inline backend), and
no figure is left registered with pyplot.
"""
from __future__ import annotations

from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .files import atomic_output
from .plan import PrecisionPlan


def _save(fig: Figure, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=120)
    return path


def plot_plan(plan: PrecisionPlan, path: str | Path) -> Path:
    """Bar chart of bits per group, coloured by layer (the group's parameter)."""
    names = list(plan.groups)
    layers = list(dict.fromkeys(g.param for g in plan.groups.values()))
    cmap = colormaps["tab20"]
    colour = {p: cmap(i % 20) for i, p in enumerate(layers)}
    fig = Figure(figsize=(max(6.0, 0.35 * len(names) + 2), 4.5))
    ax = fig.subplots()
    ax.bar(range(len(names)), [plan.groups[n].bits for n in names],
           color=[colour[plan.groups[n].param] for n in names])
    ax.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=7)
    ax.set_yscale("log", base=2)
    ticks = sorted({b for b in plan.candidates if b > 0})
    ax.set_yticks(ticks, [str(b) for b in ticks])
    ax.set_ylabel("bits")
    r = plan.size()
    ax.set_title(f"{plan.space_name}: avg {r.avg_bits:.2f} bits, {r.compression:.1f}x vs FP32")
    handles = [Rectangle((0, 0), 1, 1, color=colour[p]) for p in layers]
    ax.legend(handles, layers, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def plot_stage_ppl(ppl: dict[str, float], path: str | Path) -> Path:
    """Bar chart of test perplexity per model (FP32, mixed, uniform)."""
    fig = Figure(figsize=(6.0, 3.5))
    ax = fig.subplots()
    names = list(ppl)
    bars = ax.bar(range(len(names)), [ppl[n] for n in names], color=["#777777", "#2a7ab9", "#d9822b"][: len(names)])
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("test perplexity")
    return _save(fig, path)


def plot_sensitivity(omega: dict[str, dict[int, float]], path: str | Path, method: str) -> Path:
    """Per-group sensitivity at each quantized candidate (log scale)."""
    names = list(omega)
    bits = sorted({b for per in omega.values() for b in per if b not in (16, 32)})
    fig = Figure(figsize=(max(6.0, 0.35 * len(names) + 2), 4.5))
    ax = fig.subplots()
    width = 0.8 / max(len(bits), 1)
    for j, b in enumerate(bits):
        ax.bar([i + j * width for i in range(len(names))], [max(omega[n].get(b, 0.0), 1e-12) for n in names],
               width=width, label=f"{b} bit")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=70, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("Omega (HAWQ-V2)" if method == "hessian" else "KL (nats/token)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_pareto(values: list[list[float]], front: list[list[float]], names: list[str],
                path: str | Path) -> Path:
    """Trials of a two-objective study (first two objectives), the Pareto front joined."""
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.subplots()
    ax.scatter([v[1] for v in values], [v[0] for v in values], s=18, color="#999999", label="trials")
    front = sorted(front, key=lambda v: v[1])
    ax.plot([v[1] for v in front], [v[0] for v in front], "o-", color="#2a7ab9", label="Pareto front")
    ax.set_xlabel(names[1])
    ax.set_ylabel(names[0])
    ax.legend(fontsize=8)
    return _save(fig, path)

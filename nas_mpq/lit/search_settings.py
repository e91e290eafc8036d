"""Which settings of the supernet search (SupernetModule's arguments) are valid, alone and
together; checked before any training, each error naming the bad value and what would be valid."""
from __future__ import annotations

import math
from typing import Any

PLAN_FROM = ("best_val", "last", "probe")
"""Which epoch's choices the derived plan takes (SupernetModule's `plan_from`): the best validated,
the last, or the best after a short training at each of the best validated and the start plan."""
WEIGHTS_AT = ("sample", "plan")
"""What the weight step trains (SupernetModule's `weights_at`): a Gumbel sample of the choices, or
the plan the search would return now (its argmax, repaired to the budget)."""


def check_search_settings(*, min_fill: float | None, warmup_fraction: float, ramp_fraction: float,
                          sharpen_from: float, weights_until: float, single_level: bool, train_weights: bool,
                          hard_warmup: bool, dual_lr: float, entropy_weight: float, tau_start: float,
                          tau_end: float, lam: float, arch_every: int, weights_at: str, plan_from: str,
                          penalty: str = "lagrange", dual_kp: float = 0.0, refit_every: int = 1,
                          probe_steps: int = 300, probe_top: int = 3, **_: Any) -> None:
    """ValueError for a setting out of its range or a combination the search cannot run (the
    module's other arguments are ignored)."""
    if min_fill is not None and not 0.0 < min_fill <= 1.0:
        raise ValueError(f"min_fill must be in (0, 1] or None, got {min_fill}")
    for name, v in (("warmup_fraction", warmup_fraction), ("ramp_fraction", ramp_fraction),
                    ("sharpen_from", sharpen_from)):
        if not 0.0 <= v < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {v}")
    if not warmup_fraction <= weights_until <= 1.0:
        raise ValueError(f"weights_until must be in [warmup_fraction, 1] = [{warmup_fraction}, 1] (the weights "
                         f"train until that fraction of the steps), got {weights_until}")
    if weights_until < 1.0 and (single_level or not train_weights):
        raise ValueError(f"weights_until={weights_until} needs the bi-level search with weight steps "
                         f"(single_level=False, train_weights=True), got single_level={single_level}, "
                         f"train_weights={train_weights}")
    if hard_warmup and (warmup_fraction == 0.0 or not train_weights):
        raise ValueError(f"hard_warmup=True trains the weights on sampled plans during the warm-up; it needs "
                         f"warmup_fraction > 0 and train_weights=True, got warmup_fraction={warmup_fraction}, "
                         f"train_weights={train_weights}")
    if dual_kp != 0.0 and penalty != "lagrange":
        raise ValueError(f"dual_kp={dual_kp} is a part of the Lagrange multiplier's weight; it needs "
                         f"penalty='lagrange', got penalty={penalty!r}")
    for name, v in (("dual_lr", dual_lr), ("dual_kp", dual_kp), ("entropy_weight", entropy_weight)):
        if not 0.0 <= v < math.inf:
            raise ValueError(f"{name} must be non-negative and finite, got {v}")
    if tau_start <= 0 or tau_end <= 0:
        raise ValueError(f"temperatures must be positive, got tau_start={tau_start}, tau_end={tau_end}")
    if lam < 0:
        raise ValueError(f"lam must be non-negative, got {lam}")
    if isinstance(arch_every, bool) or not isinstance(arch_every, int) or arch_every < 1:
        raise ValueError(f"arch_every must be a positive integer (the choices step on every arch_every-th "
                         f"training batch), got {arch_every!r}")
    if isinstance(refit_every, bool) or not isinstance(refit_every, int) or refit_every < 1:
        raise ValueError(f"refit_every must be a positive integer (the quantizer scales are fitted again on "
                         f"every refit_every-th training batch), got {refit_every!r}")
    if weights_at not in WEIGHTS_AT:
        raise ValueError(f"weights_at must be one of {WEIGHTS_AT}, got {weights_at!r}")
    if weights_at == "plan" and (single_level or not train_weights or hard_warmup):
        raise ValueError(f"weights_at='plan' trains the weights at the current plan in the bi-level search; it "
                         f"needs single_level=False, train_weights=True and hard_warmup=False (the warm-up "
                         f"would draw no plan), got single_level={single_level}, train_weights={train_weights}, "
                         f"hard_warmup={hard_warmup}")
    if plan_from not in PLAN_FROM:
        raise ValueError(f"plan_from must be one of {PLAN_FROM}, got {plan_from!r}")
    for name, v, least in (("probe_steps", probe_steps, 0), ("probe_top", probe_top, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {v!r}")
    if single_level and not train_weights:
        raise ValueError("single_level=True steps the weights and the choices on one loss; it needs "
                         "train_weights=True")
    if single_level and arch_every != 1:
        raise ValueError(f"arch_every={arch_every} needs the bi-level search; single_level steps the choices "
                         "on every training batch")

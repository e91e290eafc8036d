"""Sensitivity analysis (Hessian trace, KL) per weight group and allocation by knapsack; the
uniform and random baselines. No Lightning."""
from .allocate import allocate, random_plan, uniform_plan_for
from .hessian import TraceEstimate, hawq_omega, hutchinson_traces
from .kl import kl_sensitivity

__all__ = ["hutchinson_traces", "hawq_omega", "TraceEstimate", "kl_sensitivity", "allocate",
           "random_plan", "uniform_plan_for"]

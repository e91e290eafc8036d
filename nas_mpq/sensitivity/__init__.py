"""Sensitivity analysis (Hessian trace, KL) per weight group and allocation by knapsack; the
uniform and random baselines; the sensitivity.json they are kept in. No Lightning."""
from .allocate import allocate, random_plan, uniform_bits_for, uniform_plan_for
from .hessian import TraceEstimate, hawq_omega, hutchinson_traces
from .kl import kl_sensitivity
from .report import load_sensitivity, sensitivity_report

__all__ = ["hutchinson_traces", "hawq_omega", "TraceEstimate", "kl_sensitivity", "allocate",
           "random_plan", "uniform_bits_for", "uniform_plan_for", "load_sensitivity", "sensitivity_report"]

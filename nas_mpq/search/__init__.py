"""Weight groups, mixed-precision choices, the layer registry and searchable layers, model
surgery, coverage, size and budget. No Lightning here: usable from a plain PyTorch loop."""
from .activations import (ActivationGroup, activation_groups, attach_input_choices_, calibrate_activations_,
                          detach_input_choices_)
from .attention import SearchMultiheadAttention
from .budget import PENALTIES, BudgetRegularizer
from .choice import CompositeWeight, MixedPrecisionChoice, fuse_candidates, hold_fitted_scales
from .conv1d import SearchConv1D
from .coverage import coverage_report, coverage_summary
from .derive import derive_plan
from .groups import SearchGroup, fixed_numel, search_groups
from .knapsack import repair_plan, solve_knapsack
from .layers import (BlockSplit, GroupSlice, SearchableMixin, SearchConv2d, SearchEmbedding, SearchLinear,
                     SearchLSTM, SubstitutedForward)
from .pinning import pin_plan_, training_at_plan
from .registry import find_layer, register_layer, registered_layers
from .sampler import GumbelSampler
from .space import GroupRule, SearchSpace
from .surgery import apply_plan_, check_plan_matches, get_sampler, prepare_search_, to_float_, uniform_plan

__all__ = [
    "CompositeWeight", "GumbelSampler", "MixedPrecisionChoice", "fuse_candidates", "hold_fitted_scales", "pin_plan_", "training_at_plan", "SearchableMixin", "SubstitutedForward",
    "SearchEmbedding", "SearchLinear", "SearchLSTM", "SearchConv2d", "SearchMultiheadAttention", "SearchConv1D",
    "register_layer", "find_layer", "registered_layers", "BlockSplit", "GroupSlice", "GroupRule", "SearchSpace",
    "SearchGroup", "prepare_search_", "to_float_", "apply_plan_", "derive_plan", "check_plan_matches",
    "search_groups", "uniform_plan", "fixed_numel", "get_sampler", "coverage_report", "coverage_summary", "repair_plan",
    "solve_knapsack", "BudgetRegularizer", "PENALTIES", "ActivationGroup", "activation_groups",
    "attach_input_choices_", "calibrate_activations_", "detach_input_choices_",
]

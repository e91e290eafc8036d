"""Weight groups, mixed-precision choices, searchable layers, model surgery, size and budget.
No Lightning here: usable from a plain PyTorch loop."""
from .activations import (ActivationGroup, activation_groups, attach_input_choices_, calibrate_activations_,
                          detach_input_choices_)
from .budget import PENALTIES, BudgetRegularizer
from .choice import CompositeWeight, GumbelSampler, MixedPrecisionChoice
from .knapsack import repair_plan, solve_knapsack
from .layers import (SEARCHABLE, BlockSplit, GroupSlice, SearchableMixin, SearchConv2d, SearchEmbedding,
                     SearchLinear, SearchLSTM)
from .space import GroupRule, SearchSpace
from .surgery import (SearchGroup, apply_plan_, check_plan_matches, derive_plan, fixed_numel,
                      get_sampler, prepare_search_, search_groups, to_float_, uniform_plan)

__all__ = [
    "CompositeWeight", "GumbelSampler", "MixedPrecisionChoice", "SEARCHABLE", "SearchableMixin",
    "SearchEmbedding", "SearchLinear", "SearchLSTM", "SearchConv2d", "BlockSplit", "GroupSlice", "GroupRule", "SearchSpace", "SearchGroup",
    "prepare_search_", "to_float_", "apply_plan_", "derive_plan", "check_plan_matches",
    "search_groups", "uniform_plan", "fixed_numel", "get_sampler", "repair_plan", "solve_knapsack",
    "BudgetRegularizer", "PENALTIES", "ActivationGroup", "activation_groups", "attach_input_choices_",
    "calibrate_activations_", "detach_input_choices_",
]

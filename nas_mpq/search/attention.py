"""nn.MultiheadAttention as a searchable layer: Q, K, V and O are separate groups.

The packed input projection `in_proj_weight` (3E x E) splits by rows into Q, K and V (keys
"in_proj_weight:q", ":k", ":v"; with kdim/vdim != embed_dim the separate q/k/v_proj_weight are one
group each), and the output projection is the group "out_proj.weight". The layer reads
out_proj's weight itself (nn.MultiheadAttention never calls out_proj's forward), so out_proj is
searched here, not as a Linear of its own. Grouping "head" gives one group per head: rows of
Q, K and V ("in_proj_weight:q.h0", ...) and columns of O ("out_proj.weight:h0", ...).

Example:
    >>> net = nn.TransformerEncoderLayer(64, 4)
    >>> prepare_search_(net, SearchSpace("encoder"))
    >>> [g.name for g in search_groups(net)][:4]
    ['self_attn.in_proj_weight:q', 'self_attn.in_proj_weight:k', 'self_attn.in_proj_weight:v', 'self_attn.out_proj.weight']
"""
from __future__ import annotations

from torch import nn

from .layers import BlockSplit, GroupSlice, SubstitutedForward, block_slices
from .registry import register_layer
from .space import GroupRule

QKV = ("q", "k", "v")


@register_layer(nn.MultiheadAttention)
class SearchMultiheadAttention(SubstitutedForward, nn.MultiheadAttention):
    groupings = ("head",)
    owned_children = ("out_proj",)

    @classmethod
    def weight_names(cls, mod: nn.MultiheadAttention) -> list[str]:
        inputs = ["in_proj_weight"] if mod._qkv_same_embed_dim else [f"{p}_proj_weight" for p in QKV]
        return [*inputs, "out_proj.weight"]

    @classmethod
    def param_slices(cls, mod: nn.MultiheadAttention, param: str, grouping: str,
                     rule: GroupRule | None) -> dict[str, GroupSlice]:
        if grouping != "head":
            return block_slices(param, 3 * mod.embed_dim, QKV) if param == "in_proj_weight" else {param: GroupSlice(param)}
        heads = BlockSplit(rule.blocks, 1 if param == "out_proj.weight" else 0, "h")
        if param != "in_proj_weight":
            return heads.slices(mod.get_parameter(param), param)
        rows = mod.embed_dim
        per_head = block_slices(param, rows, [f"h{i}" for i in range(rule.blocks)])
        return {f"{param}:{part}.{key.rpartition(':')[2]}": GroupSlice(param, (i * rows + a, i * rows + b))
                for i, part in enumerate(QKV) for key, (_, (a, b), _) in per_head.items()}

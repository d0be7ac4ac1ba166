"""Where a model keeps its layers and what each part is: stacks of blocks, and a map of roles.

``discover`` finds the block stacks (the generic rule), ``roles`` names the parts around and
inside the blocks (embeddings, final norm, output head, attention, feed-forward, norms, the
config key of the depth). Every other module of layerscope asks here instead of naming module
paths or architecture classes itself.

Example:
    >>> from layerscope.layouts import find_layout, output_head
    >>> from layerscope.zoo.transformer import GPT, GPTConfig
    >>> lm = GPT(GPTConfig(width=16, depth=2, heads=2))
    >>> len(find_layout(lm).blocks), output_head(lm) is lm.head
    (2, True)
"""

from .discover import (REGISTRY, BlockGroup, block_view, RNN_TYPES, STACK_NAMES, BlockRef, Found, Stack, counts_as_sublayer,
                       default_stacks, explicit_blocks, find_layout, find_stacks, has_params,
                       pick_stacks, role_of)
from .roles import (BLOCK_FAMILIES, DEPTH_KEYS, FFN_WIDTH_KEYS, AttentionParts, BlockFamily,
                    BlockRoles, FFNParts, block_family, depth_keys, require,
                    attention_parts, block_norms, block_roles, depth_key, embeddings,
                    ffn_parts, final_norm, final_norm_absent, infer_task, mixer_parts,
                    MixerParts, output_head, task_of_class_name, is_transposed_linear,
                    set_head_counts, config_head_counts, role_override, NAMED_ROLES)

__all__ = ["BlockGroup", "block_view", "Stack", "find_stacks", "default_stacks", "pick_stacks", "BlockRef", "Found", "REGISTRY", "RNN_TYPES", "STACK_NAMES", "find_layout",
           "explicit_blocks", "role_of", "counts_as_sublayer", "has_params",
           "AttentionParts", "FFNParts", "BlockRoles", "attention_parts", "ffn_parts",
           "block_norms", "block_roles", "final_norm", "output_head", "embeddings", "infer_task",
           "depth_key", "depth_keys", "require", "block_family", "BlockFamily",
           "BLOCK_FAMILIES", "DEPTH_KEYS", "FFN_WIDTH_KEYS", "mixer_parts", "MixerParts",
           "final_norm_absent", "task_of_class_name", "is_transposed_linear",
           "set_head_counts", "config_head_counts", "role_override", "NAMED_ROLES"]

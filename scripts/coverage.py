"""Coverage of layerscope's layer discovery over the architectures transformers builds offline.

Every class in transformers' base-model and causal-LM auto mappings (``MODEL_MAPPING_NAMES``,
``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``) is built from a tiny version of its
default config (hidden sizes, heads, widths, vocabulary and layer counts shrunk; every layer
count in the config tree set to a different odd number from 9 that no other number in the config
equals, so each block list can be told apart and no list's length matches a count by
coincidence; a backbone's depth is kept at least as high as the layers its ``out_indices`` /
``out_features`` name; a depthwise conv's ``*groups`` equal to the width follow it).
Models are built on the meta device (the same modules and parameter shapes, without allocating
or initialising weights: layout and roles need none; ``--weights`` builds them with random
weights on the CPU instead). A config that does not build shrunk is built at its default size. Per model it records: built (and how), the stacks
layerscope finds (name, path, blocks), the default stack, whether the default blocks equal the
reference, whether every reference list is one of the stacks, and whether the roles (final norm,
output head, attention, feed-forward) were found.

The reference is independent of layerscope: the block lists are the ``nn.ModuleList``s whose
length is a layer count the config declares (``num_hidden_layers``, ``n_layer``,
``encoder_layers``, ``encoder_num_hidden_layers``..., or, for the model's own config where those
match no list, a count under a name of its own ending in ``layers``/``blocks``, unless it starts
with the name of a part of the model (``memory_attention_num_layers`` sizes that part); a
per-stage list ``depths``/``blocks_per_stage``/``block_sizes`` declares its
sum, a per-stage repeat list (``num_block_repeats``) the sum of its repeats scaled by the
config's ``depth_coefficient``, rounded up, and a list of stages whose per-stage block lists have
the lengths of such a list, or of an int list under a count's name (``stage_num_blocks``), in
order, stands for the blocks joined, downsampling entries of another class between the stages
left out; a per-stage depth list matched by no list, neither so nor by its sum, is matched by the
deepest module whose innermost lists of one composite block class have its lengths in order (a
decoder's in reverse order), those lists' blocks joined; where the model's own config declares no count any list matches and no per-stage
depths, its sampling-ratio lists (``upsampling_ratios``, ``downsampling_ratios``,
``upsample_rates``, ``resblock_stride_sizes``) declare one block per ratio, matched only by a
list of one composite block class). Plain dicts that are not fields of a config's class (derived
in its ``__post_init__``, FastSpeech2-Conformer's ``encoder_config``) are dropped from the tiny
config, so they are derived again from the shrunk fields. A list of lists stands for its inner lists' entries (Funnel's ``encoder.blocks``: 3
lists of 4 layers for ``num_hidden_layers`` 12). A list of single layers (each entry holding only
its own parameters: a Linear, a norm) is a block list only beside a list of composite blocks of
the same length under the same parent (XLM's per-layer norms); alone it is a per-layer head or
an MLP's layers. The default should be the lists of the *primary* config: the top-level
config when it declares a layer count, else (a multi-modal model whose ``text_config`` sits
beside vision/audio configs) the text config (also one level down: ``vlm_config.text_config``); for an encoder-decoder (``is_encoder_decoder``) the lists of its encoder and decoder
configs; for a config holding a pair ``<x>encoder_config``/``<x>decoder_config`` (and no
depth of its own) the lists of both with the lists between them in module order (BLT's global
transformer); where the primary config's counts match no list (it sizes parts the class does not
build) and the model is not an encoder-decoder, the lists of the first config, in config order,
that has any; lists inside a detector's backbone are never the default. Dual encoders (the forward
computes two ``logits_per_*``, one per tower, or the model holds a contrastive ``logit_scale`` of
its own, and there is no LM head) and containers without a
forward of their own have no default: layerscope should ask, naming the stacks; so have towers
of one kind side by side (every reference list from a sub-config of the own config, two or more,
all of one config class: DepthPro) and two or more expected lists of one length and one entry
class under different parents that are not an encoder and its decoder (HRM's modules run in
alternation).

Usage:  nice python scripts/coverage.py [--timeout 120] [--only llama,bert] [--out docs/COVERAGE.md]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[1]

DEPTH_KEYS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "encoder_layers",
              "decoder_layers", "num_encoder_layers", "num_decoder_layers", "decoder_num_layers",
              "encoder_num_hidden_layers", "decoder_num_hidden_layers", "depth")
_SHRINK = {  # key -> small value (applied when the default is larger)
    "hidden_size": 64, "d_model": 64, "n_embd": 64, "embed_dim": 64, "model_dim": 64,
    "num_attention_heads": 4, "n_head": 4, "n_heads": 4, "encoder_attention_heads": 4,
    "decoder_attention_heads": 4, "num_heads": 4,
    "num_key_value_heads": 2, "num_kv_heads": 2, "n_kv_heads": 2,
    "head_dim": 16, "d_kv": 16, "kv_channels": 16,
    "intermediate_size": 128, "ffn_dim": 128, "d_ff": 128, "n_inner": 128,
    "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "moe_intermediate_size": 64,
    "shared_expert_intermediate_size": 64,
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
    "vocab_size": 512,
}
_TINY_RESNET = {"model_type": "resnet", "embedding_size": 16, "hidden_sizes": [16, 32, 64, 128],
                "depths": [1, 1, 1, 1], "layer_type": "basic", "out_indices": [1, 2, 3, 4]}
_TEXT_SUBCONFIGS = ("text_config", "language_config", "llm_config", "text_decoder_config",
                    "decoder_config", "thinker_config")
_OTHER_SUBCONFIGS = ("vision_config", "audio_config", "speech_config", "image_config",
                     "video_config", "vision_encoder_config", "audio_encoder_config")


# --- tiny configs --------------------------------------------------------------------------------


def _derived_dicts(d: dict) -> set[str]:
    """Plain dicts (no ``model_type``) that are not fields of the config's class: its own
    ``__post_init__`` derives them from its fields (FastSpeech2-Conformer's ``encoder_config``
    from ``encoder_layers``...), so they are dropped and derived again from the shrunk fields
    instead of carrying the default sizes over."""
    import dataclasses

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        cls = CONFIG_MAPPING[d["model_type"]]
    except KeyError:
        return set()
    if not dataclasses.is_dataclass(cls):
        return set()
    fields = {f.name for f in dataclasses.fields(cls)}
    return {k for k, v in d.items() if isinstance(v, dict) and v and "model_type" not in v
            and k not in fields and k not in ("id2label", "label2id")}


def _shrink(d: dict, counter: list[int]) -> dict:
    """Shrink one config dict (recursing into sub-config dicts); distinct depths per key."""
    out = {k: v for k, v in d.items() if k not in _derived_dicts(d)}
    old_depths = set()
    for key, value in d.items():
        if isinstance(value, dict) and value.get("model_type") == "timm_backbone":
            out[key] = dict(_TINY_RESNET)  # timm is not installed: transformers' own ResNet
        elif isinstance(value, dict) and "model_type" in value:
            out[key] = _shrink(value, counter)
        elif (key in DEPTH_KEYS or (_named_count(key, value, d) and not any(k in DEPTH_KEYS for k in d))) \
                and isinstance(value, int) and not isinstance(value, bool) and value > 0:
            old_depths.add(value)
            out[key] = _next_count(counter, _highest_stage(d))
        elif key in ("use_timm_backbone", "use_pretrained_backbone") and value:
            out[key] = False  # a transformers backbone, no weights to fetch
        elif key in _SHRINK and isinstance(value, int) and not isinstance(value, bool) and value > _SHRINK[key]:
            out[key] = _SHRINK[key]
    width = d.get("hidden_size")
    for key, value in d.items():  # a depthwise conv's groups follow the width they divide
        if key.endswith("groups") and isinstance(value, int) and value == width and out.get("hidden_size") != width:
            out[key] = out["hidden_size"]
    # per-layer lists recomputed by the config from the new depth
    for key, value in d.items():
        if isinstance(value, list) and len(value) in old_depths and key not in ("architectures",):
            out.pop(key, None)
    vocab = out.get("vocab_size")
    if isinstance(vocab, int):
        ids = [v for k, v in out.items() if isinstance(v, int) and not isinstance(v, bool)
               and (k.endswith(("_token_id", "_token_index", "_id")) or k == "pad_token_id")]
        out["vocab_size"] = max([vocab] + [i + 1 for i in ids])
    for key in ("_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype"):
        out.pop(key, None)
    return out


def _next_count(counter: list, at_least: int = 0) -> int:
    """The next distinct odd count from ``counter`` ([next, numbers to avoid]), at least
    ``at_least``; the avoided numbers are those the config already uses in lists of counts."""
    value = counter[0]
    while value < at_least or value in counter[1]:
        value += 2
    counter[0] = value + 2
    return value


def _highest_stage(d: dict) -> int:
    """The highest layer a backbone config's ``out_indices``/``out_features`` name (a depth
    shrunk below it does not build), else 0."""
    import re

    named = [int(m.group(1)) for f in d.get("out_features") or () if isinstance(f, str)
             for m in [re.search(r"(\d+)$", f)] if m]
    given = [i for i in d.get("out_indices") or () if isinstance(i, int) and not isinstance(i, bool)]
    return max(named + given, default=0)


def _config_numbers(d: dict) -> set[int]:
    """Every int the config dict holds, anywhere: its values, the ints inside its lists
    (per-stage depths such as Florence-2's vision ``depths`` [1, 1, 9, 1]) and those lists' sums
    (RF-DETR's ``group_detr`` 13 makes 13 lists of heads)."""
    out: set[int] = set()
    for value in d.values():
        if isinstance(value, dict):
            out |= _config_numbers(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            out.add(value)
        elif isinstance(value, (list, tuple)) and value and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            out |= set(value) | {sum(value)}
    return out


def tiny_config(config_cls):
    base = config_cls()
    raw = base.to_dict()
    # odd counts from 9 (no collision with the usual 4, 6, 7 (conv), 12, 24, 32), skipping any
    # number the config already holds, so no list's length equals a count by coincidence
    counter = [9, _config_numbers(raw)]
    small = _shrink(raw, counter)
    small.pop("model_type", None)
    return config_cls(**small), base


def _config_tree(config, prefix=""):
    """(dotted name, config) for the config and every sub-config."""
    yield prefix, config
    for key, value in vars(config).items():
        if hasattr(value, "to_dict") and hasattr(value, "model_type") and value is not config:
            yield from _config_tree(value, f"{prefix}.{key}" if prefix else key)


#: config keys holding a depth per stage (the blocks total their sum: Hiera's blocks_per_stage;
#: CvT's list-valued ``depth``)
STAGE_DEPTH_KEYS = ("depths", "blocks_per_stage", "block_sizes", "depth")


def _stage_lengths(d) -> set[int]:
    """The lengths of the per-stage lists a config holds (``depths``, ``hidden_sizes``...)."""
    items = d.items() if isinstance(d, dict) else vars(d).items()
    return {len(v) for k, v in items if isinstance(v, (list, tuple)) and len(v) > 1 and k != "architectures"}


def _named_count(key: str, value, d) -> bool:
    """A count under a name of its own (:func:`_count_key`), above 1, that is not the number of
    stages (PVT v2's ``num_encoder_blocks`` 4 beside four-entry ``depths``/``hidden_sizes``)."""
    return key not in DEPTH_KEYS and _count_key(key) and isinstance(value, int) \
        and not isinstance(value, bool) and value > 1 and value not in _stage_lengths(d)


def _count_key(key: str) -> bool:
    """A config key that declares a number of layers or blocks under a name of its own
    (xLSTM's ``num_blocks``, Gemma 3n audio's ``conf_num_hidden_layers``, HRM's
    ``num_layers_per_stack``, VideoPrism's ``num_spatial_layers``/``num_temporal_layers``,
    LXMERT's ``l_layers``/``x_layers``/``r_layers``, Perceiver's ``num_self_attends_per_block``):
    its name ends in ``layers``/``blocks`` or counts them per something."""
    import re

    return bool(re.search(r"(layers|blocks)(_per_[a-z]+)?$|_per_block$", key))


def _depths(config, named: bool = False) -> dict[str, list[int]]:
    """Per config: its declared layer counts (``named``: only those under names of their own)."""
    out = {}
    for name, cfg in _config_tree(config):
        if named:
            values = [v for k, v in vars(cfg).items() if _named_count(k, v, cfg)]
            if values:
                out[name] = values
            continue
        values = []
        for key in DEPTH_KEYS:
            value = getattr(cfg, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                values.append(value)
        for key in STAGE_DEPTH_KEYS:
            value = getattr(cfg, key, None)
            if isinstance(value, (list, tuple)) and value and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value):
                values.append(sum(value))
        values += _repeated_blocks(cfg)
        if values:
            out[name] = values
    return out


def _repeated_blocks(cfg) -> list[int]:
    """The blocks a per-stage repeat list declares (EfficientNet's ``num_block_repeats``), each
    stage's repeats scaled as the config says (``depth_coefficient``, rounded up): their sum."""
    import math

    out = []
    scale = getattr(cfg, "depth_coefficient", 1.0)
    scale = scale if isinstance(scale, (int, float)) and not isinstance(scale, bool) else 1.0
    for key, value in vars(cfg).items():
        if key.endswith("_repeats") and isinstance(value, (list, tuple)) and value and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            out.append(sum(int(math.ceil(scale * v)) for v in value))
    return out


#: config keys holding one entry per block that changes the sampling rate (a codec's or
#: vocoder's ``upsampling_ratios``: one encoder/decoder block per ratio)
RATIO_KEYS = ("upsampling_ratios", "downsampling_ratios", "upsample_rates", "resblock_stride_sizes")


def _ratio_counts(cfg) -> list[int]:
    """The block counts a config's sampling-ratio lists declare (one block per ratio), when it
    declares no per-stage depths (with them, a ratio is a stage's downsampling, not a block)."""
    if any(isinstance(getattr(cfg, k, None), (list, tuple)) for k in STAGE_DEPTH_KEYS):
        return []
    return sorted({len(v) for k in RATIO_KEYS for v in [getattr(cfg, k, None)]
                   if isinstance(v, (list, tuple)) and len(v) > 1})


def _stage_depths(config) -> dict[tuple[int, ...], str]:
    """Each per-stage depth list the config tree holds (``depths`` [3, 4, 6, 3]; a list of
    counts under a count's name, HGNet v2's ``stage_num_blocks``, matched only as the lengths of
    a list of stages' block lists, never by its sum, which can equal a list of heads) -> its
    config."""
    out = {}
    for name, cfg in _config_tree(config):
        keys = list(STAGE_DEPTH_KEYS) + [k for k in vars(cfg) if _count_key(k) and k not in STAGE_DEPTH_KEYS]
        for key in keys:
            value = getattr(cfg, key, None)
            if isinstance(value, (list, tuple)) and len(value) > 1 and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value):
                out.setdefault(tuple(value), name)
    return out


# --- the reference -------------------------------------------------------------------------------


def _candidates(modules: dict, depths: dict, stages: dict) -> list:
    """(path, length, config names) of every list as long as a declared count."""
    from torch import nn

    by_len: dict[int, list[str]] = {}
    for name, values in depths.items():
        for v in values:
            by_len.setdefault(v, []).append(name)
    cands = []
    for path, mod in modules.items():
        if not isinstance(mod, (nn.ModuleList, nn.Sequential)) or len(mod) == 0:
            continue
        # stages, each holding one list of blocks as long as the stage's declared depth (ResNet,
        # Swin), first: the blocks, even where the number of stages is a declared count too
        # (SegFormer's num_hidden_layers is its number of stages)
        inner = _stage_lists(mod)
        if inner and tuple(len(x) for _, x in inner) in stages:
            cands.append((path, sum(len(x) for _, x in inner), [stages[tuple(len(x) for _, x in inner)]]))
            continue
        n = len(block_entries(mod))
        if n in by_len and any(next(c.parameters(), None) is not None for c in mod.children()):
            cands.append((path, n, by_len[n]))
    return cands


def reference_lists(model, config) -> tuple[list[tuple[str, int, str]], list[str]]:
    """All candidate block lists (path, length, config name) and the expected default's paths."""
    depths = _depths(config)
    stages = _stage_depths(config)
    modules = dict(model.named_modules())
    cands = _candidates(modules, depths, stages)
    # a count under a name of its own (xLSTM's num_blocks) is the model's own config's depth
    # only where its usual counts match no list: beside them it counts something else (V-JEPA
    # 2's predictor), and in a sub-config it sizes a part of a tower (a codec's residual units)
    matched = {c for _, _, cs in cands for c in cs}
    parts = {n for n, _ in model.named_children()}
    named = {"": [v for k, v in vars(config).items() if _named_count(k, v, config)
                  and not any(k.startswith(f"{part}_") for part in parts)]} if "" not in matched else {}
    # a count named after a part of the model (SAM 2 video's ``memory_attention_num_layers``)
    # sizes that part, not the model
    named = {n: v for n, v in named.items() if v}
    if named:
        for n, v in named.items():
            depths[n] = depths.get(n, []) + v
        cands = _candidates(modules, depths, stages)
    # sampling ratios (a codec's ``upsampling_ratios``) declare one block each, only where the
    # model's own config declares no count that any list matches
    # (lists of one composite block class only: a residual unit's ELU/conv list can be as long)
    if "" not in {c for _, _, cs in cands for c in cs} and _ratio_counts(config):
        cands += [c for c in _candidates(modules, {"": _ratio_counts(config)}, {})
                  if _uniform_blocks(modules[c[0]])]
    cands += _spread_stages(modules, stages, {c[1] for c in cands}, depths)
    cands = [c for c in cands if not _lone_leaf_list(modules, c, cands)]
    outer = [c for c in cands if not any(c[0].startswith(o[0] + ".") or (o[0] == "" and c[0])
                                         for o in cands if o is not c)]
    names = list(depths)
    primary = ""  # the model's own config when it declares a depth, else its text config
    if "" not in depths:
        primary = next((n for n in _TEXT_SUBCONFIGS if n in depths), None)
        if primary is None:  # a text config one level down (a robot policy's vlm_config.text_config)
            primary = next((n for n in depths if n.rsplit(".", 1)[-1] in _TEXT_SUBCONFIGS), None)
        if primary is None:
            primary = names[0] if names else ""
    found = {c for _, _, cs in outer for c in cs}
    if outer and primary not in found and not getattr(config, "is_encoder_decoder", False):
        # the primary config's counts size parts this class does not build (a recognition
        # model's head depth in a base model that is its backbone alone): the lists of the
        # first config, in config order, that has any
        order = [n for n, _ in _config_tree(config)]
        primary = min(found, key=lambda n: order.index(n) if n in order else len(order))
    if getattr(config, "is_encoder_decoder", False):  # both stacks, whichever config holds them
        keys = {n for n in names if n == primary or (("encoder" in n or "decoder" in n)
                                                    and not any(o in n for o in _OTHER_SUBCONFIGS))}
    else:
        keys = {primary}
    expected = [c[0] for c in outer if keys & set(c[2])]
    pair = _config_pair(config, outer) if "" not in depths else None
    if pair:  # an encoder and its decoder from sub-configs, and what runs between them
        order = {p: i for i, p in enumerate(modules)}
        enc = [c for c in outer if pair[0] in c[2]]
        dec = [c for c in outer if pair[1] in c[2]]
        lo, hi = max(order[c[0]] for c in enc), min(order[c[0]] for c in dec)
        between = [c for c in outer if lo < order[c[0]] < hi and c not in enc + dec
                   and not any(x == "backbone" or x.endswith("_backbone") for x in c[0].split("."))
                   and not any(o in n for n in c[2] for o in _OTHER_SUBCONFIGS)]
        expected = [c[0] for c in enc + between + dec]
    own = [p for p in expected if not any(x == "backbone" or x.endswith("_backbone") for x in p.split("."))]
    expected = own or expected  # a backbone's lists are the default only when nothing else is
    return [(p, n, ",".join(c or "config" for c in cs)) for p, n, cs in outer], expected


def _spread_lists(mod) -> list[tuple[str, object]]:
    """The innermost lists of blocks under ``mod``, in module order: lists of one composite
    block class whose entries hold no list themselves (a stem's blocks, then each downsampling
    layer's)."""
    from torch import nn

    return [(p, m) for p, m in mod.named_modules() if p and isinstance(m, (nn.ModuleList, nn.Sequential))
            and _uniform_blocks(m) and not any(isinstance(x, (nn.ModuleList, nn.Sequential))
                                               for c in m.children() for x in c.modules())]


def _spread_stages(modules: dict, stages: dict, matched: set, depths: dict) -> list:
    """A per-stage depth list no list matched (neither as a list of stages nor by its sum):
    the module whose innermost lists of blocks have those lengths in order (a decoder's in
    reverse order), the deepest such module (VibeVoice's tokenizer: a stem's blocks, then each
    downsampling layer's; GroupViT's stages, whose lists of layers sit beside grouping blocks).
    (path, blocks, config names), one per module found."""
    sums = {v for vs in depths.values() for v in vs}
    out = []
    for depth, cfg in stages.items():
        if sum(depth) in matched or (sum(depth) not in sums):
            continue
        found = []
        for path, mod in modules.items():
            lengths = tuple(len(m) for _, m in _spread_lists(mod))
            if lengths == depth or ("decoder" in path.rsplit(".", 1)[-1] and lengths == depth[::-1]):
                found.append(path)
        out += [(p, sum(depth), [cfg]) for p in found
                if not any(o != p and (o.startswith(p + ".") or (p == "" and o)) for o in found)]
    return out


def _uniform_blocks(mod) -> bool:
    """A list whose entries are all of one class, each a composite block with parameters."""
    kids = list(mod.children())
    return bool(kids) and len({type(k) for k in kids}) == 1 and all(
        next(k.parameters(), None) is not None and not _is_leaf(k) for k in kids)


def _config_pair(config, outer) -> tuple[str, str] | None:
    """The shallowest pair of sub-configs named ``<x>encoder_config`` and ``<x>decoder_config``
    (the same ``<x>``: SAM 3's ``detr_encoder_config``/``detr_decoder_config``, BLT's
    ``encoder_config``/``decoder_config``) that both size reference lists: the model runs an
    encoder then its decoder, whatever text config sits beside them (a prompt encoder)."""
    sized = {n for _, _, cs in outer for n in cs}
    for name in sorted(sized, key=lambda n: n.count(".")):
        if name.endswith("encoder_config"):
            dec = name[: -len("encoder_config")] + "decoder_config"
            if dec in sized:
                return name, dec
    return None


def _same_kind(config, outer, expected) -> bool:
    """The expected lists are two or more of one length and one entry class under different
    parents, sized by one count, and not an encoder and its decoder (HRM's high- and low-level
    modules, run in alternation): no list comes first, so layerscope should ask."""
    if len(expected) < 2 or getattr(config, "is_encoder_decoder", False):
        return False
    cands = [c for c in outer if c[0] in expected]
    if len({c[1] for c in cands}) != 1 or len({c[0].rsplit(".", 1)[0] if "." in c[0] else "" for c in cands}) != len(cands):
        return False
    words = {w for c in cands for w in ("encoder", "decoder") if w in c[0]}
    return not words


def block_entries(mod) -> list[tuple[str, object]]:
    """(name, module) of a block list's entries; a list of lists (Funnel's ``encoder.blocks``:
    3 lists of 4 layers, ``num_hidden_layers`` 12) stands for the entries of its inner lists."""
    from torch import nn

    children = list(mod.named_children())
    if children and all(isinstance(c, (nn.ModuleList, nn.Sequential)) for _, c in children):
        return [(f"{n}.{k}", b) for n, c in children for k, b in c.named_children()]
    return children


def _stage_lists(mod) -> list[tuple[str, object]] | None:
    """For a list of stages, each holding one list of blocks under the same name (ResNet's
    ``encoder.stages.i.layers``, Swin's ``encoder.layers.i.blocks``): (relative path, list) per
    stage, in order; else None. The stage's other parts (a downsampling layer) are not blocks,
    nor are entries of another class holding no list of blocks between the stages."""
    from torch import nn

    out, suffix, between, kinds = [], None, set(), set()
    for name, stage in mod.named_children():
        lists = [(p, m) for p, m in stage.named_modules() if p and isinstance(m, (nn.ModuleList, nn.Sequential))
                 and len(m) and any(next(c.parameters(), None) is not None for c in m.children())
                 and not all(_is_leaf(c) for c in m.children())]  # a downsampling conv + norm
        outer = [(p, m) for p, m in lists if not any(p.startswith(o + ".") for o, _ in lists)]
        if not outer:  # a downsampling layer between stages (SwiftFormer's embeddings)
            between.add(type(stage))
            continue
        if len(outer) != 1 or (suffix is not None and outer[0][0] != suffix):
            return None
        suffix = outer[0][0]
        kinds.add(type(stage))
        out.append((f"{name}.{suffix}", outer[0][1]))
    return out if len(out) > 1 and not between & kinds else None


def entries_of(mod, n: int) -> list[tuple[str, object]]:
    """The ``n`` reference entries of a candidate list: its own (or its inner lists') entries,
    or for a list of stages the blocks of each stage's list joined in order."""
    from torch import nn

    spread = [(f"{p}.{k}", b) for p, x in _spread_lists(mod) for k, b in x.named_children()]
    if not isinstance(mod, (nn.ModuleList, nn.Sequential)):  # a module of spread stages
        return spread
    inner = _stage_lists(mod) or []
    staged = [(f"{p}.{k}", b) for p, x in inner for k, b in x.named_children()]
    if inner and len(staged) == n:
        return staged
    own = block_entries(mod)
    return spread if len(own) != n and len(spread) == n else own


def _inner_listed(model, path: str, listed: set[str]) -> bool:
    """A list of lists is listed when each of its inner lists is a stack's path; a list of
    stages when each stage's list of blocks is."""
    from torch import nn

    mod = model.get_submodule(path)
    if not isinstance(mod, (nn.ModuleList, nn.Sequential)):  # spread stages: each list a stack's
        return all((f"{path}.{p}" if path else p) in listed for p, _ in _spread_lists(mod))
    staged = _stage_lists(mod)
    if staged and all(f"{path}.{p}" in listed for p, _ in staged):
        return True
    children = [n for n, _ in model.get_submodule(path).named_children()]
    return bool(children) and len(block_entries(model.get_submodule(path))) > len(children) \
        and all(f"{path}.{n}" in listed for n in children)


def _is_leaf(module) -> bool:
    return all("." not in n for n, _ in module.named_parameters())


def _lone_leaf_list(modules: dict, cand, cands) -> bool:
    """A list of single layers (each entry holds only its own parameters: a Linear, a norm) is
    not a block list by itself: it is a per-layer head (a projection per decoder layer) or an
    MLP's layers whose number coincides with a count. It is one only beside a list of composite
    blocks of the same length under the same parent (XLM's per-layer norms beside its
    attentions), as a part of those blocks."""
    path, n, _ = cand
    if not all(_is_leaf(c) for c in modules[path].children()):
        return False
    parent = path.rsplit(".", 1)[0] if "." in path else ""
    return not any(o[1] == n and o[0] != path and (o[0].rsplit(".", 1)[0] if "." in o[0] else "") == parent
                   and not all(_is_leaf(c) for c in modules[o[0]].children()) for o in cands)


# --- one model --------------------------------------------------------------------------------------


def _dual(model) -> bool:
    """A dual encoder: its forward scores one tower's embeddings against the other's (the
    source of its ``forward`` computes two or more ``logits_per_*``, one per tower: CLIP's
    ``logits_per_image``/``logits_per_text``; a tracker's single ``logits_per_obj`` is not; or
    the model holds a contrastive ``logit_scale`` parameter of its own), and it has no LM head."""
    import inspect
    import re

    try:
        source = inspect.getsource(type(model).forward)
    except (OSError, TypeError):
        return False
    getter = getattr(model, "get_output_embeddings", None)
    try:
        head = getter() if callable(getter) else None
    except Exception:  # noqa: BLE001
        head = None
    if head is not None:
        return False
    # a contrastive temperature of its own (FLAVA's logit_scale beside its image and text
    # towers), the towers scored against each other even when the forward returns embeddings
    own = dict(model.named_parameters(recurse=False))
    return len(set(re.findall(r"logits_per_\w+", source))) >= 2 or "logit_scale" in own


def _twin_towers(config, reference) -> bool:
    """Towers of one kind side by side: every reference list comes from a sub-config of the
    model's own config, two or more of them, all of one config class (DepthPro's patch and image
    encoders, both DINOv2), and the own config declares no depth: no tower comes first (the
    data does not run through one into the other), so layerscope should ask, naming them."""
    if "" in _depths(config) or getattr(config, "is_encoder_decoder", False):
        return False
    subs = {k: v for k, v in vars(config).items() if hasattr(v, "to_dict") and hasattr(v, "model_type")}
    names = {n for _, _, cs in reference for n in cs.split(",")}
    return len(names) >= 2 and names <= set(subs) and len({type(subs[n]) for n in names}) == 1


def _same_kind_lists(model, config, cands, expected) -> bool:
    """:func:`_same_kind` with the entry class checked: every expected list holds one class."""
    if not _same_kind(config, cands, expected):
        return False
    classes = {type(b) for p in expected for _, b in block_entries(model.get_submodule(p))}
    return len(classes) == 1


def _no_forward(model) -> bool:
    """A container whose class defines no forward (its sub-models run one after another in
    ``generate``): no stack comes first, so layerscope should ask, as for a dual encoder."""
    from torch import nn

    return type(model).forward is nn.Module.forward


def _build(model_type: str, cls_name: str, weights: bool = False):
    import torch
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cls = getattr(transformers, cls_name)
    config_cls = CONFIG_MAPPING[model_type]
    errors = []
    try:
        config, _ = tiny_config(config_cls)
        torch.manual_seed(0)
        if weights:
            return cls(config).eval(), config, "tiny"
        with torch.device("meta"):
            return cls(config).eval(), config, "tiny-meta"
    except Exception as exc:  # noqa: BLE001 - any failure: fall back to the default on meta
        errors.append(f"tiny: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
    try:
        config = config_cls()
        for key in ("use_timm_backbone", "use_pretrained_backbone"):
            if getattr(config, key, False):
                setattr(config, key, False)
        with torch.device("meta"):
            model = cls(config)
        return model, config, "default-meta"
    except Exception as exc:  # noqa: BLE001
        errors.append(f"default: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
    raise RuntimeError(" | ".join(errors))


def measure(mapping: str, model_type: str, cls_name: str, weights: bool = False) -> dict:
    row = {"mapping": mapping, "model_type": model_type, "cls": cls_name}
    try:
        model, config, how = _build(model_type, cls_name, weights)
    except Exception as exc:  # noqa: BLE001
        row.update(builds=False, error=str(exc)[:400])
        return row
    row.update(builds=True, how=how)
    from layerscope.errors import LayerscopeError
    from layerscope.layers import Layers
    from layerscope import layouts

    cands, expected = reference_lists(model, config)
    row["reference"] = cands
    row["expected"] = expected
    dual = _dual(model) or _no_forward(model) or _twin_towers(config, cands) \
        or _same_kind_lists(model, config, cands, expected)
    row["dual"] = dual
    stacks = None
    try:
        found_stacks = getattr(layouts, "find_stacks", None)
        if found_stacks is not None:
            stacks = [(s.name, s.paths, len(s.blocks), s.kind) for s in found_stacks(model)]
    except Exception as exc:  # noqa: BLE001
        row["stacks_error"] = f"{type(exc).__name__}: {exc}"[:300]
    row["stacks"] = stacks
    try:
        lay = Layers(model)
        names = lay.names()
        row["default"] = getattr(lay, "stack", None)
        row["blocks"] = len(names)
        want = []
        sizes = {p: n for p, n, _ in cands}
        for p in expected:
            want += [f"{p}.{n}" if p else n for n, _ in entries_of(model.get_submodule(p), sizes[p])]
        row["default_ok"] = (not dual) and bool(expected) and (names == want or _grouped_ok(lay, want))
        if dual:
            row["default_ok"] = False
            row["why"] = "dual encoder: expected a question naming the stacks"
        elif not expected:
            row["why"] = "no reference list (no ModuleList as long as a declared layer count)"
        elif not row["default_ok"]:
            row["why"] = f"got {_span(names)}; reference {_span(want)}"
    except LayerscopeError as exc:
        msg = str(exc)
        row["default_error"] = msg[:300]
        row["blocks"] = 0
        row["default_ok"] = dual and "stack" in msg
        if not row["default_ok"]:
            row["why"] = f"error: {msg[:200]}"
        lay = None
    except Exception as exc:  # noqa: BLE001
        row["default_error"] = f"{type(exc).__name__}: {exc}"[:300]
        row["default_ok"] = False
        row["why"] = f"crash: {type(exc).__name__}: {str(exc)[:160]}"
        lay = None
    if cands and stacks is not None:
        listed = {p for _, paths, _, _ in stacks for p in paths}
        row["towers_listed"] = all(p in listed or _inner_listed(model, p, listed) for p, _, _ in cands)
    if lay is not None and len(lay):
        try:
            found = getattr(lay, "found", None)
            view = getattr(layouts, "block_view", None)
            block = view(found.blocks[0]) if view and found is not None else lay[0].module
            row["roles"] = {
                "final_norm": layouts.final_norm(model, found) is not None
                or bool(getattr(layouts, "final_norm_absent", lambda *a: None)(model, found)),
                "head": layouts.output_head(model, found) is not None,
                "attention": layouts.attention_parts(block, config) is not None
                or _mixer(layouts, block),
                "ffn": layouts.ffn_parts(block, config) is not None or _no_ffn(layouts, block),
            }
        except Exception as exc:  # noqa: BLE001
            row["roles_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return row


def _grouped_ok(lay, want: list[str]) -> bool:
    """Blocks kept in parallel lists (one block = the i-th entry of each list) match the
    reference when together they hold exactly the reference's entries, each block the entries
    of one index."""
    refs = getattr(getattr(lay, "found", None), "blocks", None) or []
    if not any(getattr(b, "members", None) for b in refs):
        return False
    got = []
    for b in refs:
        paths = [p for p, _ in b.members] or [b.path]
        if len({p.rsplit(".", 1)[-1] for p in paths}) != 1:
            return False
        got += paths
    return len(got) == len(want) and set(got) == set(want)


def _mixer(layouts, block) -> bool:
    fn = getattr(layouts, "mixer_parts", None)
    return bool(fn and fn(block) is not None)


def _no_ffn(layouts, block) -> bool:
    fn = getattr(layouts, "block_roles", None)
    if fn is None:
        return False
    roles = fn(block)
    return getattr(roles, "ffn_absent", False)


def _span(names: list[str]) -> str:
    if not names:
        return "nothing"
    if len(names) <= 2:
        return ", ".join(names)
    return f"{len(names)} ({names[0]} .. {names[-1]})"


# --- the worker --------------------------------------------------------------------------------------


def _worker(conn):
    import warnings

    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    while True:
        job = conn.recv()
        if job is None:
            return
        try:
            row = measure(*job)
        except BaseException as exc:  # noqa: BLE001
            row = {"mapping": job[0], "model_type": job[1], "cls": job[2], "builds": False,
                   "error": f"crash: {type(exc).__name__}: {exc}"[:300],
                   "trace": traceback.format_exc()[-600:]}
        conn.send(row)


class Pool:
    def __init__(self):
        self.ctx = mp.get_context("fork")
        self.proc = None

    def _start(self):
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()
        self.conn = parent

    def run(self, job, timeout: float) -> dict:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send(job)
        if self.conn.poll(timeout):
            try:
                return self.conn.recv()
            except EOFError:
                pass
            why = "worker died (out of memory?)"
        else:
            why = f"timed out after {timeout:.0f} s"
        self.proc.kill()
        self.proc.join()
        self.proc = None
        return {"mapping": job[0], "model_type": job[1], "cls": job[2], "builds": False,
                "error": why}

    def close(self):
        if self.proc is not None and self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(5)


def population(only=None, weights: bool = False) -> list[tuple[str, str, str, bool]]:
    from transformers.models.auto import modeling_auto as ma

    jobs = []
    for mapping, names in (("base", ma.MODEL_MAPPING_NAMES),
                           ("causal-lm", ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)):
        for model_type, cls_name in names.items():
            if isinstance(cls_name, (tuple, list)):
                cls_name = cls_name[0]
            if only and model_type not in only:
                continue
            jobs.append((mapping, model_type, cls_name, weights))
    return jobs


# --- the report ----------------------------------------------------------------------------------------


def _pct(a: int, b: int) -> str:
    return f"{a}/{b} ({100 * a / b:.1f}%)" if b else "0/0"


def summarise(rows: list[dict]) -> dict:
    out = {}
    for mapping in ("base", "causal-lm", "all"):
        sel = [r for r in rows if mapping == "all" or r["mapping"] == mapping]
        built = [r for r in sel if r.get("builds")]
        judged = [r for r in built if r.get("expected") or r.get("dual")]
        multi = [r for r in built if len(r.get("reference") or []) > 1]
        roles = [r for r in built if r.get("roles")]
        all_roles = [r for r in roles if all(r["roles"].values())]
        out[mapping] = {
            "models": len(sel), "built": len(built),
            "default_ok": sum(bool(r.get("default_ok")) for r in built),
            "judged": len(judged), "default_ok_judged": sum(bool(r.get("default_ok")) for r in judged),
            "multi": len(multi), "multi_listed": sum(bool(r.get("towers_listed")) for r in multi),
            "roles_all": len(all_roles), "roles_rows": len(roles),
            **{f"role_{k}": sum(bool(r.get("roles", {}).get(k)) for r in built)
               for k in ("final_norm", "head", "attention", "ffn")},
        }
    return out


#: what a person would name as the blocks of the models still missed, read from their own code
#: (explanations for the report only: nothing here changes a verdict)
MISS_NOTES = {
    "lxmert": "Three encoders from three counts: language (`l_layers`) and object-relation "
              "(`r_layers`) towers side by side, then cross-modality layers (`x_layers`). "
              "layerscope joins the language and relation lists as one stack (one block class "
              "under one parent, the rule for ResNet-like stages) and defaults to the "
              "cross-modality layers; the reference wants all three lists in one default, which "
              "no data-flow order gives. A person names three stacks.",
    "oneformer": "Pixel decoder (`encoder_layers`), transformer decoder and a text-query "
                 "transformer (`query_dec_layers`), all from the model's own config: the reference "
                 "wants the pixel decoder and the query transformer, layerscope the pixel decoder "
                 "(the stack its own-config rule picks).",
    "uvdoc": "A document-unwarping CNN: a ResNet-like trunk (three stages of 3, 4 and 6 residual "
             "blocks, declared only as the per-block lists of `resnet_configs`) then a bridge of "
             "six parallel dilated-conv branches, each of `depths` [1, 1, 1, 3, 3, 3] convs, all "
             "reading the trunk's output. The reference takes `depths`, so the bridge's 12 convs; "
             "layerscope takes the trunk's 13 residual blocks, the sequential depth a person "
             "names. The branches run side by side, not one after another, which the config "
             "does not say: the reference is what is wrong here.",
    "efficientloftr": "A feature matcher: a RepVGG backbone (`stage_num_blocks` [1, 2, 4, 14]) "
                      "then a local feature transformer of `num_attention_layers` 4 layers. The "
                      "tiny config does not build (its width must equal the last "
                      "`out_features`), and at the default size `num_attention_layers` equals "
                      "the number of stages (4), so the named-count rule takes it for a count "
                      "of stages and the reference is the backbone's 21 blocks; layerscope "
                      "defaults to the transformer (the backbone is its stem), which a person "
                      "counts.",
}


#: why the models left without a reference have none, read from their configs and code (for the
#: report only: nothing here makes a reference)
NO_REFERENCE_NOTES = {
    "albert": "One layer group (`num_hidden_groups` 1) applied `num_hidden_layers` times: no list "
              "holds the blocks, which are repeated calls of one module (layerscope refuses it "
              "and names `--blocks`).",
    "encodec": "One encoder/decoder block per sampling ratio, but each block (residual units, an "
               "ELU, a strided conv) is spread over one flat list of 16 modules, not a module of "
               "its own; its residual unit's ELU/conv list is as long as the ratios by chance.",
    "wavtokenizer_encoder": "As EnCodec: the blocks per sampling ratio are spread over one flat "
                            "list of modules.",
    "levit": "`depths` counts attention+MLP pairs per stage, while each stage's list holds the "
             "residual sublayers one by one (two per depth unit, plus a subsampling pair): no "
             "list is as long as a declared count.",
    "mobilenet_v1": "The config declares no layer count and no per-block list (the 13 "
                    "depthwise-separable pairs are fixed in the code).",
    "mobilenet_v2": "The config declares no layer count and no per-block list (the inverted "
                    "residual settings are fixed in the code).",
    "mobilevit": "The transformer depths per stage (2, 4, 3) are fixed in the code; the config "
                 "declares only widths.",
    "mobilevitv2": "`n_attn_blocks` [2, 4, 3] sizes the transformers inside the last three of five "
                   "stages, two MobileNet stages before them in the same list: no module's lists "
                   "of blocks have those lengths in order.",
}


def _verdict(r: dict | None) -> str:
    """One model's default-stack verdict: right, miss, asks (a dual encoder), no reference."""
    if r is None or not r.get("builds"):
        return "did not build"
    if not (r.get("expected") or r.get("dual")):
        return "no reference"
    return "right" if r.get("default_ok") else "miss"


def _towers(r: dict | None) -> str:
    if r is None or not r.get("builds") or len(r.get("reference") or []) < 2:
        return "-"
    return "listed" if r.get("towers_listed") else "not listed"


def _key(r: dict) -> tuple[str, str, str]:
    return r["mapping"], r["model_type"], r["cls"]


def _changes(rows: list[dict], steps: list[tuple[str, list[dict]]]) -> list[str]:
    """Table lines: every model whose verdict or tower listing differs between the steps."""
    by = [(label, {_key(r): r for r in rs}) for label, rs in steps] + [("now", {_key(r): r for r in rows})]
    head = " | ".join(f"{label}: default / towers" for label, _ in by)
    out = [f"| model | class | mapping | {head} |", "|---|---|---|" + "---|" * len(by)]
    for key in sorted(by[-1][1]):
        cells = [f"{_verdict(m.get(key))} / {_towers(m.get(key))}" for _, m in by]
        if len(set(cells)) > 1:
            out.append(f"| {key[1]} | {key[2]} | {key[0]} | " + " | ".join(cells) + " |")
    return out


def write_markdown(rows: list[dict], path: Path, meta: dict,
                   steps: list[tuple[str, list[dict]]] | None = None) -> None:
    import transformers

    s = summarise(rows)
    lines = ["# Coverage: layer discovery over the transformers population", "",
             f"Generated by `scripts/coverage.py` on this machine ({meta['date']}, transformers "
             f"{transformers.__version__}, {meta['seconds']:.0f} s, per-model timeout "
             f"{meta['timeout']:.0f} s). Every class in `MODEL_MAPPING_NAMES` (base models) and "
             f"`MODEL_FOR_CAUSAL_LM_MAPPING_NAMES` (causal LMs) is built offline with "
             f"`from_config`-style construction from a tiny version of its default config "
             f"({meta['how']}); when the tiny config does not build, from the default config. "
             f"See the script's docstring for the reference and the rules.", "",
             "**Reference.** The block lists a person names: the `nn.ModuleList`s whose length is a "
             "layer count the config declares (every count set to a different odd number from 9 "
             "that no other number in the config equals; a per-stage depth list such as `depths` "
             "or `blocks_per_stage` declares its sum, and a list of stages, each holding one list "
             "of blocks under the same name whose lengths are that depth list in order (ResNet's "
             "`encoder.stages.i.layers`, Swin's `encoder.layers.i.blocks`), stands for those blocks "
             "joined in order, even where the number of stages is itself a declared count; a count "
             "declared under a name of its own, ending in `layers`/`blocks` or counted `_per_` "
             "something (`num_blocks`, `conf_num_hidden_layers`, `num_spatial_layers`, "
             "`num_self_attends_per_block`), shrunk like the others in a config with no usual count, is the model's own config's "
             "layer count where its usual counts match no list, unless it equals the length of "
             "the config's per-stage lists (a number of stages) or starts with the name of a part "
             "of the model (`memory_attention_num_layers` sizes that part); the encoder's and "
             "decoder's counts spelled out (`encoder_num_hidden_layers`) are usual counts; a "
             "per-stage repeat list (`num_block_repeats`) declares the sum of its repeats scaled "
             "by `depth_coefficient`, rounded up; an int list under a count's name "
             "(`stage_num_blocks`) declares per-stage depths, matched only as a list of stages' "
             "block lists in order; entries of another class holding no block list between the "
             "stages (downsampling layers) are left out of the stages; a per-stage depth list "
             "matched by no list is matched by the deepest module whose innermost lists of one "
             "block class have its lengths in order (a decoder's in reverse), those lists' "
             "blocks joined; where the model's own "
             "config declares no count any list matches and no per-stage depths, each sampling "
             "ratio (`upsampling_ratios`, `downsampling_ratios`, `upsample_rates`, "
             "`resblock_stride_sizes`) declares one block, matched only by a list of one "
             "composite block class; a list of lists counts its inner lists' "
             "entries; a list of single layers, each holding only its own parameters, counts only "
             "beside a list of composite blocks of the same length under the same parent, since "
             "alone it is a per-layer head or an MLP's layers; plain dicts a config derives from "
             "its fields, not fields themselves, are dropped from the tiny config so they are "
             "derived from the shrunk fields). "
             "The default stack is right when its blocks are exactly the lists of the primary "
             "config (the model's own when it declares a layer count, else its text config, also one level down; the lists of "
             "both configs of an encoder-decoder; for a config holding a pair "
             "`<x>encoder_config`/`<x>decoder_config`, the lists of both with those between them "
             "in module order; where the primary config's counts match no list (they size parts "
             "the class does not build), the first config in config order that has lists; a "
             "detector's backbone lists only when nothing "
             "else is), and for a dual encoder (its forward computes two `logits_per_*`, one per "
             "tower, or it holds a contrastive `logit_scale` of its own, and it has no LM head), a container without a forward of its own (its "
             "sub-models run one after another in `generate`), towers of one kind side by side "
             "(every reference list from a sub-config of the model's own config, all of one "
             "config class) or lists of one length and entry class under different parents that "
             "are not an encoder and its decoder, when layerscope asks which stack, "
             "naming them. Blocks kept in parallel lists (block i = the i-th entry of each list) "
             "are right when they hold exactly the reference lists' entries. A model with no list as "
             "long as a declared count (a CNN whose config declares only per-block channel "
             "lists or nothing, a codec whose blocks are not modules of their own) has no "
             "reference: it is counted in the first column as not right and left out of the "
             "second.", "",
             "## Totals", "",
             "| population | models | built | default stack right (of built) | right where a reference exists | multi-tower: every tower listed | all four roles found | final norm | output head | attention | feed-forward |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for mapping in ("base", "causal-lm", "all"):
        t = s[mapping]
        lines.append(
            f"| {mapping} | {t['models']} | {t['built']} | {_pct(t['default_ok'], t['built'])} | "
            f"{_pct(t['default_ok_judged'], t['judged'])} | {_pct(t['multi_listed'], t['multi'])} | "
            f"{_pct(t['roles_all'], t['built'])} | {_pct(t['role_final_norm'], t['built'])} | "
            f"{_pct(t['role_head'], t['built'])} | {_pct(t['role_attention'], t['built'])} | "
            f"{_pct(t['role_ffn'], t['built'])} |")
    a, c = s["all"], s["causal-lm"]

    def verdict(ok, total, target):
        share = ok / total if total else 0.0
        return f"{100 * share:.1f}% ({'met' if share >= target else 'not met'})"

    lines += ["", "**Targets.** Default stack right on >= 98% of the models that build: "
              f"{verdict(a['default_ok'], a['built'], 0.98)} of all built, "
              f"{verdict(a['default_ok_judged'], a['judged'], 0.98)} where a reference exists; "
              f"causal LMs {verdict(c['default_ok_judged'], c['judged'], 0.98)}. Every multi-tower "
              f"model's towers listed by name: {verdict(a['multi_listed'], a['multi'], 1.0)}. "
              f"Roles on >= 95% of causal LMs: {verdict(c['roles_all'], c['built'], 0.95)}. "
              "The misses are listed below."]
    lines += ["", "Roles: *attention* counts a token mixer that is not attention (a state-space "
              "or recurrent mixer) as found; *feed-forward* counts a block declared without one. "
              "Base models have no output head, so the head column reads low for them by design; "
              "the causal-LM row is the one the roles target (>= 95%) applies to.", ""]
    if steps:
        lines += ["## Before this change", "", meta.get("before_note", ""), "",
                  "| population | run | built | default stack right (of built) | right where a reference exists | multi-tower: every tower listed | all four roles found |",
                  "|---|---|---|---|---|---|---|"]
        summaries = [(label, summarise(rs)) for label, rs in steps] + [("now", s)]
        for mapping in ("base", "causal-lm", "all"):
            for label, summ in summaries:
                t = summ[mapping]
                lines.append(f"| {mapping} | {label} | {t['built']} | {_pct(t['default_ok'], t['built'])} | "
                             f"{_pct(t['default_ok_judged'], t['judged'])} | "
                             f"{_pct(t['multi_listed'], t['multi'])} | "
                             f"{_pct(t['roles_all'], t['built'])} |")
        lines += ["", "Every model whose verdict changed (default stack: right, miss, no "
                  "reference, did not build; towers: every reference list is a stack or not, "
                  "'-' for a model with fewer than two reference lists):", ""]
        lines += _changes(rows, steps) + [""]
    lines += ["## TransformerLens, for comparison", "",
              "TransformerLens' `TransformerBridge.boot_transformers` booted 93 of 182 causal LMs "
              "and 5 of 572 base models when measured earlier on this population (transformers "
              "5.x); it is not installed here, so that figure is cited, not re-run.", ""]
    multi = [r for r in rows if r.get("builds") and r.get("stacks") and len(r["stacks"]) > 1]
    if multi:
        lines += ["## Multi-stack models: the stacks found", "",
                  "| model | class | stacks (name: blocks) | default |", "|---|---|---|---|"]
        for r in sorted(multi, key=lambda r: (r["model_type"], r["mapping"])):
            st = ", ".join(f"{n}: {k}" + (" (stem)" if kind == "stem" else "")
                           for n, _, k, kind in r["stacks"])
            d = r.get("default") or ("asks" if r.get("default_error") else "-")
            if isinstance(d, (list, tuple)):
                d = " + ".join(d)
            lines.append(f"| {r['model_type']} | {r['cls']} | {st} | {d} |")
        lines.append("")
    misses = [r for r in rows if r.get("builds") and not r.get("default_ok")]
    judged_misses = [r for r in misses if _verdict(r) == "miss"]
    if judged_misses:
        lines += ["## The misses where a reference exists, judged", "",
                  "| model | class | mapping | what a person would name |", "|---|---|---|---|"]
        for r in sorted(judged_misses, key=lambda r: (r["model_type"], r["mapping"])):
            note = MISS_NOTES.get(r["model_type"], "not judged yet: see the row below")
            lines.append(f"| {r['model_type']} | {r['cls']} | {r['mapping']} | {note.replace('|', '/')} |")
        lines.append("")
    no_ref = [r for r in misses if _verdict(r) == "no reference"]
    if no_ref:
        lines += ["## The models without a reference, and why", "",
                  "| model | class | mapping | why the config declares no block list |",
                  "|---|---|---|---|"]
        for r in sorted(no_ref, key=lambda r: (r["model_type"], r["mapping"])):
            note = NO_REFERENCE_NOTES.get(r["model_type"], "not looked at yet")
            lines.append(f"| {r['model_type']} | {r['cls']} | {r['mapping']} | {note.replace('|', '/')} |")
        lines.append("")
    lines += ["## Every miss: default stack", "",
              "| model | class | mapping | why |", "|---|---|---|---|"]
    for r in sorted(misses, key=lambda r: (r["model_type"], r["mapping"])):
        lines.append(f"| {r['model_type']} | {r['cls']} | {r['mapping']} | {_cell(r.get('why', '?'))} |")
    unlisted = [r for r in rows if r.get("builds") and len(r.get("reference") or []) > 1
                and not r.get("towers_listed")]
    lines += ["", "## Every miss: multi-list models with a reference list that is not a stack", "",
              "| model | class | reference lists | stacks found |", "|---|---|---|---|"]
    for r in sorted(unlisted, key=lambda r: (r["model_type"], r["mapping"])):
        refs = ", ".join(p for p, _, _ in r["reference"])
        found = ", ".join(f"{n} ({'+'.join(ps)})" for n, ps, _, _ in (r.get("stacks") or []))
        lines.append(f"| {r['model_type']} | {r['cls']} | {_cell(refs)} | {_cell(found)} |")
    role_miss = [r for r in rows if r.get("builds") and r["mapping"] == "causal-lm"
                 and (not r.get("roles") or not all(r["roles"].values()))]
    lines += ["", "## Every miss: roles of causal LMs", "",
              "| model | class | missing |", "|---|---|---|"]
    for r in sorted(role_miss, key=lambda r: r["model_type"]):
        missing = [k for k, v in (r.get("roles") or {}).items() if not v] or [
            r.get("roles_error") or "no blocks"]
        lines.append(f"| {r['model_type']} | {r['cls']} | {_cell(', '.join(missing))} |")
    failed = [r for r in rows if not r.get("builds")]
    lines += ["", "## Did not build (not counted above)", "",
              "| model | class | mapping | error |", "|---|---|---|---|"]
    for r in sorted(failed, key=lambda r: (r["model_type"], r["mapping"])):
        lines.append(f"| {r['model_type']} | {r['cls']} | {r['mapping']} | {_cell(r.get('error', '?'))} |")
    path.write_text("\n".join(lines) + "\n")


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")[:240]


def _read_rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _write_summary(rows: list[dict], args, seconds: float) -> None:
    """Write the markdown page for ``rows``, compared with the ``--before`` rows when they exist."""
    steps = []  # --before LABEL=ROWS[,LABEL=ROWS...], oldest first
    for item in filter(None, args.before.split(",")):
        label, _, file = item.rpartition("=")
        if Path(file).exists():
            steps.append((label or "before", _read_rows(Path(file))))
    how = Counter(r.get("how") for r in rows if r.get("builds"))
    meta = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "seconds": seconds,
            "timeout": args.timeout, "before_note": args.before_note,
            "how": ("random weights on the CPU" if args.weights else
                    "on the meta device: the same modules and parameter shapes, no weights "
                    "allocated, since layout and roles read structure only")
            + "; " + ", ".join(f"{v} built {k}" for k, v in how.most_common())}
    write_markdown(rows, Path(args.out), meta, steps)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per model")
    ap.add_argument("--only", default="", help="comma list of model types")
    ap.add_argument("--mapping", choices=("base", "causal-lm"), default=None,
                    help="only this population (default: both)")
    ap.add_argument("--part", default="1/1", help="I/N: only the I-th of N interleaved shares of "
                    "the jobs (run N processes, then --markdown-only on their rows together)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "COVERAGE.md"))
    ap.add_argument("--rows", default=str(ROOT / "build" / "coverage_rows.jsonl"),
                    help="per-model results, one JSON object a line")
    ap.add_argument("--before", default="", help="rows files of earlier runs to compare with, "
                    "oldest first: LABEL=PATH[,LABEL=PATH...]")
    ap.add_argument("--before-note", default="", help="a paragraph on how the earlier runs differ")
    ap.add_argument("--no-markdown", action="store_true")
    ap.add_argument("--seconds", type=float, default=0.0,
                    help="with --markdown-only: how long the run that wrote --rows took")
    ap.add_argument("--markdown-only", action="store_true",
                    help="write the markdown from an existing --rows file without building models")
    ap.add_argument("--weights", action="store_true",
                    help="build with random weights on the CPU (default: on the meta device, "
                         "which holds the same modules without allocating or initialising weights)")
    args = ap.parse_args(argv)
    import transformers  # noqa: F401 - imported once in the parent, shared by the forked worker
    import layerscope.layers  # noqa: F401

    only = {t.strip() for t in args.only.split(",") if t.strip()} or None
    if args.markdown_only:  # --rows may name several files, comma-separated
        rows = [row for f in args.rows.split(",") for row in _read_rows(Path(f))]
        _write_summary(rows, args, args.seconds)
        print(json.dumps(summarise(rows), indent=1))
        return 0
    jobs = [j for j in population(only, args.weights) if args.mapping in (None, j[0])]
    part, parts = (int(x) for x in args.part.split("/"))
    jobs = jobs[part - 1::parts]
    pool = Pool()
    rows, t0 = [], time.time()
    rows_path = Path(args.rows)
    rows_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = rows_path.with_suffix(".partial")
    with open(tmp, "w") as fh:
        for i, job in enumerate(jobs):
            row = pool.run(job, args.timeout)
            rows.append(row)
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            mark = "ok " if row.get("default_ok") else ("-- " if row.get("builds") else "xx ")
            print(f"[{i + 1}/{len(jobs)}] {mark}{job[1]} {job[2]} {row.get('why', row.get('error', ''))[:100]}",
                  flush=True)
    pool.close()
    tmp.replace(rows_path)
    if not args.no_markdown:
        _write_summary(rows, args, time.time() - t0)
    print(json.dumps(summarise(rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A sample of the coverage population (scripts/coverage.py) in the test suite: every layout
family, built from tiny configs on the meta device, must keep its default stack, its named
towers and (for causal LMs) its roles."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "coverage.py"
_spec = importlib.util.spec_from_file_location("layerscope_coverage_script", _SCRIPT)
coverage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(coverage)

#: (model type, family) for base models: encoders, encoder-decoders, speech encoders,
#: detectors, vision-language models, dual encoders, state-space and MoE decoders
BASE = [
    ("bert", "encoder"), ("roberta", "encoder"), ("distilbert", "encoder"), ("electra", "encoder"),
    ("deberta-v2", "encoder"), ("markuplm", "encoder with 100 embedding tables"),
    ("vit", "vision encoder"), ("dinov2", "vision encoder"),
    ("t5", "encoder-decoder"), ("bart", "encoder-decoder"), ("whisper", "speech encoder-decoder"),
    ("wav2vec2", "speech encoder (conv stem)"), ("hubert", "speech encoder (conv stem)"),
    ("wavlm", "speech encoder (conv stem)"), ("sew", "speech encoder (conv stem)"),
    ("data2vec-audio", "speech encoder (conv stem)"), ("unispeech", "speech encoder (conv stem)"),
    ("detr", "detector (backbone stem)"), ("conditional_detr", "detector (backbone stem)"),
    ("deformable_detr", "detector (backbone stem)"), ("table-transformer", "detector (backbone stem)"),
    ("llava", "vision-language"), ("gemma3", "vision-language"), ("idefics3", "vision-language"),
    ("qwen2_vl", "vision-language"), ("blip-2", "vision-language with a Q-Former"),
    ("paligemma", "vision-language"), ("qwen2_audio", "audio-language"),
    ("clip", "dual encoder"), ("siglip", "dual encoder"), ("clap", "dual encoder (audio)"),
    ("align", "dual encoder (CNN tower)"),
    ("mamba", "state-space"), ("mixtral", "mixture of experts"), ("llama", "decoder"),
    ("vjepa2", "encoder + predictor"),
    ("xlm", "parallel per-layer lists"), ("flaubert", "parallel per-layer lists"),
    ("idefics", "parallel per-layer lists (gated cross-attention)"),
    ("lightglue", "parallel per-layer lists (matcher)"), ("d_fine", "detector with per-layer heads"),
    ("sam", "vision model without tokens"), ("sam3_tracker", "vision model without tokens"),
    ("seamless_m4t", "multi-model container (speech-to-unit sub-model)"),
    ("evolla", "multi-model container (protein encoder)"), ("bark", "container without a forward"),
    ("videoprism", "dual encoder (video)"), ("xclip", "dual encoder (video)"),
    ("mask2former", "segmenter with a backbone config"), ("neucodec", "audio codec"),
    ("florence2", "vision-language encoder-decoder (per-stage vision depths)"),
    ("funnel", "encoder of nested block lists, then a decoder"),
    ("rf_detr", "detector (ViT backbone config naming its out_features)"),
    ("pp_doclayout_v3", "detector with a per-layer linear head"),
    ("pp_doclayout_v4", "detector with per-layer heads beside its decoder layers"),
    ("sam2", "vision model with per-stage depths (Hiera)"),
    ("wavtokenizer", "audio codec (conv pipeline stem)"),
    ("bridgetower", "twin cross-modal lists"),
    ("csm", "speech LM with a codec sub-model"),
    ("flava", "dual encoder with a multimodal encoder over both towers"),
    ("resnet", "CNN with stages (blocks in per-stage lists, per-stage depths)"),
    ("swin", "hierarchical vision transformer (blocks in per-stage lists)"),
    ("segformer", "stages counted by num_hidden_layers, blocks by depths"),
    ("xlstm", "recurrent (xLSTM, depth declared as num_blocks)"),
    ("gemma3n_audio", "conformer (depth declared as conf_num_hidden_layers)"),
    ("dac", "audio codec (one block per sampling ratio)"),
    ("efficientnet", "CNN (per-stage repeats scaled by depth_coefficient)"),
    ("hgnet_v2", "CNN (per-stage block counts under a count's name)"),
    ("pp_ocrv5_mobile_rec", "backbone alone (the own config sizes a head it does not build)"),
    ("fastspeech2_conformer", "speech encoder-decoder (derived per-module dicts rebuilt)"),
    ("moonshine", "speech encoder-decoder (encoder/decoder counts spelled out)"),
    ("sam2_video", "tracker (a count named after a part sizes that part)"),
    ("sam3", "detector prompted by text (an encoder/decoder sub-config pair)"),
    ("depth_pro", "towers from sibling sub-configs of one class (asks)"),
    ("hrm_text", "stacks of one kind run in alternation (asks)"),
    ("swiftformer", "CNN (downsampling layers between the stages in one list)"),
    ("vibevoice_acoustic_tokenizer", "audio tokenizer (a stem's blocks, then each stage's)"),
]
#: causal LMs: decoders of many layouts, MoE, state-space, hybrid and recurrent ones
CAUSAL = [
    ("llama", "decoder"), ("mistral", "decoder"), ("qwen2", "decoder"), ("qwen3", "decoder"),
    ("gemma", "decoder"), ("gemma2", "decoder"), ("phi", "decoder"), ("phi3", "fused qkv"),
    ("gpt2", "Conv1D fused qkv"), ("gpt_neox", "fused qkv"), ("gptj", "parallel block"),
    ("opt", "decoder"), ("bloom", "fused qkv"), ("falcon", "fused qkv"), ("codegen", "decoder"),
    ("starcoder2", "decoder"), ("olmo", "parameter-free norms"), ("olmo2", "decoder"),
    ("cohere", "decoder"), ("stablelm", "decoder"), ("granite", "decoder"),
    ("mixtral", "mixture of experts"), ("qwen2_moe", "mixture of experts"),
    ("mamba", "state-space"), ("mamba2", "state-space"), ("falcon_mamba", "state-space"),
    ("jamba", "hybrid"), ("zamba", "hybrid"), ("recurrent_gemma", "recurrent"),
    ("rwkv", "recurrent"), ("bert", "post-norm decoder"), ("openai-gpt", "post-norm decoder"),
    ("marian", "post-norm decoder"), ("xglm", "decoder"), ("whisper", "decoder of a speech model"),
    ("xlm", "parallel per-layer lists"),
    ("xlstm", "recurrent (xLSTM, depth declared as num_blocks)"),
]


def _cls(mapping: str, model_type: str) -> str:
    return next(c for m, t, c, _ in coverage.population({model_type}) if m == mapping)


def test_the_sample_covers_sixty_architectures_and_every_family():
    assert len({t for t, _ in BASE} | {t for t, _ in CAUSAL}) >= 60
    families = {f for _, f in BASE + CAUSAL}
    for needed in ("vision-language", "speech encoder (conv stem)", "detector (backbone stem)",
                   "encoder-decoder", "dual encoder", "state-space", "mixture of experts"):
        assert needed in families


@pytest.mark.parametrize("model_type,family", BASE, ids=[t for t, _ in BASE])
def test_base_model_default_stack_and_towers(model_type, family):
    row = coverage.measure("base", model_type, _cls("base", model_type))
    assert row["builds"], row.get("error")
    assert row["default_ok"], f"{family}: {row.get('why')} (stacks {row.get('stacks')})"
    if len(row["reference"]) > 1:
        assert row["towers_listed"], row["stacks"]


@pytest.mark.parametrize("model_type,family", CAUSAL, ids=[t for t, _ in CAUSAL])
def test_causal_lm_default_stack_and_roles(model_type, family):
    row = coverage.measure("causal-lm", model_type, _cls("causal-lm", model_type))
    assert row["builds"], row.get("error")
    assert row["default_ok"], f"{family}: {row.get('why')}"
    assert all(row["roles"].values()), f"{family}: roles {row['roles']}"


def test_blt_counts_its_three_stacks_in_data_flow_order():
    # a person, the reference (its encoder/decoder sub-config pair with the global config's
    # lists between them) and layerscope count the local encoder, the global transformer and
    # the local decoder
    row = coverage.measure("base", "blt", "BltModel")
    assert row["default"] == "local_encoder+global_transformer+local_decoder"
    assert row["default_ok"] and row["towers_listed"]


def test_reference_only_where_the_config_declares_it():
    # a codec whose residual unit's ELU/conv list is as long as its ratios has no reference
    # (the ratio rule takes lists of one composite block class only); a CNN declaring nothing
    # has none either
    for model_type, cls in (("encodec", "EncodecModel"), ("mobilenet_v2", "MobileNetV2Model")):
        row = coverage.measure("base", model_type, cls)
        assert row["builds"] and row["expected"] == [], (model_type, row["expected"])


def test_a_causal_lm_of_stacks_of_one_kind_asks():
    row = coverage.measure("causal-lm", "hrm_text", "HrmTextForCausalLM")
    assert row["dual"] and row["default_ok"] and "L_module" in row["default_error"]

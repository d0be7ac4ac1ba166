"""Logit lens: against transformers' own logits and hidden states, KL/accuracy by hand, top-k by
torch.topk, the no-LM-head error, and the CLI on a tiny Llama saved as a Hugging Face folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from layerscope.analyses.lens import LensResult, lens_logits, logit_lens
from layerscope.errors import LayerscopeError
from layerscope.models import Encoded


def padded(vocab: int, lengths=(6, 3, 5), seed: int = 0) -> Encoded:
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    ids = torch.randint(1, vocab, (len(lengths), T), generator=g) * mask
    return Encoded(args=(), kwargs={"input_ids": ids, "attention_mask": mask}, mask=mask, size=len(lengths))


def final_norm_of(model):
    return model.model.norm if hasattr(model, "model") else model.transformer.ln_f


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_lens_against_transformers(name, request):
    model = request.getfixturevalue(name)
    enc = padded(model.config.vocab_size)
    names, logits = lens_logits(model, enc)
    with torch.no_grad():
        out = model(**enc.kwargs, output_hidden_states=True)
    L = model.config.num_hidden_layers
    assert len(names) == L + 1 and names[0] == "embeddings"
    torch.testing.assert_close(logits[-1], out.logits, rtol=1e-5, atol=1e-5)
    # transformers' hidden_states[l] (l < L) is the residual stream before the final norm
    with torch.no_grad():
        for layer in range(L):
            want = model.lm_head(final_norm_of(model)(out.hidden_states[layer]))
            torch.testing.assert_close(logits[layer], want, rtol=1e-5, atol=1e-5)


def test_statistics_by_hand(tiny_llama):
    enc = padded(tiny_llama.config.vocab_size, lengths=(7, 2, 5))
    res = logit_lens(tiny_llama, [enc])
    _, logits = lens_logits(tiny_llama, enc)
    ids, mask = enc.kwargs["input_ids"].numpy(), enc.mask.numpy().astype(bool)

    def log_softmax(x):
        x = x.astype(np.float64)
        m = x.max(-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))

    final = log_softmax(logits[-1].numpy())
    for layer, lg in enumerate(logits):
        lp = log_softmax(lg.numpy())
        kl, agree, agree5, nll, correct, n_next = [], [], [], [], [], 0
        for b in range(ids.shape[0]):
            for t in range(ids.shape[1]):
                if not mask[b, t]:
                    continue
                kl.append((np.exp(final[b, t]) * (final[b, t] - lp[b, t])).sum())
                agree.append(lp[b, t].argmax() == final[b, t].argmax())
                agree5.append(final[b, t].argmax() in np.argsort(-lp[b, t])[:5])
                if t + 1 < ids.shape[1] and mask[b, t + 1]:
                    nll.append(-lp[b, t, ids[b, t + 1]])
                    correct.append(lp[b, t].argmax() == ids[b, t + 1])
        assert res.kl[layer] == pytest.approx(max(np.mean(kl), 0.0), abs=1e-6)
        assert res.top1_agreement[layer] == pytest.approx(np.mean(agree))
        assert res.top5_agreement[layer] == pytest.approx(np.mean(agree5))
        assert res.loss[layer] == pytest.approx(np.mean(nll), rel=1e-5)
        assert res.accuracy[layer] == pytest.approx(np.mean(correct))
    assert res.kl[-1] < 1e-6 and res.top1_agreement[-1] == 1.0
    assert res.n_tokens == 14 and res.n_items == 3


def test_top_k_matches_torch_topk(tiny_gpt2):
    prompt = torch.tensor([5, 17, 3, 88])
    res = logit_lens(tiny_gpt2, prompt=prompt, top_k=4)
    _, logits = lens_logits(tiny_gpt2, prompt.unsqueeze(0))
    assert res.prompt_tokens == ["5", "17", "3", "88"]
    for layer, lg in enumerate(logits):
        top = torch.topk(torch.softmax(lg[0], -1), 4, dim=-1)
        assert res.top_tokens[layer] == [[str(int(i)) for i in row] for row in top.indices]
        np.testing.assert_allclose(res.top_probs[layer], top.values.numpy(), rtol=1e-5)
    assert "KL" in res.summary() and res.plot() is not None


def test_model_is_left_as_it_was(tiny_llama):
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    tiny_llama.train()
    logit_lens(tiny_llama, [padded(tiny_llama.config.vocab_size)])
    assert tiny_llama.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in tiny_llama.modules())
    assert all(torch.equal(v, before[k]) for k, v in tiny_llama.state_dict().items())


def test_no_lm_head_is_an_error(minilm):
    with pytest.raises(LayerscopeError, match="has no LM head"):
        logit_lens(minilm, prompt=torch.tensor([101, 2023, 102]))


def test_bad_input(tiny_gpt2):
    with pytest.raises(LayerscopeError, match="pass data"):
        logit_lens(tiny_gpt2)
    with pytest.raises(LayerscopeError, match="top_k"):
        logit_lens(tiny_gpt2, prompt=torch.tensor([1, 2]), top_k=0)
    with pytest.raises(LayerscopeError, match="no tokenizer"):
        logit_lens(tiny_gpt2, prompt="hello")


def test_cli_lens(llama_folder, tmp_path, capsys):
    from layerscope.cli import main

    png = tmp_path / "lens.png"
    assert main(["lens", str(llama_folder), "--prompt", "the cat sat on the mat", "--top-k", "3",
                 "--json", "--plot", str(png)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "LensResult" and out["layers"][0] == "embeddings" and len(out["layers"]) == 3
    assert len(out["top_tokens"][0][0]) == 3 and "cat" in out["prompt_tokens"]
    assert out["kl"][-1] < 1e-6 and png.stat().st_size > 1000
    data = tmp_path / "d.txt"
    data.write_text("a first sentence here\nand another one\n")
    assert main(["lens", str(llama_folder), str(data)]) == 0
    assert "logit lens over" in capsys.readouterr().out
    assert main(["lens", str(llama_folder)]) == 2
    assert "error: pass DATA" in capsys.readouterr().err
    assert main(["lens", "minilm", "--prompt", "hi"]) == 2
    assert "has no LM head" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_last_layer_is_its_logits():
    from layerscope.models import load_model

    loaded = load_model("smollm2")
    enc = loaded.encode(["The capital of France is", "A short one"])
    names, logits = lens_logits(loaded, enc)
    with torch.no_grad():
        want = loaded.module(**enc.kwargs).logits
    assert len(names) == 31
    torch.testing.assert_close(logits[-1], want, rtol=1e-5, atol=1e-4)
    res = logit_lens(loaded, prompt="The capital of France is", top_k=3)
    assert res.top_tokens[-1][-1][0].strip() == "Paris"
    assert isinstance(res, LensResult)


def test_cli_lens_on_the_zoo_gpt(capsys):
    """The lens works on any decoder-only LM with an output head, the zoo's own gpt included;
    its last layer is the model's own logits (KL 0, full agreement)."""
    from layerscope.cli import main

    code = main(["lens", "gpt", "text", "--limit", "8", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    res = json.loads(out)
    assert res["layers"] == ["embeddings", "blocks.0", "blocks.1", "blocks.2"]
    assert res["kl"][-1] < 1e-6 and res["top1_agreement"][-1] == 1.0 and res["n_tokens"] == 8 * 64
    code = main(["lens", "cnn", "mnist", "--limit", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "has no LM head" in err and "Traceback" not in err

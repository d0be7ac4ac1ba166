"""Surgery: drop, prune, quantize, early exit — saved models reload and match independent runs."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from layerscope.errors import LayerscopeError  # noqa: E402
from layerscope.models import load_model  # noqa: E402


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=60, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=60, n_embd=32, n_layer=4, n_head=4, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=48)
    return BertModel(cfg).eval()


def ids(batch=3, length=7, vocab=60):
    g = torch.Generator().manual_seed(1)
    return torch.randint(1, vocab, (batch, length), generator=g)


def snapshot(module: nn.Module):
    return ({k: v.detach().clone() for k, v in module.state_dict().items()},
            module.config.to_dict() if hasattr(module.config, "to_dict") else copy.deepcopy(module.config),
            module.training)


def assert_unchanged(module: nn.Module, snap):
    state, config, training = snap
    now = module.state_dict()
    assert state.keys() == now.keys()
    for k, v in state.items():
        assert torch.equal(v, now[k]), k
    assert (module.config.to_dict() if hasattr(module.config, "to_dict") else module.config) == config
    assert module.training == training


def skipped_output(module: nn.Module, blocks: list[nn.Module], call):
    """The original model run with the given blocks replaced by identity hooks (removed after)."""

    def identity(mod, args, kwargs, output):
        h = args[0] if args else kwargs["hidden_states"]
        if isinstance(output, tuple):
            return (h,) + tuple(output[1:])
        return h

    handles = [b.register_forward_hook(identity, with_kwargs=True) for b in blocks]
    try:
        with torch.no_grad():
            return call(module)
    finally:
        for h in handles:
            h.remove()


def main_tensor(out):
    if hasattr(out, "logits") and out.logits is not None:
        return out.logits
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out


# --- drop --------------------------------------------------------------------------------------


@pytest.mark.parametrize("make,blocks_attr", [
    (tiny_llama, lambda m: m.model.layers),
    (tiny_gpt2, lambda m: m.transformer.h),
    (tiny_bert, lambda m: m.encoder.layer),
])
def test_drop_hf_reloads_and_equals_skipped_original(tmp_path, make, blocks_attr):
    from transformers import AutoModel, AutoModelForCausalLM

    from layerscope.surgery import drop_blocks, save_model

    model = make()
    snap = snapshot(model)
    x = ids()
    mask = torch.ones_like(x)
    mask[0, -2:] = 0
    dropped = drop_blocks(model, "1,3")
    assert_unchanged(model, snap)
    assert dropped.removed == [1, 3]
    out = save_model(dropped.loaded, dropped.module, tmp_path / "out")
    auto = AutoModelForCausalLM if hasattr(model, "lm_head") else AutoModel
    reloaded = auto.from_pretrained(str(out)).eval()
    assert reloaded.config.num_hidden_layers == 2
    layer_ids = [m.layer_idx for m in reloaded.modules() if isinstance(getattr(m, "layer_idx", None), int)]
    assert layer_ids == [0, 1]
    with torch.no_grad():
        got = main_tensor(reloaded(input_ids=x, attention_mask=mask))
    blocks = blocks_attr(model)
    want = main_tensor(skipped_output(model, [blocks[1], blocks[3]],
                                      lambda m: m(input_ids=x, attention_mask=mask)))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not any(b._forward_hooks for b in blocks)


def test_drop_llama_generation_with_cache_matches_skipped(tmp_path):
    from transformers import AutoModelForCausalLM

    from layerscope.surgery import drop_blocks, save_model

    model = tiny_llama()
    out = save_model(*(lambda d: (d.loaded, d.module))(drop_blocks(model, [0, 2])), tmp_path / "o")
    reloaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    x = ids(1, 5)
    with torch.no_grad():
        got = reloaded.generate(x, max_new_tokens=5, do_sample=False)
    blocks = model.model.layers
    want = skipped_output(model, [blocks[0], blocks[2]],
                          lambda m: m.generate(x, max_new_tokens=5, do_sample=False))
    assert torch.equal(got, want)


def test_drop_zoo_mlp_checkpoint_reloads_and_equals_skipped(tmp_path):
    from layerscope.surgery import drop_blocks, save_model

    loaded = load_model("mlp:depth=4,width=64")
    snap = snapshot(loaded.module)
    dropped = drop_blocks(loaded, "0,2")
    assert_unchanged(loaded.module, snap)
    out = save_model(dropped.loaded, dropped.module, tmp_path / "mlp")
    again = load_model(str(out))
    assert again.module.config.depth == 2
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = again.module(x)
    blocks = loaded.module.blocks
    want = skipped_output(loaded.module, [blocks[0], blocks[2]], lambda m: m(x))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.slow
def test_drop_minilm_integration(tmp_path):
    from transformers import AutoModel

    from layerscope.surgery import drop_blocks, save_model

    loaded = load_model("minilm")
    dropped = drop_blocks(loaded, "4-5")
    out = save_model(dropped.loaded, dropped.module, tmp_path / "mini")
    assert (out / "tokenizer.json").is_file() or (out / "vocab.txt").is_file()
    reloaded = AutoModel.from_pretrained(str(out)).eval()
    enc = loaded.encode(["a small test sentence", "another one, longer than the first"])
    with torch.no_grad():
        got = reloaded(**enc.kwargs).last_hidden_state
    layers = loaded.module.encoder.layer
    want = skipped_output(loaded.module, [layers[4], layers[5]],
                          lambda m: m(**enc.kwargs)).last_hidden_state
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec,message", [
    ("9", "out of range"),
    ("0-3", "leaves no model"),
])
def test_drop_bad_layers(spec, message):
    from layerscope.surgery import drop_blocks

    with pytest.raises(LayerscopeError, match=message):
        drop_blocks(tiny_llama(), spec)


def test_drop_refuses_shape_changing_cnn_block():
    from layerscope.surgery import drop_blocks

    with pytest.raises(LayerscopeError, match="change the shape"):
        drop_blocks("cnn:channels=8x8", "1")


def test_output_folder_rules(tmp_path):
    from layerscope.surgery import drop_blocks, save_model

    model = tiny_llama()
    src = tmp_path / "src"
    model.save_pretrained(str(src))
    loaded = load_model(str(src))
    dropped = drop_blocks(loaded, "1")
    with pytest.raises(LayerscopeError, match="overlaps the input"):
        save_model(dropped.loaded, dropped.module, src)
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "notes.txt").write_text("the user's")
    with pytest.raises(LayerscopeError, match="not written by layerscope.*--force"):
        save_model(dropped.loaded, dropped.module, tmp_path / "exists")
    assert sorted(p.name for p in (tmp_path / "exists").iterdir()) == ["notes.txt"]
    save_model(dropped.loaded, dropped.module, tmp_path / "exists", overwrite=True)
    assert (tmp_path / "exists" / "config.json").is_file()
    assert (tmp_path / "exists" / "notes.txt").read_text() == "the user's"
    (tmp_path / "empty").mkdir()
    save_model(dropped.loaded, dropped.module, tmp_path / "empty")  # empty: fine
    save_model(dropped.loaded, dropped.module, tmp_path / "empty")  # its own output: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "exists", "src"]


# --- quantize ----------------------------------------------------------------------------------


def test_quantize_int8_values_match_hand_computation_and_round_trip(tmp_path):
    import numpy as np

    from layerscope.surgery.quantize import load_quantized, quantize, save_quantized

    model = tiny_llama()
    snap = snapshot(model)
    q = quantize(model)
    assert_unchanged(model, snap)
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    assert q.quantized == linears and q.skipped == []
    w = model.model.layers[0].mlp.up_proj.weight.detach().numpy().astype(np.float64)
    qw = q.module.model.layers[0].mlp.up_proj.weight()
    scale = np.abs(w).max(axis=1) / 127.5  # symmetric int8 over [-128, 127]
    np.testing.assert_allclose(qw.q_per_channel_scales().numpy(), scale, rtol=1e-6)
    expected = np.clip(np.round(w / scale[:, None]), -128, 127)
    got = qw.int_repr().numpy()
    assert np.abs(got - expected).max() <= 1  # exact halves (the extremes) may round either way
    assert (got == expected).mean() > 0.99
    out = save_quantized(q, tmp_path / "q")
    again = load_quantized(out)
    x = ids()
    with torch.no_grad():
        a = q.module(input_ids=x).logits
        b = again.module(input_ids=x).logits
        f = model(input_ids=x).logits
    assert torch.equal(a, b)
    assert (a - f).abs().max() < 0.05 * f.abs().max()
    assert out.joinpath("model.safetensors").stat().st_size < 0.5 * sum(
        p.numel() * 4 for p in model.parameters())


def test_quantize_chosen_blocks_only_and_unsupported_listed():
    from layerscope.surgery.quantize import quantize

    q = quantize(tiny_llama(), "1")
    assert q.quantized and all(n.startswith("model.layers.1.") for n in q.quantized)
    cnn = quantize("cnn:channels=4x8")
    assert cnn.quantized == ["fc.1", "head"]
    assert [n for n, _ in cnn.skipped] == ["blocks.0.conv", "blocks.1.conv"]


def test_quantize_without_supported_layers_is_a_clear_error():
    from layerscope.surgery.quantize import quantize

    with pytest.raises(LayerscopeError, match="no layers int8"):
        quantize(tiny_gpt2())  # Conv1D projections and an lm_head tied to the embedding
    with pytest.raises(LayerscopeError, match="no layers int8"):
        quantize(load_model(nn.Sequential(nn.Conv2d(1, 2, 3)), input_shape=(1, 8, 8)))


# --- prune -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_pruning_zeroes_the_smallest_weights(scope):
    import numpy as np

    from layerscope.surgery.prune import prune_magnitude

    model = tiny_llama()
    snap = snapshot(model)
    pruned = prune_magnitude(model, 0.3, scope=scope)
    assert_unchanged(model, snap)
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    assert sorted(pruned.layers) == sorted(names)
    before = {n: model.get_submodule(n).weight.detach().abs().numpy().ravel() for n in names}
    after = {n: pruned.module.get_submodule(n).weight.detach().numpy().ravel() for n in names}
    assert not any(hasattr(pruned.module.get_submodule(n), "weight_orig") for n in names)
    if scope == "layer":
        for n in names:
            w, z = before[n], after[n] == 0
            assert z.sum() == round(0.3 * w.size)
            assert w[z].max() <= w[~z].min()
    else:
        w = np.concatenate([before[n] for n in names])
        z = np.concatenate([after[n] for n in names]) == 0
        assert z.sum() == round(0.3 * w.size)
        assert w[z].max() <= w[~z].min()
        assert len({round(v, 3) for v in pruned.layers.values()}) > 1  # layers differ globally


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, "x"])
def test_sparsity_outside_range_is_refused(value):
    from layerscope.surgery.prune import prune_magnitude, prune_structured

    with pytest.raises(LayerscopeError, match="sparsity"):
        prune_magnitude(tiny_llama(), value)
    with pytest.raises(LayerscopeError, match="sparsity"):
        prune_structured(tiny_llama(), value, "neurons")


def _zeroed_out_columns(model, pruned, block_path, out_path, removed_key, unit=1, conv1d=False):
    """A copy of the original with the removed units' outgoing weights zeroed."""
    ref = copy.deepcopy(model)
    for name, info in pruned.layers.items():
        layer = ref.get_submodule(f"{name}.{out_path}")
        for j in info[removed_key]:
            cols = slice(j * unit, (j + 1) * unit)
            with torch.no_grad():
                if conv1d:
                    layer.weight[cols, :] = 0
                else:
                    layer.weight[:, cols] = 0
    return ref


@pytest.mark.parametrize("make,out_path,conv1d", [
    (tiny_llama, "mlp.down_proj", False),
    (tiny_bert, "output.dense", False),
    (tiny_gpt2, "mlp.c_proj", True),
])
def test_structured_neurons_shrink_and_reload(tmp_path, make, out_path, conv1d):
    from transformers import AutoModel, AutoModelForCausalLM

    from layerscope.surgery import save_model
    from layerscope.surgery.prune import prune_structured

    model = make()
    snap = snapshot(model)
    pruned = prune_structured(model, 0.25, "neurons")
    assert_unchanged(model, snap)
    block0 = next(iter(pruned.layers))
    w = model.get_submodule(f"{block0}.{out_path}").weight
    width = w.shape[0] if conv1d else w.shape[1]
    for v in pruned.layers.values():
        assert len(v["removed"]) == round(0.25 * width) and v["neurons"] == width - len(v["removed"])
    n_before = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in pruned.module.parameters()) < n_before
    out = save_model(pruned.loaded, pruned.module, tmp_path / "p")
    auto = AutoModelForCausalLM if hasattr(model, "lm_head") else AutoModel
    reloaded = auto.from_pretrained(str(out)).eval()
    ref = _zeroed_out_columns(model, pruned, None, out_path, "removed", conv1d=conv1d)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(main_tensor(reloaded(input_ids=x)), main_tensor(ref(input_ids=x)),
                                   atol=1e-5, rtol=1e-5)


def test_structured_heads_llama_keeps_gqa_and_reloads(tmp_path):
    from transformers import AutoModelForCausalLM

    from layerscope.surgery import save_model
    from layerscope.surgery.prune import prune_structured

    model = tiny_llama()  # 4 query heads in 2 key/value groups of 2, head_dim 8
    snap = snapshot(model)
    pruned = prune_structured(model, 0.5, "heads")
    assert_unchanged(model, snap)
    assert pruned.module.config.num_key_value_heads == 1
    assert pruned.module.config.num_attention_heads == 2
    out = save_model(pruned.loaded, pruned.module, tmp_path / "h")
    reloaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert reloaded.model.layers[0].self_attn.q_proj.weight.shape == (16, 32)
    ref = _zeroed_out_columns(model, pruned, None, "self_attn.o_proj", "removed_kv_groups", unit=16)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=x).logits, ref(input_ids=x).logits,
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(LayerscopeError, match="Llama-style attention"):
        prune_structured(tiny_bert(), 0.5, "heads")


def test_structured_channels_zoo_cnn(tmp_path):
    from layerscope.surgery import save_model
    from layerscope.surgery.prune import prune_structured

    torch.manual_seed(0)
    loaded = load_model("cnn:channels=8x16,hidden=32")
    with torch.no_grad():  # non-trivial batch-norm statistics
        for block in loaded.module.blocks:
            block.norm.running_mean.uniform_(-0.5, 0.5)
            block.norm.running_var.uniform_(0.5, 2.0)
    snap = snapshot(loaded.module)
    pruned = prune_structured(loaded, 0.5, "channels")
    assert_unchanged(loaded.module, snap)
    assert pruned.module.config.channels == [4, 8]
    out = save_model(pruned.loaded, pruned.module, tmp_path / "c")
    again = load_model(str(out))
    # independent reference: the original with the removed channels cut off where they are read
    ref = copy.deepcopy(loaded.module)
    convs = [b.conv for b in ref.blocks]
    kept0 = (pruned.module.blocks[0].conv.weight[:, None] == loaded.module.blocks[0].conv.weight[None]
             ).flatten(2).all(-1).any(0)
    kept1 = (pruned.module.blocks[1].conv.weight[:, None]
             == loaded.module.blocks[1].conv.weight[None, :, kept0]).flatten(2).all(-1).any(0)
    with torch.no_grad():
        convs[1].weight[:, ~kept0] = 0
        ref.fc[1].weight.view(32, 16, -1)[:, ~kept1] = 0
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(again.module(x), ref(x), atol=1e-5, rtol=1e-5)
    assert kept0.sum() == 4 and kept1.sum() == 8


# --- sensitivity -------------------------------------------------------------------------------


def test_prune_sensitivity_equals_pruning_each_block_alone():
    from layerscope.surgery.prune import prune_magnitude
    from layerscope.surgery.sensitivity import prune_sensitivity

    torch.manual_seed(0)
    loaded = load_model("mlp:depth=3,width=64")
    snap = snapshot(loaded.module)
    x = torch.randn(40, 64, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 10, (40,), generator=torch.Generator().manual_seed(4))
    res = prune_sensitivity(loaded, _Labelled(x, y), sparsities=[0.5, 0.95])
    assert_unchanged(loaded.module, snap)
    assert res.metric == "accuracy" and res.layers == ["blocks.0", "blocks.1", "blocks.2"]
    with torch.no_grad():
        assert res.baseline == pytest.approx(float((loaded.module(x).argmax(1) == y).float().mean()))
        for i, name in enumerate(res.layers):
            for j, s in enumerate(res.sparsities):
                alone = prune_magnitude(loaded, s, name).module
                acc = float((alone(x).argmax(1) == y).float().mean())
                assert res.values[i][j] == pytest.approx(acc)
    assert set(res.suggest(1.0).values()) == {0.95}


class _Labelled:
    """A minimal labelled dataset (the contract's Dataset: items, labels, batches)."""

    def __init__(self, items, labels):
        self.items, self.labels = items, labels
        self.modality, self.task = "tensor", "classification"

    def __len__(self):
        return len(self.labels)

    def batches(self, batch_size):
        for start in range(0, len(self), batch_size):
            yield (self.items[start:start + batch_size], self.labels[start:start + batch_size], start)


# --- early exit --------------------------------------------------------------------------------


def _trained_digits_mlp():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data[:600], dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target[:600])
    torch.manual_seed(0)
    loaded = load_model("mlp:depth=3,width=64,dropout=0")
    net = loaded.module
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: one thread avoids spin-waiting on a busy machine
    try:
        for step in range(80):
            idx = torch.randint(0, len(y), (64,))
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    net.eval()
    return loaded, x, y


def test_early_exit_on_trained_zoo_mlp():
    from sklearn.model_selection import train_test_split

    from layerscope.surgery.early_exit import early_exit

    loaded, x, y = _trained_digits_mlp()
    snap = snapshot(loaded.module)
    res = early_exit(loaded, (x, y), thresholds=[1e-9, 0.9, 1.0])
    assert_unchanged(loaded.module, snap)
    assert not any(m._forward_hooks for m in loaded.module.modules())
    _, te = train_test_split(range(len(y)), test_size=0.3, random_state=0, stratify=y.numpy())
    with torch.no_grad():
        full = float((loaded.module(x[te]).argmax(1) == y[te]).float().mean())
    assert res.exits[-1] == "model" and res.exit_accuracy[-1] == pytest.approx(full)
    assert full > 0.85
    assert res.accuracy[0] == pytest.approx(res.exit_accuracy[0]) and res.layers_used[0] == 1.0
    assert res.layers_used[1] < 3.0 and abs(res.accuracy[1] - full) < 0.05
    assert res.layers_used[0] <= res.layers_used[1] <= res.layers_used[2]
    assert 0.0 < res.latency_saved[1] < 1.0
    assert "threshold" in res.summary()


def test_exit_head_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from layerscope.surgery.early_exit import fit_head

    rng = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=rng).numpy()
    for y in ((x[:, 0] > 0).astype(int), (x[:, :2].sum(1) > 0).astype(int) + (x[:, 2] > 1)):
        head = fit_head(x, y)
        ref = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
        import numpy as np

        np.testing.assert_allclose(head.proba(x), ref.predict_proba(x), atol=1e-6)


@pytest.mark.slow
def test_early_exit_minilm_sentiment():
    from layerscope.surgery.early_exit import early_exit

    good = ["wonderful", "great", "lovely", "excellent", "delightful", "brilliant"]
    bad = ["terrible", "awful", "boring", "dreadful", "horrible", "dull"]
    things = ["movie", "meal", "book", "trip", "show"]
    texts = [f"The {t} was {a}." for t in things for a in good + bad]
    labels = torch.tensor([int(a in good) for t in things for a in good + bad])
    res = early_exit("minilm", (texts, labels), thresholds=[0.6, 0.9, 1.0])
    assert res.exits[-1] == "probe:encoder.layer.5" and len(res.exits) == 6
    assert res.full_accuracy >= 0.8
    assert res.layers_used[-1] == 6.0 and res.latency_saved[-1] == pytest.approx(0.0, abs=1e-9)
    assert res.layers_used[0] <= res.layers_used[1]


# --- measure -----------------------------------------------------------------------------------


def test_measure_perplexity_matches_transformers_loss(tmp_path):
    from layerscope.surgery import drop_blocks, measure, save_model

    model = tiny_llama()
    x = ids(4, 9)
    dropped = drop_blocks(model, "2")
    out = save_model(dropped.loaded, dropped.module, tmp_path / "d")
    res = measure(model, dropped.loaded, x, operation="drop", output=out, repeats=3)
    with torch.no_grad():
        ppl_before = float(torch.exp(model(input_ids=x, labels=x).loss))
        ppl_after = float(torch.exp(dropped.module(input_ids=x, labels=x).loss))
    assert res.quality_metric == "perplexity"
    assert res.quality_before == pytest.approx(ppl_before, rel=1e-5)
    assert res.quality_after == pytest.approx(ppl_after, rel=1e-5)
    assert res.params_before - res.params_after == sum(
        p.numel() for p in model.model.layers[2].parameters())
    assert res.bytes_after == sum(f.stat().st_size for f in out.iterdir())
    assert res.latency_ms_before > 0 and res.latency_ms_after > 0
    assert "perplexity" in res.summary() and res.to_dict()["kind"] == "SurgeryResult"
    import matplotlib.figure

    assert isinstance(res.plot(), matplotlib.figure.Figure)


def test_measure_embedding_cosine_by_hand():
    import numpy as np

    from layerscope.surgery import measure, quantize

    model = tiny_bert()
    q = quantize(model)
    x = ids(5, 6)
    res = measure(model, q.loaded, x, operation="quantize", repeats=2)
    with torch.no_grad():
        a = model(input_ids=x).last_hidden_state.mean(1).numpy()
        b = q.module(input_ids=x).last_hidden_state.mean(1).numpy()
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert res.quality_metric == "embedding cosine"
    assert res.quality_after == pytest.approx(float(cos.mean()), rel=1e-5)
    assert res.quality_before == 1.0
    assert res.params_after == res.params_before  # int8 weights are still counted


# --- CLI ---------------------------------------------------------------------------------------


def run_cli(args, capsys):
    from layerscope.cli import main

    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_drop_saves_reloadable_model_and_reports(tmp_path, capsys):
    import json

    from transformers import AutoModelForCausalLM

    src = tmp_path / "src"
    tiny_llama().save_pretrained(str(src))
    code, out, err = run_cli(["drop", str(src), "--layers", "1-2", "-o", str(tmp_path / "o"),
                              "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["removed"] == [1, 2] and data["quality_metric"] == "perplexity"
    assert AutoModelForCausalLM.from_pretrained(str(tmp_path / "o")).config.num_hidden_layers == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    for args, message in [
        (["drop", str(src), "--layers", "1", "-o", str(tmp_path / "mine")], "pass --force"),
        (["drop", str(src), "--layers", "1", "-o", str(src)], "overlaps the input"),
        (["drop", str(src), "--layers", "4", "-o", str(tmp_path / "x")], "out of range"),
        (["drop", str(src), "--layers", "0-3", "-o", str(tmp_path / "x")], "leaves no model"),
        (["prune", str(src), "--sparsity", "1", "-o", str(tmp_path / "x")], "sparsity"),
    ]:
        code, out, err = run_cli(args, capsys)
        last = err.strip().splitlines()[-1]
        assert code == 2 and last.startswith("error: ") and message in last, (args, err)
        assert "Traceback" not in err


def test_cli_prune_and_quantize(tmp_path, capsys):
    from layerscope.surgery import load_quantized

    code, out, err = run_cli(["prune", "cnn:channels=8x16", "--structured", "channels",
                              "--sparsity", "0.5", "-o", str(tmp_path / "p")], capsys)
    assert code == 0, err
    assert load_model(str(tmp_path / "p")).module.config.channels == [4, 8]
    code, out, err = run_cli(["quantize", "mlp:depth=2,width=32", "-o", str(tmp_path / "q")],
                             capsys)
    assert code == 0, err
    assert "quantized layers: 3" in out
    assert load_quantized(tmp_path / "q").meta["quantized"] == ["blocks.0.linear",
                                                                "blocks.1.linear", "head"]
    gpt2 = tmp_path / "gpt2"
    tiny_gpt2().save_pretrained(str(gpt2))
    code, out, err = run_cli(["quantize", str(gpt2), "-o", str(tmp_path / "g")], capsys)
    assert code == 2 and "no layers int8" in err


def test_cli_early_exit_on_digits(tmp_path, capsys):
    import json

    code, out, err = run_cli(["early-exit", "mlp:depth=2,width=32", "digits", "--limit", "300",
                              "--threshold", "0.9", "--json", "-o", str(tmp_path / "heads")], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["thresholds"] == [0.9] and data["n_train"] + data["n_test"] == 300
    assert (tmp_path / "heads" / "exit_heads.safetensors").is_file()


def test_auto_blocks_by_influence_matches_hand_computed_block_influence():
    import numpy as np

    from layerscope.surgery import auto_blocks

    model = tiny_llama()
    x = ids(4, 8)
    seen = {}

    def hook(i):
        def fn(mod, args, kwargs, output):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            seen[i] = torch.nn.functional.cosine_similarity(h_in, h_out, dim=-1).flatten()
        return fn

    handles = [b.register_forward_hook(hook(i), with_kwargs=True)
               for i, b in enumerate(model.model.layers)]
    try:
        with torch.no_grad():
            model(input_ids=x)
    finally:
        for h in handles:
            h.remove()
    influence = [1 - float(seen[i].mean()) for i in range(4)]
    assert auto_blocks(model, x, 2, by="influence") == sorted(np.argsort(influence)[:2].tolist())
    with pytest.raises(LayerscopeError, match="unknown criterion"):
        auto_blocks(model, x, 1, by="nope")


def test_cli_prune_sensitivity(capsys):
    import json

    code, out, err = run_cli(["prune", "mlp:depth=2,width=32", "--sensitivity", "--data", "digits",
                              "--limit", "100", "--sparsities", "0.5,0.9", "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["metric"] == "accuracy" and data["sparsities"] == [0.5, 0.9]
    assert sorted(data["suggested"]) == ["blocks.0", "blocks.1"]
    code, out, err = run_cli(["prune", "mlp", "--sensitivity"], capsys)
    assert code == 2 and "--data" in err.strip().splitlines()[-1]

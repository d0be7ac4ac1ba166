"""Every folder layerscope writes loads back with the outputs it had when saved, or is refused
in one line naming the loader; nothing named inside a folder runs unless trusted; bad files are
one-line errors (exit 2)."""

from __future__ import annotations

import json

import pytest
import torch

from layerscope.checkpoint import save_checkpoint
from layerscope.errors import LayerscopeError
from layerscope.models import load_model


def run_cli(args, capsys):
    from layerscope.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def last_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def outputs(loaded, enc):
    with torch.no_grad():
        out = loaded(enc)
    if hasattr(out, "logits"):
        return out.logits
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out


@pytest.fixture
def mlp_checkpoint(tmp_path):
    from layerscope import zoo

    torch.manual_seed(0)
    net = zoo.build("mlp:depth=3,width=16")
    return save_checkpoint(net, tmp_path / "mlp", spec="mlp", config=net.config, task=net.task,
                           input_shape=net.input_shape)


@pytest.fixture
def llama_folder(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(num_hidden_layers=3, hidden_size=32, intermediate_size=64,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                      max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    folder = tmp_path / "llama"
    model.save_pretrained(str(folder))
    return folder


def _same_surgery(kind: str, loaded):
    """The surgery the CLI ran, repeated in Python on the same input model."""
    from layerscope.surgery import drop_blocks, prune_magnitude, quantize

    if kind == "drop":
        return drop_blocks(loaded, "1").loaded
    if kind == "prune":
        return prune_magnitude(loaded, 0.5).loaded
    if kind.startswith("prune-"):
        from layerscope.surgery import prune_structured

        return prune_structured(loaded, 0.5, kind.split("-", 1)[1]).loaded
    return quantize(loaded).loaded


SURGERY_ARGS = {
    "drop": ["drop", "{src}", "--layers", "1", "-o", "{out}", "--no-measure"],
    "prune": ["prune", "{src}", "--sparsity", "0.5", "-o", "{out}", "--no-measure"],
    "quantize": ["quantize", "{src}", "-o", "{out}", "--no-measure"],
}
STRUCTURED_ARGS = {
    f"prune-{unit}": ["prune", "{src}", "--sparsity", "0.5", "--structured", unit, "-o", "{out}",
                      "--no-measure"] for unit in ("neurons", "heads")
}


@pytest.mark.parametrize("kind,source", [(k, s) for k in sorted(SURGERY_ARGS) for s in ("zoo", "hf")]
                         + [(k, "hf") for k in sorted(STRUCTURED_ARGS)])
def test_every_surgery_output_loads_back_with_its_outputs(kind, source, mlp_checkpoint,
                                                          llama_folder, tmp_path, capsys):
    src = mlp_checkpoint if source == "zoo" else llama_folder
    out = tmp_path / f"{kind}-out"
    args = [a.format(src=src, out=out) for a in {**SURGERY_ARGS, **STRUCTURED_ARGS}[kind]]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    expected = _same_surgery(kind, load_model(str(src)))
    again = load_model(str(out))
    enc = again.example(batch_size=3) if source == "zoo" else again.encode(
        torch.randint(0, 97, (3, 7)))
    want, got = outputs(expected, enc), outputs(again, enc)
    assert torch.equal(want, got) if kind == "quantize" else torch.allclose(want, got, atol=1e-6)
    code, out_text, err = run_cli(["summary", out], capsys)
    assert code == 0, err


def test_quantized_minilm_loads_as_quantized_not_as_random_bert(tmp_path, capsys):
    from layerscope.surgery import quantize

    code, _, err = run_cli(["quantize", "minilm", "-o", tmp_path / "q", "--no-measure"], capsys)
    assert code == 0, err
    again = load_model(str(tmp_path / "q"))
    expected = quantize(load_model("minilm")).loaded
    enc = expected.encode(["a short sentence", "another one, a little longer"])
    assert torch.equal(outputs(again, enc), outputs(expected, enc))
    assert again.meta["quantized"] and again.task == "encoder"
    code, _, err = run_cli(["sweep", tmp_path / "q", "sentences", "--limit", "8", "--json"], capsys)
    assert code == 0, err


def test_early_exit_folder_is_refused_naming_its_loader(tmp_path, capsys):
    from layerscope.surgery.save import load_exit_heads

    out = tmp_path / "exits"
    code, _, err = run_cli(["early-exit", "mlp:depth=3,width=16", "digits", "--limit", "120",
                            "--threshold", "0.9", "-o", out], capsys)
    assert code == 0, err
    with pytest.raises(LayerscopeError, match="load_exit_heads"):
        load_model(str(out))
    code, _, err = run_cli(["summary", out], capsys)
    assert code == 2 and "load_exit_heads" in last_error(err)
    heads = load_exit_heads(out)
    listed = json.loads((out / "exit_heads.json").read_text())["exits"]
    assert heads["base"] == "mlp:depth=3,width=16" and list(heads["heads"]) == listed
    assert listed and all(name.startswith("probe:blocks.") for name in listed)


# -- no code runs unasked -----------------------------------------------------------------------
PAYLOAD = """import pathlib, torch
pathlib.Path({sentinel!r}).write_text("ran")
def make():
    pathlib.Path({sentinel!r}).write_text("ran")
    return torch.nn.Sequential(torch.nn.Linear(4, 2))
"""


def _payload_checkpoint(folder, sentinel, manifest_extra):
    folder.mkdir()
    (folder / "payload.py").write_text(PAYLOAD.format(sentinel=str(sentinel)))
    torch.nn.Sequential(torch.nn.Linear(4, 2))  # a real module's weights, to be thorough
    from safetensors.torch import save_model

    save_model(torch.nn.Sequential(torch.nn.Linear(4, 2)), str(folder / "model.safetensors"))
    manifest = {"format": "layerscope-checkpoint", "version": 1, "task": None,
                "input_shape": [4], **manifest_extra}
    (folder / "layerscope.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("manifest", [
    {"zoo": "pooled-head", "config": {"base": "payload.py:make", "n_out": 2}},
    {"zoo": "pooled-head", "config": {"base": "PAYLOAD:make", "n_out": 2}},
    {"zoo": "module:Sequential", "config": {}, "trained": {"model": "payload.py:make"}},
    {"zoo": "module:Sequential", "config": {}, "trained": {"model": "PAYLOAD:make"}},
])
@pytest.mark.parametrize("command", [["summary"], ["sweep", "{folder}", "digits", "--limit", "4"]])
def test_a_checkpoint_never_runs_code_it_names(manifest, command, tmp_path, capsys, monkeypatch):
    sentinel = tmp_path / "SENTINEL"
    folder = tmp_path / "ck"
    payload = str(folder / "payload.py")
    manifest = json.loads(json.dumps(manifest).replace("PAYLOAD", payload))
    _payload_checkpoint(folder, sentinel, manifest)
    monkeypatch.chdir(folder)  # a relative 'payload.py' resolves inside the folder
    args = [a.format(folder=folder) for a in command]
    if len(args) == 1:
        args.append(str(folder))
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    assert "--trust-remote-code" in last_error(err) and last_error(err).startswith("error: ")
    assert not sentinel.exists()
    with pytest.raises(LayerscopeError, match="--trust-remote-code"):
        load_model(str(folder))
    assert not sentinel.exists()


def test_a_factory_trained_checkpoint_loads_when_trusted(tmp_path, monkeypatch):
    sentinel = tmp_path / "SENTINEL"
    folder = tmp_path / "ck"
    _payload_checkpoint(folder, sentinel, {"zoo": "module:Sequential", "config": {},
                                           "trained": {"model": str(folder / "payload.py") + ":make"}})
    loaded = load_model(str(folder), trust_remote_code=True)
    assert sentinel.exists()
    from safetensors.torch import load_file

    weights = load_file(str(folder / "model.safetensors"))
    assert torch.equal(loaded.module[0].weight, weights["0.weight"])


def test_a_pooled_head_base_must_be_a_model_reference(tmp_path):
    from layerscope.checkpoint import check_base_reference

    assert check_base_reference("minilm", tmp_path, False) == "minilm"
    assert check_base_reference("mlp:depth=2", tmp_path, False) == "mlp:depth=2"
    assert check_base_reference(str(tmp_path), tmp_path, False) == str(tmp_path)
    assert check_base_reference("org/name", tmp_path, False) == "org/name"
    for bad in ("pkg.mod:make", "x.py", "os:system"):
        with pytest.raises(LayerscopeError, match="--trust-remote-code"):
            check_base_reference(bad, tmp_path, False)
    with pytest.raises(LayerscopeError, match="no built-in name"):
        check_base_reference("no such thing", tmp_path, False)


# -- bad loads: one line, exit 2 ----------------------------------------------------------------
def _bert_folder(folder, architectures=None):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=16)
    BertModel(cfg).save_pretrained(str(folder))
    if architectures:
        config = json.loads((folder / "config.json").read_text())
        config["architectures"] = architectures
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def _truncated(folder):
    _bert_folder(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])


def _pickle_only(folder):
    _bert_folder(folder)
    weights = folder / "model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(str(weights)), folder / "pytorch_model.bin")
    weights.unlink()


def _missing_head(folder):
    _bert_folder(folder, architectures=["BertForSequenceClassification"])


def _bad_manifest(folder, manifest):
    from layerscope import zoo

    net = zoo.build("mlp:depth=2,width=8")
    save_checkpoint(net, folder, spec="mlp", config=net.config)
    (folder / "layerscope.json").write_text(manifest)


def _exit_factory(folder, code):
    folder.mkdir()
    (folder / "f.py").write_text(f"import sys\ndef make():\n    sys.exit({code})\n")


def _exit_on_import(folder):
    folder.mkdir()
    (folder / "f.py").write_text("import sys\nsys.exit(0)\n")


BAD_LOADS = [
    ("truncated safetensors", _truncated, None, "model.safetensors is unreadable"),
    ("pickle-only folder", _pickle_only, None, "only pickled weights"),
    ("missing weights", _missing_head, None, "--allow-missing-weights"),
    ("config not a mapping",
     lambda f: _bad_manifest(f, '{"format": "layerscope-checkpoint", "version": 1, "zoo": "mlp", '
                                '"config": [1, 2]}'), None, "'config' must be a JSON object"),
    ("manifest not JSON", lambda f: _bad_manifest(f, "{oops"), None, "not readable JSON"),
    ("manifest a list", lambda f: _bad_manifest(f, "[1]"), None, "not a layerscope checkpoint"),
    ("bad input_shape",
     lambda f: _bad_manifest(f, '{"format": "layerscope-checkpoint", "version": 1, "zoo": "mlp", '
                                '"config": {}, "input_shape": "x"}'), None, "'input_shape' must be"),
    ("factory exits 0", lambda f: _exit_factory(f, 0), "{folder}/f.py:make", "sys.exit(0)"),
    ("factory exits 3", lambda f: _exit_factory(f, 3), "{folder}/f.py:make", "sys.exit(3)"),
    ("factory exits on import", _exit_on_import, "{folder}/f.py:make", "sys.exit(0)"),
]


@pytest.mark.parametrize("name,make,ref,message", BAD_LOADS, ids=[b[0] for b in BAD_LOADS])
def test_bad_loads_are_one_line_errors(name, make, ref, message, tmp_path, capsys):
    folder = tmp_path / "model"
    make(folder)
    ref = (ref or "{folder}").format(folder=folder)
    code, out, err = run_cli(["summary", ref], capsys)
    assert code == 2, (out, err)
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_missing_weights_load_only_when_accepted(tmp_path, capsys):
    folder = _missing_head(tmp_path / "m") or tmp_path / "m"
    loaded = load_model(str(folder), allow_missing_weights=True)
    assert type(loaded.module).__name__ == "BertForSequenceClassification"
    code, _, err = run_cli(["summary", folder, "--allow-missing-weights"], capsys)
    assert code == 0, err


class Pickled:
    """A Python object a weights-only load must refuse."""


def test_corrupt_torch_files_are_one_line_errors(tmp_path):
    from layerscope.safeload import torch_load

    good = tmp_path / "state.pt"
    torch.save({"step": 3, "w": torch.ones(2)}, good)
    assert torch_load(good)["step"] == 3
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:50])
    with pytest.raises(LayerscopeError, match="damaged"):
        torch_load(cut, what="training state")

    pickled = tmp_path / "obj.pt"
    torch.save(Pickled(), pickled)
    with pytest.raises(LayerscopeError, match="never unpickles"):
        torch_load(pickled)


def test_a_trained_hugging_face_model_loads_back_with_its_trained_weights(llama_folder, tmp_path):
    trained = load_model(str(llama_folder)).module
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01 * torch.randn_like(p))  # what training would have changed
    folder = save_checkpoint(trained, tmp_path / "best", spec="module:LlamaForCausalLM", config=None,
                             task="causal-lm", extra={"trained": {"model": str(llama_folder)}})
    again = load_model(str(folder))
    ids = torch.randint(0, 97, (2, 6))
    with torch.no_grad():
        assert torch.equal(again.module(input_ids=ids).logits, trained(input_ids=ids).logits)
    assert again.task == "causal-lm" and again.meta["checkpoint"]["trained"]["model"] == str(llama_folder)
    manifest = json.loads((folder / "layerscope.json").read_text())
    manifest["zoo"] = "module:GPT2LMHeadModel"
    (folder / "layerscope.json").write_text(json.dumps(manifest))
    with pytest.raises(LayerscopeError, match="now loads as LlamaForCausalLM"):
        load_model(str(folder))

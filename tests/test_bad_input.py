"""The bad-input corpus: every command, given input it cannot use, says so in one line.

Each case is a command line, a fragment the message must hold (what was wrong), and runs
in-process in a fresh folder. A clean refusal is: exit code 2; on stderr exactly one
``error: ...`` line (progress bars aside) that does not start with an exception class name and
is not an internal-error report; no traceback; no file created, changed or removed in the
working folder or among the fixtures (so an ``-o`` target is not created, or is left as it was).

Cases that still fail are marked ``xfail(strict=True)`` with
where the fix belongs, so they turn into failures (to be unmarked) as soon as they are fixed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from layerscope.cli import app, load_commands, main

os.environ.setdefault("MPLBACKEND", "Agg")

CLASS_NAME_FIRST = re.compile(r"^error: (?:[\w.]+\.)?[A-Z]\w*(?:Error|Exception|Interrupt|Exit)\b")


class _Unsafe:
    """Pickled into a weights file, it makes the file one that must not be unpickled."""


FACTORIES = '''
import sys
import torch
from torch import nn


def exit0():
    sys.exit(0)


def exit3():
    sys.exit(3)


def boom():
    raise ValueError("factory failed")


def number():
    return 3


def needs_arg(width):
    return nn.Linear(width, 2)


def seq():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def digits_net():
    net = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    net.input_shape = (64,)
    net.task = "classification"
    return net


class _Interrupting(nn.Module):
    """Runs one example item, then behaves as if Ctrl-C were pressed on the first real batch."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(64, 64), nn.Linear(64, 64)])
        self.head = nn.Linear(64, 10)
        self.input_shape = (64,)
        self.task = "classification"

    def forward(self, x):
        if x.shape[0] > 2:
            raise KeyboardInterrupt
        for block in self.blocks:
            x = torch.relu(block(x))
        return self.head(x)


def interrupting():
    return _Interrupting()
'''


def _mlp_checkpoint(path: Path) -> Path:
    from layerscope import zoo
    from layerscope.checkpoint import save_checkpoint

    torch.manual_seed(0)
    net = zoo.build("mlp:width=16")
    return save_checkpoint(net, path, spec="mlp:width=16", config={}, task=net.task,
                           input_shape=net.input_shape)


def _copy_with(src: Path, dst: Path, **files) -> Path:
    shutil.copytree(src, dst)
    for name, content in files.items():
        target = dst / name.replace("__", ".")
        if content is None:
            target.unlink()
        elif isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    return dst


def _build_fixtures(fx: Path) -> None:
    ck = _mlp_checkpoint(fx / "ckpt")
    manifest = json.loads((ck / "layerscope.json").read_text())
    weights = (ck / "model.safetensors").read_bytes()
    _copy_with(ck, fx / "ckpt_trunc", model__safetensors=weights[: len(weights) // 2])
    _copy_with(ck, fx / "ckpt_garbage", model__safetensors=b"\0" * 64)
    _copy_with(ck, fx / "ckpt_noweights", model__safetensors=None)
    _copy_with(ck, fx / "ckpt_badjson", layerscope__json='{"format": "layerscope-checkpoint", ')
    _copy_with(ck, fx / "ckpt_listjson", layerscope__json="[1, 2, 3]")
    _copy_with(ck, fx / "ckpt_confignotdict",
               layerscope__json=json.dumps({**manifest, "config": "depth=2"}))
    _copy_with(ck, fx / "ckpt_badzoo", layerscope__json=json.dumps({**manifest, "zoo": "nosuchnet"}))
    # a folder whose manifest names code shipped inside it: never run without being asked
    _copy_with(ck, fx / "ckpt_payload", layerscope__json=json.dumps(
        {**manifest, "zoo": "pooled-head", "config": {"base": "payload.py:make"}}),
        payload__py="import pathlib\npathlib.Path('PWNED').write_text('ran')\n"
                    "def make():\n    raise SystemExit(0)\n")
    _copy_with(ck, fx / "ckpt_payload_zoo", layerscope__json=json.dumps(
        {**manifest, "zoo": "payload.py:make"}),
        payload__py="import pathlib\npathlib.Path('PWNED').write_text('ran')\n"
                    "def make():\n    raise SystemExit(0)\n")

    from transformers import BertConfig, BertModel

    cfg = BertConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                     num_attention_heads=2, vocab_size=99, max_position_embeddings=64)
    torch.manual_seed(0)
    bert = BertModel(cfg).eval()
    bert.save_pretrained(fx / "hf_trunc")
    data = (fx / "hf_trunc" / "model.safetensors").read_bytes()
    (fx / "hf_trunc" / "model.safetensors").write_bytes(data[: len(data) // 2])
    bert.save_pretrained(fx / "hf_badconfig")
    (fx / "hf_badconfig" / "config.json").write_text("{ not json")
    (fx / "hf_pickle").mkdir()
    bert.config.save_pretrained(fx / "hf_pickle")
    torch.save({"embeddings.word_embeddings.weight": _Unsafe()}, fx / "hf_pickle" / "pytorch_model.bin")
    bert.save_pretrained(fx / "hf_remote")
    config = json.loads((fx / "hf_remote" / "config.json").read_text())
    config.update(model_type="xmodel", auto_map={"AutoModel": "modeling_x.XModel"})
    (fx / "hf_remote" / "config.json").write_text(json.dumps(config))
    (fx / "hf_remote" / "modeling_x.py").write_text(
        "import pathlib\npathlib.Path('PWNED').write_text('ran')\n")

    (fx / "emptydir").mkdir()
    (fx / "notmodel").mkdir()
    (fx / "notmodel" / "readme.txt").write_text("the user's own notes")
    (fx / "afile").write_text("a plain file")
    (fx / "adir").mkdir()
    (fx / "fac.py").write_text(FACTORIES)
    (fx / "broken.py").write_text("def make(:\n")
    (fx / "importerr.py").write_text("import no_such_module_xyz\n\ndef make():\n    pass\n")

    (fx / "empty.txt").write_text("")
    (fx / "blank.txt").write_text("\n \n\n")
    (fx / "lines.txt").write_text("the cat sat\non the mat\n")
    (fx / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    (fx / "nocol.csv").write_text("a,b\n1,2\n3,4\n")
    (fx / "emptylabel.csv").write_text("text,label\nhi,1\nho,\n")
    (fx / "header.csv").write_text("text,label\n")
    (fx / "bad.jsonl").write_text('{"text": "a", "label": 1}\n{not json}\n')
    (fx / "notobj.jsonl").write_text("[1, 2]\n")
    (fx / "nottext.jsonl").write_text('{"text": 5, "label": 1}\n')
    (fx / "data.xyz").write_text("hello")
    (fx / "garbage.npy").write_bytes(b"this is not numpy")
    (fx / "garbage.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{not json")
    np.save(fx / "scalar.npy", np.array(3.0))
    np.save(fx / "unlabeled.npy", np.random.default_rng(0).random((40, 64), dtype=np.float32))
    np.save(fx / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(fx / "mismatch.npz", x=np.zeros((10, 64), np.float32), y=np.arange(7))
    np.savez(fx / "twoarrays.npz", a=np.zeros((4, 64), np.float32), b=np.zeros((4, 64), np.float32))
    (fx / "imgs_empty").mkdir()
    (fx / "imgs_bad").mkdir()
    (fx / "imgs_bad" / "x.png").write_bytes(b"not a png")

    (fx / "ffn_bad.json").write_text("{ nope")
    (fx / "ffn_missing.json").write_text(json.dumps({"W1": [[1.0]]}))
    (fx / "ffn_shapes.json").write_text(json.dumps(
        {"W1": [[1.0, 2.0]], "b1": [0.0, 0.0], "W2": [[1.0], [1.0], [1.0]], "b2": [0.0],
         "x": [[1.0]]}))
    (fx / "input_garbage.npy").write_bytes(b"garbage")
    np.save(fx / "input_wrong.npy", np.zeros((3, 5), np.float32))
    (fx / "lens_garbage.safetensors").write_bytes(b"garbage bytes")


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    """Damaged checkpoints and model folders, factories, data and explain files."""
    root = tmp_path_factory.mktemp("bad-input-fixtures")
    _build_fixtures(root)
    return root


@pytest.fixture(scope="module")
def runs(fx, tmp_path_factory) -> Path:
    """Real training runs through the CLI: a zoo MLP (with its resume state) and a factory net."""
    root = tmp_path_factory.mktemp("bad-input-runs")
    cwd = Path.cwd()
    os.chdir(root)
    try:
        for model, out in (("mlp:width=16", "run"), (f"{fx}/fac.py:digits_net", "frun")):
            code = main(["train", model, "digits", "-o", out, "--epochs", "1", "--limit", "64",
                         "--no-plots", "--no-progress"])
            assert code == 0, f"training {model} failed; the cases that need it cannot run"
    finally:
        os.chdir(cwd)
    bad = root / "run_badstate"
    shutil.copytree(root / "run", bad)
    (bad / "train_state.pt").write_bytes(b"not a torch file at all")
    trunc = root / "run_truncstate"
    shutil.copytree(root / "run", trunc)
    state = (trunc / "train_state.pt").read_bytes()
    (trunc / "train_state.pt").write_bytes(state[: len(state) // 3])
    return root


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.is_dir(), None if p.is_dir() else p.stat().st_size,
                                       None if p.is_dir() else p.stat().st_mtime_ns)
            for p in root.rglob("*")}


def _changes(before: dict, after: dict) -> list[str]:
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def _error_line(err: str) -> str:
    """The one ``error:`` segment of stderr (progress bars use \\r and are left aside)."""
    segments = [s.strip() for s in re.split(r"[\r\n]", err) if s.strip()]
    errors = [s for s in segments if "error:" in s.lower()]
    assert len(errors) == 1, f"expected one error line, got: {err!r}"
    assert errors[0].startswith("error: "), f"error line does not start with 'error: ': {err!r}"
    return errors[0]


def run_cli(argv: list[str], cwd: Path, capsys, watch: list[Path]) -> tuple[int, str, str, list]:
    """Run ``layerscope ARGV`` in-process in ``cwd``; return code, stdout, stderr and every
    path created, changed or removed under ``cwd`` and the ``watch`` folders."""
    roots = [cwd, *watch]
    before = [_snapshot(r) for r in roots]
    old = Path.cwd()
    os.chdir(cwd)
    capsys.readouterr()
    try:
        code = main(argv)
    finally:
        os.chdir(old)
    out, err = capsys.readouterr()
    changed = [f"{r}/{c}" for r, b in zip(roots, before) for c in _changes(b, _snapshot(r))]
    return code, out, err, changed


def assert_clean_refusal(code, out, err, changed, fragment: str):
    assert "Traceback" not in err and "Traceback" not in out, err
    line = _error_line(err)
    assert not CLASS_NAME_FIRST.match(line), f"the message is an exception's name: {line}"
    assert "internal error" not in line and "--debug" not in line, f"reported as a bug: {line}"
    assert code == 2, f"exit code {code}: {line}"
    assert fragment.lower() in line.lower(), f"{fragment!r} not in: {line}"
    assert not changed, f"files left behind or changed: {changed}"


# ---------------------------------------------------------------------------------------------
# The corpus: (command line, fragment of the message, where the fix belongs if it still fails).
# {fx} is the fixtures folder, {runs} the training runs; relative paths land in the fresh
# working folder of the case.

OWN_TRUST = "fix in outputs/models/checkpoint"
OWN_TRAIN = "fix in train/*, cli/cmd_train.py"
OWN_ENGINE = "fix in sweep/importance/lens"
OWN_HONEST = "fix in the probe/embed/similarity/report commands"
OWN_CAUSAL = "fix in analyses/causal (attribute/patch/ablate/steer)"

CASES: list[tuple] = [
    # ---- unknown names, options and specs -------------------------------------------------
    ("summary nosuchmodel", "unknown model 'nosuchmodel'"),
    ("layers nosuchmodel", "unknown model"),
    ("sweep nosuchmodel digits --limit 4", "unknown model"),
    ("probe nosuchmodel digits", "unknown model"),
    ("embed nosuchmodel digits", "unknown model"),
    ("similarity nosuchmodel digits", "unknown model"),
    ("importance nosuchmodel digits", "unknown model"),
    ("lens nosuchmodel --prompt hi", "unknown model"),
    ("record nosuchmodel digits -o store", "unknown model"),
    ("explain nosuchmodel", "unknown model"),
    ("drop nosuchmodel -o out --layers 0", "unknown model"),
    ("prune nosuchmodel -o out", "unknown model"),
    ("quantize nosuchmodel -o out", "unknown model"),
    ("early-exit nosuchmodel digits", "unknown model"),
    ("train nosuchmodel digits -o run", "unknown model"),
    ("report nosuchmodel digits -o out", "unknown model"),
    ("summary cnn:depth=x", "depth"),
    ("summary cnn:bogus=1", "bogus"),
    ("summary mlp:depth=0", "depth=0"),
    ("summary mlp:depth=-2", "depth=-2"),
    ("summary mlp:width=0", "width=0"),
    ("summary mlp:activation=nope", "nope"),
    ("summary cnn:image_size=2", "image"),
    ("summary mlp:depth", "depth"),
    ("zoo nosuch", "unknown zoo model 'nosuch'"),
    ("zoo mlp:depth=0", "depth=0"),
    ("sweep mlp nosuchdata", "unknown dataset 'nosuchdata'"),
    ("probe mlp nosuchdata", "unknown dataset"),
    ("embed mlp nosuchdata", "unknown dataset"),
    ("similarity mlp nosuchdata", "unknown dataset"),
    ("importance mlp nosuchdata", "unknown dataset"),
    ("record mlp nosuchdata -o store", "unknown dataset"),
    ("early-exit mlp nosuchdata", "unknown dataset"),
    ("train mlp nosuchdata -o run", "unknown dataset"),
    ("report mlp nosuchdata -o out", "unknown dataset"),
    ("lens gpt nosuchdata", "unknown dataset"),
    ("drop mlp -o out --layers 0 --data nosuchdata", "unknown dataset"),
    ("datasets nosuch", "unknown dataset 'nosuch'"),
    ("datasets nosuch.csv", "nosuch.csv"),
    ("sweep mlp digits:bogus=1 --limit 4", "bogus"),
    ("datasets digits:bogus=1", "bogus"),
    ("sweep mlp digits:=3 --limit 4", "=3"),
    ("sweep mlp text:seq_len=0", "seq_len=0"),
    ("sweep mlp text:seq_len=-5", "seq_len=-5"),
    ("sweep mlp text:seq_len=abc", "seq_len"),
    ("sweep mlp timeseries:series=moon", "moon"),
    ("sweep mlp timeseries:seq_len=100000", "seq_len"),
    ("sweep mlp sentences:source=reddit", "reddit"),
    ("sweep mlp photos:size=0", "size=0"),
    ("sweep mlp photos:size=abc", "size"),
    ("summary mlp -g nonsense", "granularity 'nonsense'"),
    ("layers mlp -g atoms", "granularity 'atoms'"),
    ("sweep mlp digits --limit 4 -g atoms", "granularity"),
    ("layers gpt --blocks nope.nope", "nope.nope"),
    ("summary minilm --blocks nope", "nope"),
    ("sweep mlp digits --limit 4 --view nope", "view 'nope'"),
    ("record mlp digits -o store --limit 8 --view nope", "view 'nope'"),
    ("record mlp digits -o store --limit 8 --dtype int8", "int8"),
    ("probe mlp digits --limit 40 --task nosuch", "nosuch"),
    ("probe mlp digits --limit 40 --solver nosuch", "nosuch"),
    ("probe mlp digits --limit 40 --precision float8", "float8"),
    ("embed mlp digits --limit 40 --method umap", "umap"),
    ("similarity mlp digits --limit 40 --kernel poly", "poly"),
    ("similarity mlp digits --limit 40 --other nosuchmodel", "unknown model"),
    ("importance mlp digits --limit 8 --method nope", "nope"),
    ("drop mlp -o out --auto 1 --data digits --by nope", "nope"),
    ("prune mlp -o out --structured atoms", "atoms"),
    ("train mlp digits -o run --limit 64 --optimizer rmsprop", "rmsprop"),
    ("train mlp digits -o run --limit 64 --freeze-bn maybe", "maybe"),
    ("train mlp digits -o run --limit 64 --task poetry", "poetry"),
    ("train mlp digits -o run --limit 64 --loss hinge", "hinge"),
    ("train mlp digits -o run --limit 64 --device tpu", "tpu"),
    ("train mlp digits -o run --limit 64 --device cuda", "cuda"),
    ("explain --example nosuch", "nosuch"),
    ("explain --example seed002 --activation swish", "swish"),
    # ---- the command line itself ----------------------------------------------------------
    ("nosuchcommand", "No such command"),
    ("summary", "Missing argument"),
    ("sweep mlp", "Missing argument"),
    ("summary mlp --bogus", "--bogus"),
    ("summary mlp extra", "extra"),
    ("models --bogus", "--bogus"),
    ("sweep mlp digits --limit abc", "--limit"),
    ("probe mlp digits --test-fraction half", "--test-fraction"),
    ("train mlp digits -o run --lr fast", "--lr"),
    ("summary ''", "MODEL"),
    ("sweep mlp ''", "DATA"),
    ("zoo ''", "empty"),
    # ---- bad layer specs -------------------------------------------------------------------
    ("sweep mlp digits --limit 4 --layers ''", "--layers"),
    ("probe mlp digits --limit 40 --layers ''", "--layers"),
    ("embed mlp digits --limit 40 --layers ''", "--layers"),
    ("similarity mlp digits --limit 40 --layers ''", "--layers"),
    ("record mlp digits -o store --limit 8 --layers ''", "--layers"),
    ("prune mlp -o out --layers ''", "--layers"),
    ("quantize mlp -o out --layers ''", "--layers"),
    ("drop mlp -o out --layers ''", "--layers"),
    ("sweep mlp digits --limit 4 --layers 99", "layer 99"),
    ("sweep mlp digits --limit 4 --layers -9", "-9"),
    ("sweep mlp digits --limit 4 --layers 0-", "0-"),
    ("sweep mlp digits --limit 4 --layers 3-1", "3"),
    ("sweep mlp digits --limit 4 --layers x", "'x'"),
    ("sweep mlp digits --limit 4 --layers 1.5", "1.5"),
    ("sweep mlp digits --limit 4 --layers ,", "','"),
    ("probe mlp digits --limit 40 --layers ' , '", "names no layer"),
    ("probe mlp digits --limit 40 --layers 7", "layer 7"),
    ("embed mlp digits --limit 40 --layers 7", "layer 7"),
    ("similarity mlp digits --limit 40 --layers 7", "layer 7"),
    ("record mlp digits -o store --limit 8 --layers 9", "layer 9"),
    ("explain mlp --layer 9", "layer 9"),
    ("explain mlp --layer x", "'x'"),
    ("drop mlp -o out --layers 9", "layer 9"),
    ("drop mlp -o out --layers x", "'x'"),
    ("drop mlp:depth=3 -o out --layers 0,1,2", "all 3 blocks"),
    ("prune mlp -o out --layers 9", "layer 9"),
    ("quantize mlp -o out --layers 9", "layer 9"),
    ("train mlp digits -o run --limit 64 --freeze blocks:9", "layer 9"),
    ("train mlp digits -o run --limit 64 --layer-lr nonsense", "nonsense"),
    ("drop mlp -o out", "--layers"),
    ("drop mlp -o out --auto 1", "--data"),
    # ---- bad numbers -----------------------------------------------------------------------
    ("sweep mlp digits --limit 0", "--limit"),
    ("sweep mlp digits --limit -3", "--limit"),
    ("sweep mlp digits --limit 4 --batch-size 0", "--batch-size"),
    ("sweep mlp digits --limit 4 --batch-size -1", "--batch-size"),
    ("sweep mlp digits --limit 4 --max-length 0", "--max-length"),
    ("sweep mlp digits --limit 4 --max-length -1", "--max-length"),
    ("probe mlp digits --limit 0", "--limit"),
    ("probe mlp digits --limit 40 --batch-size 0", "--batch-size"),
    ("probe mlp digits --limit 40 --max-length 0", "--max-length"),
    ("probe mlp digits --limit 40 --test-fraction 0", "test_fraction"),
    ("probe mlp digits --limit 40 --test-fraction 1.5", "1.5"),
    ("probe mlp digits --limit 40 --test-fraction -0.1", "-0.1"),
    ("probe mlp digits --limit 40 --C 0", "C"),
    ("probe mlp digits --limit 40 --C -1", "-1"),
    ("probe mlp digits --limit 1", "too few"),
    ("embed mlp digits --limit 0", "--limit"),
    ("embed mlp digits --limit 40 --sample 0", "--sample"),
    ("embed mlp digits --limit 40 --sample -1", "--sample"),
    ("embed mlp digits --limit 40 --batch-size 0", "--batch-size"),
    ("embed mlp digits --limit 40 --max-length 0", "--max-length"),
    ("embed mlp digits --limit 2 --method tsne", "3 items"),
    ("similarity mlp digits --limit 0", "--limit"),
    ("similarity mlp digits --limit 1", "at least 4"),
    ("similarity mlp digits --limit 40 --sample 0", "--sample"),
    ("similarity mlp digits --limit 40 --batch-size 0", "--batch-size"),
    ("similarity mlp digits --limit 40 --max-length 0", "--max-length"),
    ("importance mlp digits --limit 0", "--limit"),
    ("importance mlp digits --limit 8 --batch-size 0", "--batch-size"),
    ("importance mlp digits --limit 8 --max-length 0", "--max-length"),
    ("importance mlp digits --limit 8 --max-k 0", "--max-k"),
    ("importance mlp digits --limit 8 --curve --max-k 99", "99"),
    # labels that cannot score the model's output (a task metric needs one class per item)
    ("importance transformer text --limit 8", "64 per item"),
    ("importance mlp:n_classes=3 digits --limit 8", "3 classes"),
    ("prune transformer --sensitivity --data text --limit 8 --sparsities 0.5", "64 per item"),
    ("prune mlp:n_classes=3 --sensitivity --data digits --limit 8 --sparsities 0.5", "3 classes"),
    ("record mlp digits -o store --limit 8 --shard-items 0", "--shard-items"),
    ("record mlp digits -o store --limit 8 --batch-size 0", "--batch-size"),
    ("record mlp digits -o store --limit 8 --max-length 0", "--max-length"),
    ("record mlp digits -o store --limit 0", "--limit"),
    ("lens gpt text --limit 0", "--limit"),
    ("lens gpt text --limit 8 --batch-size 0", "--batch-size"),
    ("lens gpt text --limit 8 --max-length 0", "--max-length"),
    ("lens gpt --prompt hi --top-k 0", "--top-k"),
    ("lens gpt text --limit 8 --tuned --epochs 0", "--epochs"),
    ("lens gpt text --limit 8 --tuned --steps 0", "--steps"),
    ("drop mlp -o out --auto 0 --data digits", "--auto"),
    ("drop mlp -o out --layers 0 --data digits --limit 0", "--limit"),
    ("drop mlp -o out --layers 0 --data digits --batch-size 0", "--batch-size"),
    ("prune mlp -o out --sparsity 1.5", "1.5"),
    ("prune mlp -o out --sparsity -0.1", "-0.1"),
    ("prune mlp -o out --sparsity 1", "sparsity"),
    ("prune mlp --sensitivity --data digits --sparsities a,b", "a,b"),
    ("prune mlp --sensitivity --data digits --sparsities 1.5", "1.5"),
    ("prune mlp -o out --data digits --limit 0", "--limit"),
    ("quantize mlp -o out --data digits --limit -1", "--limit"),
    ("early-exit mlp digits --threshold 2", "2.0"),
    ("early-exit mlp digits --threshold -1", "-1"),
    ("early-exit mlp digits --limit 0", "--limit"),
    ("early-exit mlp digits --batch-size 0", "--batch-size"),
    ("train mlp digits -o run --epochs 0", "--epochs"),
    ("train mlp digits -o run --limit 64 --batch-size 0", "--batch-size"),
    ("train mlp digits -o run --limit 0", "--limit"),
    ("train mlp digits -o run --limit 64 --lr -1", "lr"),
    ("train mlp digits -o run --limit 64 --lr 0", "lr"),
    ("train mlp digits -o run --limit 64 --weight-decay -1", "weight"),
    ("train mlp digits -o run --limit 64 --lr-decay 0", "lr_decay"),
    ("train mlp digits -o run --limit 64 --clip-grad 0", "clip"),
    ("train mlp digits -o run --limit 64 --monitor-every -1", "monitor"),
    ("train mlp digits -o run --limit 64 --patience 0", "--patience"),
    ("train mlp digits -o run --limit 64 --held-out 0", "held"),
    ("train mlp digits -o run --limit 64 --held-out 1", "held"),
    ("report mlp digits -o out --limit 0", "--limit"),
    ("report mlp digits -o out --importance-items 0", "--importance-items"),
    ("report mlp digits -o out --batch-size 0", "--batch-size"),
    ("report mlp digits -o out --max-length 0", "--max-length"),
    ("datasets --show -1", "--show"),
    ("explain minilm --layer 0 --input hi --head 99", "head 99"),
    ("explain minilm --layer 0 --input hi --head -1", "head -1"),
    ("summary mlp --input-shape 0", "input shape"),
    ("summary mlp --input-shape 1,x", "1,x"),
    ("summary cnn --input-shape 3,28,28", "3, 28, 28"),
    # ---- damaged or unsafe models ----------------------------------------------------------
    ("summary {fx}/ckpt_trunc", "model.safetensors"),
    ("layers {fx}/ckpt_trunc", "model.safetensors"),
    ("sweep {fx}/ckpt_trunc digits --limit 4", "model.safetensors"),
    ("drop {fx}/ckpt_trunc -o out --layers 0", "model.safetensors"),
    ("report {fx}/ckpt_trunc digits -o out", "model.safetensors"),
    ("summary {fx}/ckpt_garbage", "model.safetensors"),
    ("summary {fx}/ckpt_noweights", "model.safetensors"),
    ("summary {fx}/ckpt_badjson", "layerscope.json"),
    ("sweep {fx}/ckpt_badjson digits --limit 4", "layerscope.json"),
    ("summary {fx}/ckpt_listjson", "layerscope.json"),
    ("summary {fx}/ckpt_confignotdict", "config"),
    ("summary {fx}/ckpt_badzoo", "nosuchnet"),
    ("summary {fx}/ckpt_payload", "--trust-remote-code"),
    ("sweep {fx}/ckpt_payload digits --limit 4", "--trust-remote-code"),
    ("summary {fx}/ckpt_payload_zoo", "payload.py"),
    ("summary {fx}/hf_trunc", "model.safetensors"),
    ("layers {fx}/hf_trunc", "model.safetensors"),
    ("summary {fx}/hf_pickle", "pytorch_model.bin"),
    ("summary {fx}/hf_badconfig", "config.json"),
    ("summary {fx}/hf_remote", "xmodel"),
    ("summary {fx}/emptydir", "config.json"),
    ("summary {fx}/notmodel", "config.json"),
    ("summary {fx}/afile", "afile"),
    ("summary {fx}/fac.py:exit0", "sys.exit"),
    ("summary {fx}/fac.py:exit3", "sys.exit"),
    ("summary {fx}/fac.py:boom", "factory failed"),
    ("summary {fx}/fac.py:number", "int"),
    ("summary {fx}/fac.py:needs_arg", "width"),
    ("summary {fx}/fac.py:nosuch", "nosuch"),
    ("summary {fx}/fac.py:seq", "--input-shape"),
    ("summary {fx}/broken.py:make", "SyntaxError"),
    ("summary {fx}/importerr.py:make", "no_such_module_xyz"),
    ("summary {fx}/missing.py:make", "missing.py"),
    ("summary no_such_pkg_xyz.mod:make", "no_such_pkg_xyz"),
    ("summary {runs}/frun/best", "--trust-remote-code"),
    # ---- damaged or unusable data ----------------------------------------------------------
    ("sweep mlp {fx}/empty.txt", "empty.txt"),
    ("sweep mlp {fx}/blank.txt", "blank.txt"),
    ("sweep mlp {fx}/latin1.txt", "UTF-8"),
    ("sweep mlp {fx}/nocol.csv", "text column"),
    ("sweep mlp {fx}/emptylabel.csv", "row 2"),
    ("sweep mlp {fx}/header.csv", "header.csv"),
    ("sweep mlp {fx}/bad.jsonl", "line 2"),
    ("sweep mlp {fx}/notobj.jsonl", "JSON object"),
    ("sweep mlp {fx}/nottext.jsonl", "not text"),
    ("sweep mlp {fx}/data.xyz", "data.xyz"),
    ("sweep mlp {fx}/garbage.npy", "garbage.npy"),
    ("sweep mlp {fx}/garbage.safetensors", "garbage.safetensors"),
    ("sweep mlp {fx}/pickled.npy", "pickled.npy"),
    ("sweep mlp {fx}/mismatch.npz", "7 labels"),
    ("sweep mlp {fx}/twoarrays.npz", "items_key"),
    ("sweep mlp {fx}/imgs_empty", "no images"),
    ("sweep mlp {fx}/imgs_bad", "x.png"),
    ("sweep mlp {fx}/missing.csv", "missing.csv"),
    ("sweep mlp {fx}/lines.txt:text_column=x", "text_column"),
    ("sweep mlp {fx}/nocol.csv:text_column=zz", "zz"),
    ("sweep mlp {fx}/twoarrays.npz:items_key=q", "'q'"),
    ("sweep mlp {fx}/imgs_empty:mode=CMYK", "CMYK"),
    ("datasets {fx}/empty.txt", "empty.txt"),
    ("importance mlp {fx}/empty.txt", "empty.txt"),
    ("probe mlp {fx}/unlabeled.npy", "no labels"),
    ("early-exit mlp {fx}/unlabeled.npy", "labels"),
    ("train mlp {fx}/unlabeled.npy -o run --epochs 1", "labels"),
    ("early-exit mlp sentences --limit 16", "got text"),
    ("early-exit gpt text --limit 16", "label"),
    ("probe mlp digits --limit 40 --task sentiment", "text"),
    ("probe mlp digits --limit 40 --task length", "text"),
    # ---- the wrong kind of data for the model (text to a CNN, images to an MLP, ...) -------
    ("sweep cnn sentences --limit 4", "got text"),
    ("sweep cnn digits --limit 4", "(4, 64)"),
    ("sweep mlp mnist --limit 4", "28, 28"),
    ("sweep lstm digits --limit 4", "(4, 64)"),
    ("sweep gpt sentences --limit 4", "got text"),
    ("sweep gpt mnist --limit 4", "28, 28"),
    ("sweep mlp sentences --limit 4", "got text"),
    ("sweep autoencoder mnist --limit 4", "28, 28"),
    ("sweep gan mnist --limit 4", "28, 28"),
    ("sweep resnet text --limit 4", "(4, 64)"),
    ("sweep transformer timeseries --limit 4", "32, 1"),
    ("sweep mlp digits-images --limit 4", "8, 8"),
    ("sweep mlp {fx}/scalar.npy", "(1,)"),
    ("probe cnn sentences --limit 8", "got text"),
    ("probe minilm digits --limit 8", "float32"),
    ("similarity cnn sentences --limit 8", "got text"),
    ("similarity mlp digits --limit 40 --other cnn", "cnn"),
    ("embed cnn sentences --limit 8", "got text"),
    ("importance cnn sentences --limit 8", "got text"),
    ("record cnn sentences -o store --limit 8", "got text"),
    ("quantize cnn -o out --data sentences --limit 8", "got text"),
    ("train mlp sentences -o run --epochs 1 --limit 64", "got text"),
    ("train cnn digits -o run --epochs 1 --limit 64", "(64,)"),
    ("train gan sentences -o run --epochs 1 --limit 64", "got text"),
    ("report cnn sentences -o out --limit 16", "got text"),
    ("explain mlp --input hello", "not text"),
    ("explain mlp --input-file {fx}/input_wrong.npy", "(3, 5)"),
    ("lens mlp --prompt hi", "LM head"),
    ("lens cnn mnist --limit 8", "LM head"),
    ("lens minilm --prompt hi", "LM head"),
    ("prune mlp -o out --structured heads", "heads"),
    # ---- explain files and inputs ----------------------------------------------------------
    ("explain", "nothing to explain"),
    ("explain --ffn {fx}/ffn_bad.json", "not valid JSON"),
    ("explain --ffn {fx}/ffn_missing.json", "b1"),
    ("explain --ffn {fx}/ffn_shapes.json", "W2"),
    ("explain --ffn {fx}/nosuch.json", "nosuch.json"),
    ("explain --ffn seed002 --example seed002", "not both"),
    ("explain mlp --ffn seed002", "--ffn"),
    ("explain minilm --layer 0 --input ' '", "empty"),
    ("explain mlp --input-file {fx}/input_garbage.npy", "input_garbage.npy"),
    ("explain mlp --input-file {fx}/nosuch.npy", "nosuch.npy"),
    ("explain mlp --input hi --input-file {fx}/input_wrong.npy", "not both"),
    # ---- lens options and files ------------------------------------------------------------
    ("lens gpt", "DATA"),
    ("lens gpt text --limit 8 --tuned --lens {fx}/lens_garbage.safetensors", "not both"),
    ("lens gpt text --limit 8 --lens-out l.safetensors", "--tuned"),
    ("lens gpt --tuned --prompt hi", "DATA"),
    ("lens gpt text --limit 8 --lens {fx}/lens_garbage.safetensors", "lens_garbage"),
    ("lens gpt text --limit 8 --lens {fx}/nosuch.safetensors", "nosuch.safetensors"),
    # ---- output paths: refused before any work, nothing created or overwritten -------------
    ("probe mlp digits --limit 40 --plot {fx}/afile/x.png", "afile"),
    ("probe mlp digits --limit 40 --plot {fx}/adir", "adir"),
    ("probe mlp digits --limit 40 --plot nodir/sub/x.png", "nodir"),
    ("probe mlp digits --limit 40 --plot x.txt", "x.txt"),
    ("embed mlp digits --limit 40 --plot {fx}/afile/x.png", "afile"),
    ("embed mlp digits --limit 40 --plot {fx}/adir", "adir"),
    ("similarity mlp digits --limit 40 --plot {fx}/afile/x.png", "afile"),
    ("similarity mlp digits --limit 40 --plot {fx}/adir", "adir"),
    ("importance mlp digits --limit 8 --plot {fx}/afile/x.png", "afile"),
    ("importance mlp digits --limit 8 --plot {fx}/adir", "adir"),
    ("lens gpt text --limit 8 --plot {fx}/afile/x.png", "afile"),
    ("lens gpt text --limit 8 --tuned --lens-out {fx}/afile/l.safetensors", "afile"),
    ("lens gpt text --limit 8 --tuned --lens-out {fx}/adir", "adir"),
    ("record mlp digits -o {fx}/afile --limit 8", "afile"),
    ("record mlp digits -o {fx}/notmodel --limit 8", "notmodel"),
    ("drop mlp -o {fx}/afile --layers 0", "afile"),
    ("drop mlp -o {fx}/notmodel --layers 0", "notmodel"),
    ("prune mlp", "-o"),
    ("prune mlp -o {fx}/afile", "afile"),
    ("prune mlp -o {fx}/notmodel", "notmodel"),
    ("quantize mlp -o {fx}/afile", "afile"),
    ("quantize mlp -o {fx}/notmodel", "notmodel"),
    ("early-exit mlp digits --limit 64 -o {fx}/afile", "afile"),
    ("early-exit mlp digits --limit 64 -o {fx}/notmodel", "notmodel"),
    ("train mlp digits -o {fx}/afile --epochs 1 --limit 64", "afile"),
    ("train mlp digits -o {fx}/notmodel --epochs 1 --limit 64", "notmodel"),
    ("report mlp digits -o {fx}/afile", "afile"),
    ("report mlp digits -o {fx}/notmodel", "notmodel"),
    ("sweep mlp digits --limit 4 --plot x.png", "--plot"),
    # ---- causal analyses and studies --------------------------------------------------------
    ("ablate mlp digits --limit 8 --part nope", "part 'nope'"),
    ("ablate mlp digits --limit 8 --how nope", "'nope'"),
    ("ablate mlp digits --limit 8 --layers 9", "layer 9"),
    ("ablate mlp digits --limit 0", "--limit"),
    ("ablate mlp digits --limit 8 --batch-size 0", "--batch-size"),
    ("ablate mlp digits --limit 8 --method nope", "'nope'"),
    ("ablate mlp nosuchdata", "unknown dataset"),
    ("ablate nosuchmodel digits", "unknown model"),
    ("ablate cnn sentences --limit 8", "got text"),
    ("ablate mlp digits --limit 8 --reference nosuchdata", "unknown dataset"),
    ("ablate mlp digits --limit 8 --plot {fx}/afile/x.png", "afile"),
    ("ablate mlp digits --limit 8 --layers ''", "--layers"),
    ("steer mlp digits --limit 8", "score"),
    ("steer nosuchmodel sentences", "unknown model"),
    ("steer gpt text --alphas a,b", "a,b"),
    ("steer gpt text --limit 0", "--limit"),
    ("steer gpt text --eval 0", "--eval"),
    ("steer gpt text --tokens 0", "--tokens"),
    ("steer gpt text --layers ''", "--layers"),
    ("study nosuch", "unknown study 'nosuch'"),
    ("study ''", "NAME"),
    ("patch mlp --clean a --corrupt b --target c", "causal language model"),
    ("patch gpt --pairs {fx}/nosuch.tsv", "nosuch.tsv"),
    ("patch gpt --pairs {fx}/empty.txt", "empty.txt"),
    ("patch gpt --clean ab --corrupt ac --target b --part nope", "part 'nope'"),
    ("patch gpt --clean ab --corrupt ac --target b --direction sideways", "sideways"),
    ("patch gpt --clean ab --corrupt ac --target b --metric nope", "'nope'"),
    ("patch gpt --clean ab --corrupt ac --target b --method nope", "'nope'"),
    ("patch gpt --clean ab --corrupt ac --target b --layers 9", "layer 9"),
    ("patch gpt --clean ab --corrupt ac --target b --batch-size 0", "--batch-size"),
    ("patch gpt", "nothing to patch"),
    ("patch nosuchmodel --clean a --corrupt b --target c", "unknown model"),
    ("attribute nosuchmodel --input hi", "unknown model"),
    ("attribute mlp --data nosuchdata", "unknown dataset"),
    ("attribute mlp --data digits --item 99999", "--item 99999"),
    ("attribute mlp --data digits --item -1", "--item -1"),
    ("attribute mlp --data digits --method nope", "'nope'"),
    ("attribute mlp --data digits --steps 0", "--steps"),
    ("attribute mlp --data digits --layers 9", "layer 9"),
    ("attribute mlp --input hello", "--data"),
    ("attribute cnn --data sentences", "text"),
    ("attribute mlp --data digits --target 99", "class 99"),
    ("attribute mlp --data digits --plot {fx}/afile/x.png", "afile"),
    # ---- training runs ---------------------------------------------------------------------
    ("train mlp digits -o run --resume --epochs 1 --limit 64", "resume"),
    ("train mlp:width=16 digits -o {runs}/run_badstate --resume --epochs 2 --limit 64 --no-plots",
     "train_state.pt"),
    ("train mlp:width=16 digits -o {runs}/run_truncstate --resume --epochs 2 --limit 64 "
     "--no-plots", "train_state.pt"),
]


def _param(case):
    command, fragment, *owner = case
    marks = [pytest.mark.xfail(strict=True, reason=owner[0])] if owner else []
    return pytest.param(command, fragment, marks=marks, id=command[:90])


@pytest.mark.parametrize("command, fragment", [_param(c) for c in CASES])
def test_bad_input_is_refused_cleanly(command, fragment, fx, runs, tmp_path, capsys):
    argv = shlex.split(command.format(fx=fx, runs=runs))
    code, out, err, changed = run_cli(argv, tmp_path, capsys, watch=[fx, runs])
    assert_clean_refusal(code, out, err, changed, fragment)


def test_the_corpus_is_large_and_covers_every_command():
    load_commands()
    commands = {c.name for c in app.registered_commands if not c.hidden}
    covered = {shlex.split(case[0])[0] for case in CASES}
    assert len(CASES) >= 200
    assert commands - covered == set(), f"commands without a bad-input case: {commands - covered}"


@pytest.mark.parametrize("command", [
    "sweep mlp digits --limit 4 --layers ''",
    "probe mlp digits --limit 40 --plot {fx}/afile/x.png",
    "similarity mlp digits --limit 40 --plot {fx}/adir",
    "embed mlp digits --limit 40 --plot {fx}/afile/x.png",
    "importance mlp digits --limit 8 --plot {fx}/afile/x.png",
    "train mlp digits -o {fx}/afile --epochs 1 --limit 64",
    "report mlp digits -o {fx}/notmodel",
    "record mlp digits -o {fx}/afile --limit 8",
])
def test_output_paths_are_refused_before_any_work(command, fx, tmp_path, capsys):
    """Nothing but the error on stderr: no progress bar, no stage line ran before the check."""
    code, out, err, changed = run_cli(shlex.split(command.format(fx=fx)), tmp_path, capsys, [fx])
    early = code == 2 and [s for s in err.splitlines() if s.strip()] == [_error_line(err)]
    assert early, err
    assert not changed


def test_interrupted_report_says_so_and_leaves_no_report(fx, tmp_path, capsys):
    code, out, err, changed = run_cli(
        ["report", f"{fx}/fac.py:interrupting", "digits", "-o", "out", "--limit", "40"],
        tmp_path, capsys, [fx])
    assert code == 130, (code, err)
    assert "interrupted" in err.strip().splitlines()[-1]
    assert "Traceback" not in err
    out_dir = tmp_path / "out"
    assert not (out_dir / "index.html").exists() and not (out_dir / "results.json").exists()


def test_a_network_trained_from_a_factory_loads_back_when_trusted(runs, tmp_path, capsys):
    """The other side of the refusal above: with --trust-remote-code the factory rebuilds it."""
    code, out, err, changed = run_cli(["summary", f"{runs}/frun/best", "--trust-remote-code",
                                       "--json"], tmp_path, capsys, [runs])
    assert code == 0, err
    assert json.loads(out) and not changed

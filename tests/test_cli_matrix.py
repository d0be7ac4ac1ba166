"""Every analysis command on every zoo network and built-in model, through the command line.

Each cell runs ``layerscope COMMAND MODEL ...`` in-process with a fitting data set, a small
``--limit`` and ``--json``. A cell either works (exit 0, JSON on stdout that parses and is not
empty, no error line) or refuses in one line saying why the analysis does not apply (exit 2, one
``error:`` line that is neither an exception's name nor an internal-error report). What each
cell does is recorded in :data:`EXPECTED`, so a cell that stops working, or starts refusing,
shows. Cells that crash today are strict xfails naming the part of the code that owns the fix.

Models are loaded once per module (``load_model`` is memoised); after every cell the model's
parameters, buffers and train/eval flags must be exactly as before, so no command changes the
model it was given behind the next command's back.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from layerscope.cli import main

os.environ.setdefault("MPLBACKEND", "Agg")

pytestmark = pytest.mark.slow  # about 200 cells: several minutes on 2 cores

#: the fitting data of each model ("{noise}" is a file of the GAN generator's noise vectors)
DATA = {
    "mlp": "digits", "cnn": "mnist", "cnn-dw": "mnist", "resnet": "mnist",
    "lstm": "timeseries", "gru": "timeseries", "transformer": "text", "gpt": "text",
    "autoencoder": "digits", "gan": "{noise}",
    "minilm": "sentences", "smollm2": "sentences", "efficientnet-lite0": "{images}",
}
TEXT_MODELS = {"minilm", "smollm2"}

#: one template per analysis command; {m} model, {d} data, {input} the explain/attribute input
COMMANDS = {
    "summary": "summary {m}",
    "layers": "layers {m}",
    "sweep": "sweep {m} {d} --limit 8 -b 8",
    "probe": "probe {m} {d} --limit 60 -b 30",
    "similarity": "similarity {m} {d} --limit 12 -b 12",
    "embed": "embed {m} {d} --limit 12 -b 12",
    "importance": "importance {m} {d} --limit 8 -b 8",
    "lens": "lens {m} {d} --limit 4 -b 4 --max-length 16",
    "record": "record {m} {d} -o store --limit 8 -b 8",
    "explain": "explain {m} --layer 0 {text}",
    "early-exit": "early-exit {m} {d} --limit 64",
    "prune-sensitivity": "prune {m} --sensitivity --data {d} --limit 16 -b 16 --sparsities 0.5",
    "ablate": "ablate {m} {d} --limit 8 -b 8",
    "attribute": "attribute {m} {input} --steps 4",
    "patch": "patch {m} --clean 'The capital of France is' --corrupt 'The capital of Italy is' "
             "--target ' Paris'",
    "steer": "steer {m} {d} --limit 40 --eval 4 -b 8 --max-length 16",
}

# o = works, r = refuses with a reason; columns in the order of COMMANDS:
#                      summ lay swe pro sim emb imp len rec exp e-x pru abl att pat ste
EXPECTED = {
    "mlp":                "o   o   o   o   o   o   o   r   o   o   o   o   o   o   r   r",
    "cnn":                "o   o   o   o   o   o   o   r   o   o   o   o   o   o   r   r",
    "cnn-dw":             "o   o   o   o   o   o   o   r   o   o   o   o   o   o   r   r",
    "resnet":             "o   o   o   o   o   o   o   r   o   o   o   o   o   o   r   r",
    "lstm":               "o   o   o   o   o   o   o   r   o   o   r   r   o   r   r   r",
    "gru":                "o   o   o   o   o   o   o   r   o   o   r   r   o   r   r   r",
    "transformer":        "o   o   o   r   o   o   r   r   o   o   r   r   r   o   r   r",
    "gpt":                "o   o   o   r   o   o   o   o   o   o   r   o   o   o   r   r",
    "autoencoder":        "o   o   o   o   o   o   o   r   o   o   o   o   o   r   r   r",
    "gan":                "o   o   o   r   o   o   o   r   o   o   r   o   o   r   r   r",
    "minilm":             "o   o   o   o   o   o   o   r   o   o   r   o   o   r   r   o",
    "efficientnet-lite0": "o   o   o   r   o   o   o   r   o   r   o   o   o   o   r   r",
    "smollm2":            "o   o   o   o   o   o   o   o   o   o   r   o   o   o   o   o",
}

OWN_CAUSAL = "fix in analyses/causal (attribute/patch/ablate/steer)"

#: cells that crash today (an internal error instead of a result or a reason)
KNOWN_BUGS = {
}


def _cells():
    names = list(COMMANDS)
    for model, row in EXPECTED.items():
        marks = row.split()
        assert len(marks) == len(names), model
        for command, mark in zip(names, marks):
            bug = KNOWN_BUGS.get((model, command))
            extra = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
            yield pytest.param(model, command, mark, marks=extra, id=f"{model}-{command}")


@pytest.fixture(scope="module")
def data_files(tmp_path_factory) -> dict:
    """Data no built-in set provides: the GAN's noise inputs, labelled 224x224 colour images."""
    from PIL import Image

    from layerscope.data import load_dataset

    root = tmp_path_factory.mktemp("matrix-data")
    torch.manual_seed(0)
    np.save(root / "noise.npy", torch.randn(64, 16).numpy())
    photos = load_dataset("photos")
    for index, name in enumerate(photos.meta.get("files") or ["china", "flower"]):
        folder = root / "images" / Path(str(name)).stem
        folder.mkdir(parents=True)
        pixels = photos.items[index].permute(1, 2, 0).numpy().astype(np.uint8)
        for k in range(8):  # crops from different places of the photo
            top, left = 20 * k, 40 * k
            Image.fromarray(pixels[top:top + 224, left:left + 224]).save(folder / f"{k}.png")
    return {"noise": str(root / "noise.npy"), "images": str(root / "images")}


@pytest.fixture(scope="module")
def loaded_once():
    """``load_model`` memoised for this module: each model loads once (SmolLM2 takes ~35 s)."""
    import layerscope.models as models

    original = models.load_model
    cache: dict = {}

    def load_model(ref, *args, **kwargs):
        key = (ref if isinstance(ref, str) else id(ref), args,
               tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        if key not in cache:
            cache[key] = original(ref, *args, **kwargs)
        return cache[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "load_model", load_model)
        yield cache


def _state(cache: dict) -> dict:
    """Every loaded model's parameters and buffers (as sums) and train/eval flags."""
    state = {}
    for key, loaded in cache.items():
        module = loaded.module
        tensors = [(n, t) for n, t in [*module.named_parameters(), *module.named_buffers()]]
        state[key] = ([(n, float(t.detach().double().sum()), float(t.detach().double().abs().sum()))
                       for n, t in tensors],
                      [m.training for m in module.modules()])
    return state


def _error_lines(err: str) -> list[str]:
    return [s.strip() for s in re.split(r"[\r\n]", err) if "error:" in s.lower()]


@pytest.mark.parametrize("model, command, expected", list(_cells()))
def test_every_command_on_every_model(model, command, expected, data_files, loaded_once,
                                      tmp_path, capsys, request):
    if model == "smollm2":
        from layerscope.builtin_models import is_installed

        if not is_installed("smollm2"):
            pytest.skip("SmolLM2 is not installed")
    data = DATA[model].format(**data_files)
    text = "--input 'The cat sat on the mat.'" if model in TEXT_MODELS else ""
    attribute_input = text or f"--data {data}"
    line = COMMANDS[command].format(m=model, d=data, text=text, input=attribute_input)
    argv = shlex.split(line) + ["--json"]
    before = _state(loaded_once)
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        code = main(argv)
    finally:
        os.chdir(old)
    out, err = capsys.readouterr()
    errors = _error_lines(err)
    assert "Traceback" not in err, err
    assert code in (0, 2), f"exit {code}: {errors or err[-500:]}"
    if code == 0:
        assert not errors, errors
        assert json.loads(out), f"empty JSON from: {line}"
        outcome = "o"
    else:
        assert len(errors) == 1 and errors[0].startswith("error: "), err[-500:]
        assert not re.match(r"^error: (?:[\w.]+\.)?[A-Z]\w*(?:Error|Exception)\b", errors[0])
        outcome = "r"
    after = _state(loaded_once)  # a model first loaded by this cell is compared from the next
    assert {key: after[key] for key in before} == before, f"{line} changed the loaded model"
    assert outcome == expected, (
        f"{line}: expected {'works' if expected == 'o' else 'refuses'}, got "
        f"{errors[0] if errors else 'a result'}")

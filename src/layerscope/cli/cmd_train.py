"""``layerscope train MODEL [DATA] -o DIR``: train a model and watch every layer.

DATA defaults to the reference data set of a zoo network (see :data:`DEFAULT_DATA`): e.g.
``layerscope train cnn -o runs/cnn`` trains on the 5,000 MNIST digits.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .app import app, fail
from .common import JsonOpt, ModelArg, print_json

DEFAULT_DATA = {
    "mlp": "digits", "cnn": "mnist", "cnn-dw": "mnist", "resnet": "mnist", "lstm": "sunspots",
    "gru": "sunspots", "gpt": "text", "transformer": "text", "autoencoder": "digits",
    "gan": "digits", "minilm": "sentences",
}


def default_data(model: str) -> str | None:
    """The reference data set for a model reference, or None when there is none.

    Example:
        >>> default_data("mlp:depth=3"), default_data("cnn"), default_data("my/folder")
        ('digits', 'mnist', None)
    """
    return DEFAULT_DATA.get(model.split(":", 1)[0].strip())


def parse_layer_lr(text: str | None) -> dict | None:
    """``"blocks.0=1e-4,head=1e-2"`` -> ``{"blocks.0": 1e-4, "head": 0.01}``.

    Example:
        >>> parse_layer_lr("0-2=1e-4,head=0.01")
        {'0-2': 0.0001, 'head': 0.01}
    """
    from layerscope.errors import LayerscopeError

    if not text:
        return None
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = part.rpartition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            name = ""
        if not eq or not name.strip():
            raise LayerscopeError(f"--layer-lr {text!r}: write LAYER=LR pairs, e.g. 0-2=1e-4,head=1e-2")
    return out


@app.command("train")
def train_command(
    model: ModelArg,
    data: Annotated[Optional[str], typer.Argument(
        help="Dataset name (digits, mnist, sentences, text, sunspots, ...) or file; defaults to "
             "the zoo network's reference data.", show_default=False)] = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Output folder for checkpoints, "
                                     "metrics and plots.")] = "runs/train",
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training split.")] = 5,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Items per step.")] = 64,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 1e-3,
    optimizer: Annotated[str, typer.Option("--optimizer", help="adam, adamw or sgd.")] = "adam",
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed for weights, shuffling, dropout.")] = 0,
    freeze: Annotated[Optional[str], typer.Option(
        "--freeze", help="Layers to freeze: blocks:0-2, indices or module names.",
        show_default=False)] = None,
    freeze_bn: Annotated[str, typer.Option(
        "--freeze-bn", help="Other BatchNorms: none, stats (running statistics fixed), affine "
                            "(weight/bias fixed) or both.")] = "none",
    layer_lr: Annotated[Optional[str], typer.Option(
        "--layer-lr", help="Per-layer learning rates, e.g. 0-2=1e-4,head=1e-2.",
        show_default=False)] = None,
    lr_decay: Annotated[Optional[float], typer.Option(
        "--lr-decay", help="Layer-wise decay: block i of n learns at lr*decay^(n-1-i).",
        show_default=False)] = None,
    clip_grad: Annotated[Optional[float], typer.Option(
        "--clip-grad", help="Clip the total gradient norm to this value.", show_default=False)] = None,
    monitor_every: Annotated[int, typer.Option(
        "--monitor-every", help="Record per-layer figures every N steps (0: off).")] = 50,
    patience: Annotated[Optional[int], typer.Option(
        "--patience", help="Stop after N epochs without improvement.", show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted (or killed) "
                                         "run in the output folder exactly.")] = False,
    save_every: Annotated[Optional[int], typer.Option(
        "--save-every", help="Also save the resume state every N steps (default: every 5 "
                             "minutes and at each epoch end).", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Write into an output folder that holds "
                                        "other files.")] = False,
    limit: Annotated[Optional[int], typer.Option(
        "--limit", help="Use only N items of the data (seeded shuffle).", show_default=False)] = None,
    held_out: Annotated[float, typer.Option("--held-out", help="Fraction kept for evaluation.")] = 0.2,
    task: Annotated[Optional[str], typer.Option(
        "--task", help="classification, regression, causal-lm, autoencoder or gan (default: "
                       "the model's).", show_default=False)] = None,
    loss: Annotated[Optional[str], typer.Option(
        "--loss", help="cross-entropy, nll or mse (default: the task's).", show_default=False)] = None,
    device: Annotated[Optional[str], typer.Option(
        "--device", help="cpu or cuda (default: cuda when available).", show_default=False)] = None,
    csv: Annotated[bool, typer.Option("--csv", help="Also write metrics.csv.")] = False,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Skip the PNG plots.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train MODEL on DATA, evaluating each epoch and recording every layer's figures.

    At the end the run's diagnoses are printed as ``flag: ...`` lines (vanishing or exploding
    gradients, dead ReLUs, stuck at chance, rising held-out loss) and kept in result.json;
    grad_norm_by_depth.png draws the gradients by depth.
    """
    import torch

    from layerscope.errors import LayerscopeError
    from layerscope.train import train

    data = data or default_data(model)
    if data is None:
        raise LayerscopeError(f"model {model!r} has no default data set; name one, e.g. "
                              f"`layerscope train {model} digits -o DIR`")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else None
    result = train(model, data, out_dir=out, epochs=epochs, batch_size=batch_size, lr=lr,
                   optimizer=optimizer, weight_decay=weight_decay, seed=seed, device=device,
                   monitor_every=monitor_every, clip_grad=clip_grad, freeze=freeze,
                   freeze_bn=freeze_bn, layer_lr=parse_layer_lr(layer_lr), lr_decay=lr_decay,
                   patience=patience, resume=resume, progress=not no_progress, task=task,
                   loss=loss, held_out=held_out, limit=limit, metrics_csv=csv,
                   plots=not no_plots, save_every=save_every, force=force)
    if as_json:
        print_json(result.to_dict())
    else:
        typer.echo(result.summary())
        for label, path in (("best checkpoint", result.best_checkpoint),
                            ("last checkpoint", result.last_checkpoint),
                            ("metrics", result.metrics_file)):
            if path:
                typer.echo(f"{label}: {path}")
    if result.stopped == "interrupted":
        raise fail(f"interrupted; continue with `layerscope train {model} {data} -o {out} "
                   f"--resume`", code=130)

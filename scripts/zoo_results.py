"""Train every zoo network on its reference task and write the results table docs/ZOO_RESULTS.md.

Each run uses ``layerscope.train`` with a fixed seed on the built-in offline data; the figure
that judges it is compared with a baseline a practitioner would ask for:

* MLP / CNN / CNN-dw / ResNet: held-out accuracy (target >= 95 %);
* autoencoder: AUROC of reconstruction error, held-out digits vs planted anomalies (the same
  digits with their pixels shuffled); chance = 0.5;
* LSTM / GRU: held-out MSE of the next sunspot value vs the persistence forecast;
* GPT: held-out next-character loss vs the unigram entropy of the training characters;
* GAN: a classifier two-sample test (logistic regression telling real held-out digits from
  generated ones; 0.5 = indistinguishable) and a digit classifier trained on the real digits
  (how confidently it reads the generated samples, and how many classes they cover);
* MiniLM-L6 transfer learning: the first 4 of 6 blocks frozen, a new regression head on the
  mean-pooled embedding, sentiment scores of the sentences; held-out R².

Usage: .venv/bin/python scripts/zoo_results.py [--only cnn,mlp] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

RUNS = [
    # name, model, data, train() settings
    ("mlp", "mlp", "digits", dict(epochs=30, batch_size=32, lr=2e-3)),
    ("cnn", "cnn", "mnist", dict(epochs=6, batch_size=64, lr=2e-3)),
    ("cnn-dw", "cnn-dw", "mnist", dict(epochs=6, batch_size=64, lr=3e-3)),
    ("resnet", "resnet", "mnist", dict(epochs=6, batch_size=64, lr=2e-3)),
    ("autoencoder", "autoencoder", "digits", dict(epochs=40, batch_size=32, lr=3e-3)),
    ("lstm", "lstm", "sunspots", dict(epochs=10, batch_size=16, lr=5e-3)),
    ("gru", "gru", "sunspots", dict(epochs=10, batch_size=16, lr=5e-3)),
    ("gpt", "gpt:width=64,depth=2", "text", dict(epochs=4, batch_size=32, lr=3e-3, limit=8000)),
    ("gan", "gan:width=256,dropout=0.3", "digits",
     dict(epochs=60, batch_size=16, lr=1e-3, monitor_every=200)),
    ("minilm", "minilm", "sentences", dict(epochs=2, batch_size=32, lr=1e-3, limit=3000,
                                           freeze="blocks:0-3", max_length=48)),
]


NOTES = {
    "gpt": "a smaller GPT than the zoo default (width 64, depth 2 instead of 128 x 3) so that "
           "800 optimizer steps fit well within two minutes on 2 cores (the default GPT with the "
           "same settings had done 600 of its 800 steps after 200 s).",
    "gan": "wider than the zoo default (width 256 instead of 128) with dropout 0.3 in the "
           "discriminator and batch size 16 (about 5,400 steps); the C2ST in the result is "
           "the best epoch's, chosen on the held-out split itself, so the result also gives "
           "the C2ST of as many fresh samples as held-out digits (no selection).",
}


def judge(name: str, result, data) -> tuple[str, str, bool]:
    """(result text, baseline text, passed) for one run."""
    last = result.history[-1]
    best = result.best_metric
    if name in ("mlp", "cnn", "cnn-dw", "resnet"):
        return f"accuracy {best:.4f}", "target >= 0.95", best >= 0.95
    if name == "autoencoder":
        return f"AUROC {best:.4f}", "chance 0.5", best >= 0.9
    if name in ("lstm", "gru"):
        mse, base = result.best_metric, last["persistence_mse"]
        return (f"MSE {mse:.4f} (standardised)", f"persistence MSE {base:.4f}", mse < base)
    if name == "gpt":
        loss, h = min(r["eval_loss"] for r in result.history), result.settings["unigram_entropy"]
        return (f"loss {loss:.3f} nats/char", f"unigram entropy {h:.3f} nats/char",
                loss < 0.8 * h)
    if name == "gan":
        extra = gan_digit_judge(result)
        text = (f"C2ST accuracy {best:.3f} (fresh samples {extra['fresh_c2st']:.3f}); "
                f"digit classifier: mean confidence "
                f"{extra['fake_confidence']:.2f}, {extra['fake_classes']} classes covered")
        base = (f"real held-out digits: confidence {extra['real_confidence']:.2f}, "
                f"{extra['real_classes']} classes; C2ST 0.5 = indistinguishable, pass below 0.9")
        return text, base, best < 0.9 and extra["fake_classes"] >= 8
    if name == "minilm":
        r2 = max(r["r2"] for r in result.history)
        return f"R² {r2:.3f} (MSE {best:.3f})", "mean predictor R² 0", r2 > 0.3
    raise KeyError(name)


def gan_digit_judge(result) -> dict:
    """A logistic-regression digit classifier trained on the real digits reads GAN samples."""
    from sklearn.linear_model import LogisticRegression

    from layerscope.data import load_dataset
    from layerscope.models import load_model

    data = load_dataset("digits")
    train, test = data.split(test_fraction=0.2, seed=0)
    lo, hi = result.settings.get("gan_scale") or (-1.0, 1.0)   # the loop's scaling, if any
    scale = (lambda x: (x - lo) / (hi - lo) * 2 - 1)
    clf = LogisticRegression(max_iter=2000).fit(scale(train.items.numpy()), train.labels.numpy())
    gan = load_model(result.best_checkpoint).module.eval()
    fake = gan.sample(1000, generator=torch.Generator().manual_seed(1)).numpy()

    def read(x):
        p = clf.predict_proba(x)
        counts = torch.bincount(torch.as_tensor(p.argmax(1)), minlength=10)
        return float(p.max(1).mean()), int((counts >= 0.02 * len(x)).sum())

    from layerscope.train.tasks import c2st_accuracy

    real = scale(test.items.numpy())
    fresh = c2st_accuracy(torch.as_tensor(real).float(), torch.as_tensor(fake[:len(real)]))
    fc, fk = read(fake)
    rc, rk = read(real)
    return {"fake_confidence": fc, "fake_classes": fk, "real_confidence": rc, "real_classes": rk,
            "fresh_c2st": fresh}


def settings_text(kw: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in kw.items())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default=None, help="comma list of run names")
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "layerscope-zoo"),
                        help="where the runs' checkpoints, metrics and plots go")
    parser.add_argument("--table", default=str(ROOT / "docs" / "ZOO_RESULTS.md"))
    parser.add_argument("--table-only", action="store_true",
                        help="rewrite the table from the rows.json of an earlier run in --out")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(2)
    from layerscope.train import train

    wanted = set(args.only.split(",")) if args.only else None
    cache = Path(args.out) / "rows.json"
    rows = json.loads(cache.read_text()) if cache.is_file() else {}
    load = [os.getloadavg()[0]]
    if args.table_only:
        write_table(Path(args.table), rows, rows.get("_load", load))
        return
    for name, model, data, kw in RUNS:
        if wanted and name not in wanted:
            continue
        settings = {"seed": 0, "monitor_every": 50, **kw}
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        result = train(model, data, out_dir=Path(args.out) / name, progress=False, plots=True,
                       **settings)
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
        text, base, ok = judge(name, result, data)
        rows[name] = {"model": model, "data": data, "settings": settings_text(settings),
                      "result": text, "baseline": base, "passed": ok, "seconds": seconds, "cpu_seconds": cpu,
                      "epochs_run": len(result.history), "flags": len(result.flags)}
        load.append(os.getloadavg()[0])
        print(f"{name}: {text} | {base} | {'pass' if ok else 'FAIL'} | {seconds:.0f} s", flush=True)
        rows["_load"] = sorted(set(rows.get("_load", []) + load))
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(rows, indent=1))
    write_table(Path(args.table), rows, rows.get("_load", load))


def _cpu_seconds() -> float:
    """CPU time of this process (user + system), all threads."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_table(path: Path, rows: dict, load: list) -> None:
    from layerscope.cli.cmd_train import DEFAULT_DATA

    order = [name for name, *_ in RUNS if name in rows]
    _minilm = next(kw for name, _, _, kw in RUNS if name == "minilm")
    load = [x for x in load if isinstance(x, (int, float))] or [0.0]
    lines = [
        "# Zoo results", "",
        "Every zoo network trained on its reference task with `layerscope.train` (seed 0, "
        "held-out 20 %), reproduced by `scripts/zoo_results.py`. Time is wall-clock for the "
        "whole run (loading, training, evaluation each epoch, checkpoints, plots).", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} "
        f"torch threads, Python {platform.python_version()}, torch {torch.__version__}, "
        f"{datetime.date.today()}. 1-minute load average between {min(load):.1f} and "
        f"{max(load):.1f} on the 2 cores while this ran"
        + (" (other jobs shared the machine, so wall-clock times are inflated; the process's own "
           "CPU time divided by its 2 threads estimates the time on an idle 2-core machine)."
           if max(load) > 2.5 else "."), "",
        "| network | data | result (held-out) | baseline | passed | seconds (wall) | CPU seconds "
        "/ 2 | settings |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in order:
        r = rows[name]
        cpu = f"{r['cpu_seconds'] / 2:.0f}" if r.get("cpu_seconds") is not None else "-"
        lines.append(f"| `{r['model']}` | {r['data']} | {r['result']} | {r['baseline']} | "
                     f"{'yes' if r['passed'] else 'no'} | {r['seconds']:.0f} | {cpu} | "
                     f"{r['settings']} |")
    notes = [f"- `{name}`: {NOTES[name]}" for name in order if name in NOTES]
    if notes:
        lines += ["", "Notes on the settings:", "", *notes]
    missing = [name for name, *_ in RUNS if name not in rows]
    if missing:
        lines += ["", f"Not run for this table: {', '.join(missing)} "
                      f"(`scripts/zoo_results.py --only {','.join(missing)}` adds them)."]
    lines += ["", "How each is judged:", "",
              "- classifiers: accuracy on the held-out 20 % (stratified split);",
              "- autoencoder: AUROC (scikit-learn `roc_auc_score`) of the per-item reconstruction "
              "error, held-out digits against planted anomalies (the same digits with their "
              "pixels shuffled);",
              "- LSTM / GRU: MSE of the next value on the last 20 % of the series, against the "
              "persistence forecast (next value = last value);",
              "- GPT: next-character cross-entropy on held-out chunks, against the unigram "
              "entropy of the training characters (the best loss without context);",
              "- GAN: classifier two-sample test (5-fold logistic regression separating held-out "
              "real digits from as many generated ones; 0.5 means indistinguishable) and a "
              "logistic-regression digit classifier trained on real digits reading 1,000 samples "
              "(mean top-class probability; classes that get at least 2 % of the samples);",
              "- MiniLM-L6: blocks 0-3 frozen, new linear head on the mean-pooled embedding, "
              f"{_minilm['limit']:,} sentences, {_minilm['epochs']} epoch(s); R² of the sentiment "
              "score on held-out sentences.", "",
              "## Train one yourself", "",
              "`layerscope train MODEL [DATA] -o DIR` trains on the zoo network's reference data "
              "when DATA is left out:", "",
              "| model | default data |", "|---|---|",
              *[f"| `{m}` | {d} |" for m, d in DEFAULT_DATA.items()], "",
              "```bash",
              "layerscope train cnn mnist -o runs/cnn --epochs 6 --lr 2e-3",
              "layerscope train mlp -o runs/mlp --epochs 30 --batch-size 32 --lr 2e-3",
              "layerscope train minilm sentences -o runs/minilm --freeze blocks:0-3 --limit 1500 "
              "--epochs 1",
              "layerscope summary runs/cnn/best      # checkpoints load back everywhere",
              "```", "",
              "Each run folder holds `best/` and `last/` checkpoints, `train_state.pt` (for "
              "`--resume`), `metrics.jsonl` with the per-layer monitors (gradient norm, "
              "update/weight ratio, weight norm, activation mean/std, dead ReLU fraction every "
              "`--monitor-every` steps), `monitor_*.png` plots, `history.png` and `result.json`.",
              ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()

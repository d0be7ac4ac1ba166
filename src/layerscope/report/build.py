"""``build_report``: measure every layer of a model on data and write one HTML page about it.

One shared pass over the data feeds the activation statistics, the probes, the layer similarity
and the sample for the pictures (every analysis is a set of reducers on the same sweep). The
passes that must run the model differently come after it, on fewer items: the bigram-shift probe
(on perturbed sentences), layer removal (about (L+1)/2 forwards per item with prefix reuse) and,
for language models, the logit lens. Each section is present when it applies to the model; a
section that cannot run on this model is left out with the reason written in the report.

The folder gets ``figures/*.png`` and ``results.json`` first and ``index.html`` last, written
under a temporary name and renamed, so a run cut short never leaves a page that looks complete.

Example:
    >>> import tempfile, torch
    >>> from layerscope.data import Dataset
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> ds = Dataset("toy", torch.randn(64, 4), torch.randint(0, 3, (64,)), "tensor", "classification")
    >>> res = build_report(net, ds, tempfile.mkdtemp(), progress=False, input_shape=(4,))
    >>> "activations" in res.sections and res.index.endswith("index.html")
    True
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from layerscope.errors import LayerscopeError
from layerscope.results import Result, to_plain

from . import sections as S
from .defaults import default_amounts, default_data
from .outdir import FORMAT, check_out_dir, prepare_out_dir, record_report_files
from .page import Page
from .png import chart_png
from .render import render_html, write_atomic
from .stages import Stages

PICTURE_ITEMS = 600
BIGRAM_ITEMS = 1000


@dataclass
class ReportResult(Result):
    """Where the report went, what it measured, and how long each stage took."""

    model: str
    data: str
    out_dir: str
    index: str
    n_items: int
    seconds: float
    stages: dict
    sections: list[str]
    skipped: dict
    findings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"report of {self.model} on {self.n_items} items of {self.data}: "
                f"{len(self.sections)} sections in {self.seconds:.0f} s -> {self.index}")


@dataclass
class _Run:
    """What the stages share while a report is built."""

    loaded: object
    dataset: object
    data_name: str
    stages: Stages
    batch_size: int
    max_length: int | None
    seed: int
    sections: list = field(default_factory=list)
    results: dict = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)
    probes: list = field(default_factory=list)
    chosen: str | None = None          # --layers: the blocks the per-layer passes measure


def _load_data(data, limit, seed, default_limit, progress: bool = True):
    """The items of the main pass, said up front (through the CLI's one ``--limit`` rule): a
    seeded random subset of ``default_limit`` items of a named dataset unless ``limit`` says
    otherwise (a number, or ``"all"``); a :class:`Dataset` given in Python is used whole unless
    ``limit`` is given."""
    from layerscope.cli.limits import load_limited
    from layerscope.data import Dataset

    given = isinstance(data, Dataset)
    if not given and not isinstance(data, str):
        raise LayerscopeError(f"DATA must be a dataset name, a file or a Dataset; got {type(data).__name__}")
    ds = load_limited(data, limit, default=None if given else default_limit, seed=seed,
                      say=progress and not given)
    name = ds.name if given else data
    if len(ds) < 4:
        raise LayerscopeError(f"data {name!r} has {len(ds)} items; a report needs at least 4")
    return ds, name


def _check_fits(loaded, dataset, max_length) -> None:
    """Fail before any long work when the data cannot feed the model (one tiny forward)."""
    probe = dataset.subset(range(min(2, len(dataset))))
    enc = loaded.encode(probe.items, max_length=max_length)
    try:
        with torch.inference_mode():
            loaded(enc)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LayerscopeError(
            f"data {dataset.name!r} does not fit model {loaded.ref!r} ({first}); "
            f"pick data of the kind the model takes"
        ) from None


# --- stages -----------------------------------------------------------------------------------


def _anatomy(run: _Run) -> None:
    from layerscope.anatomy import anatomy

    a = anatomy(run.loaded)
    run.results["anatomy"] = a
    rows = [{"index": "" if r["index"] is None else r["index"], "name": r["name"], "role": r["role"],
             "params": r["params"], "flops": r["flops"], "in_shape": _shape_text(r["input_shape"]),
             "out_shape": _shape_text(r["output_shape"])} for r in a.rows()]
    run.sections.append(S.anatomy_section(run.loaded.ref, a.counts, a.rules, rows, a.total_params,
                                          a.total_flops, a.example))


def _shape_text(shape) -> str:
    return "" if not shape else "(" + ", ".join(str(d) for d in shape) + ")"


class _Relabel:
    """Feeds a probe reducer a task's labels (by item index) instead of the data's own; items
    whose task label is negative are left out of that probe (e.g. near-neutral sentiment)."""

    def __init__(self, inner, labels: torch.Tensor):
        self.inner, self.labels = inner, labels
        self.view, self.layers, self.wants_inputs = inner.view, inner.layers, inner.wants_inputs
        self.kept = 0

    def update(self, acts, batch) -> None:
        from layerscope.reducers import BatchInfo

        y = self.labels[batch.start:batch.start + batch.size]
        keep = (y >= 0).nonzero().flatten()
        if len(keep) == 0:
            return
        rows = {k: v[keep.to(v.device)] for k, v in acts.items()}
        self.inner.update(rows, BatchInfo(self.kept, len(keep), y[keep]))
        self.kept += len(keep)

    def merge(self, other):
        raise LayerscopeError("report probes are not merged")


@dataclass
class _ProbeTask:
    name: str
    kind: str
    stats: object       # the ProbeStats the probe is fitted from
    data: object
    reducer: object = None  # what the shared sweep feeds (a _Relabel around ``stats``), if any


def _shared_task(name: str, kind: str, task_data, labels: torch.Tensor, seed: int) -> _ProbeTask:
    """A probe fed by the shared sweep, with ``labels`` per item of the swept data (-1: left out)."""
    from layerscope.analyses import probe as prb

    stats = prb.reducers(task_data, seed=seed)[0]
    return _ProbeTask(name, kind, stats, task_data, _Relabel(stats, labels))


def _probe_tasks(run: _Run) -> list[_ProbeTask]:
    """The probing tasks that fit this data: surface/meaning from sentences, else the labels."""
    from layerscope.analyses.probe_tasks import make_task

    ds, seed = run.dataset, run.seed
    labelled = ds.labels is not None and ds.labels.dim() == 1
    if not (isinstance(ds.items, list) and all(isinstance(t, str) for t in ds.items[:50])):
        return [_shared_task(f"{ds.name} labels", "labels", ds, ds.labels, seed)] if labelled else []
    length = make_task("length", ds, seed=seed)
    out = [_shared_task("sentence length", "surface", length, length.labels, seed)]
    if labelled and ds.labels.is_floating_point():
        senti = make_task("sentiment", ds, seed=seed)
        y = torch.full((len(ds),), -1, dtype=torch.int64)
        keep = (ds.labels.abs() >= senti.meta.get("margin", 0.5)).nonzero().flatten()
        y[keep] = (ds.labels[keep] > 0).long()
        out.append(_shared_task("sentiment", "meaning", senti, y, seed))
    elif labelled:
        out.append(_shared_task(ds.name, "labels", ds, ds.labels, seed))
    return out


def _main_pass(run: _Run) -> None:
    """The one shared sweep: statistics, probe and CKA statistics, and a sample for pictures."""
    from layerscope.analyses import similarity as sim
    from layerscope.reducers import Moments, NonFinite, Reservoir
    from layerscope.sweep import sweep

    loaded = run.loaded
    token_model = loaded.modality == "text"
    stats_view = "tokens" if token_model else "flat"
    moments, nonfinite = Moments(view=stats_view), NonFinite(view=stats_view)
    probes = _probe_tasks(run)
    cka = sim.reducers(kernel="linear", view="mean", seed=run.seed)
    reservoir = Reservoir(capacity=PICTURE_ITEMS, view="mean", seed=run.seed)
    reducers = [moments, nonfinite, *[p.reducer for p in probes], *cka, reservoir]
    sw = sweep(loaded, run.dataset, reducers=reducers, layers=run.chosen, batch_size=run.batch_size,
               max_length=run.max_length, progress=run.stages.progress)
    run.layers = list(sw.layers)
    run.results["sweep"] = {"items": sw.n_items, "batches": sw.n_batches, "seconds": sw.seconds,
                            "items_per_second": sw.n_items / max(sw.seconds, 1e-9)}
    m, nf = moments.result(), nonfinite.result()
    run.results["activations"] = m
    run.results["nonfinite"] = nf
    bad = dict(zip(nf.layers, (a + b + c for a, b, c in zip(nf.nan, nf.posinf, nf.neginf))))
    run.sections.append(S.activations_section(
        m.layers, mean=m.mean, std=m.std, sparsity=m.sparsity,
        nonfinite=[bad.get(n, 0) for n in m.layers],
        view="over every real token" if token_model else "over every value"))
    run.probes = probes
    with run.stages.optional("similarity"):
        res = sim.from_reducers(cka, model_name=loaded.ref)
        run.results["similarity"] = res
        run.sections.append(S.similarity_section(res.layers, res.cka,
                                                 kind=f"{res.kernel} CKA, unbiased (n = {res.n})"))
    with run.stages.optional("pictures"):
        _pictures(run, reservoir.result())


def _probe_results(run: _Run, tasks: list[_ProbeTask]) -> None:
    from layerscope.analyses import probe as prb

    curves = {}
    order = {"surface": 0, "syntax": 1, "meaning": 2}
    for t in sorted(tasks, key=lambda t: order.get(t.kind, 3)):
        with run.stages.optional(f"probe {t.name}"):
            res = prb.from_reducers([t.stats], data=t.data, task_name=t.name)
            run.results[f"probe:{t.name}"] = res
            metric = "accuracy" if res.metric == "accuracy" else "R²"
            curves[t.name] = {"score": res.score, "metric": metric, "lo": res.ci_low, "hi": res.ci_high,
                              "n_test": res.n_test, "baseline": res.baseline,
                              "control": [res.random_features] * len(res.layers), "kind": t.kind}
            layers = res.layers
    if curves:
        run.sections.append(S.probes_section(layers, curves))


def _bigram_shift(run: _Run, n_items: int) -> list[_ProbeTask]:
    """The syntax probe reads perturbed sentences, so it is its own (smaller) pass."""
    from layerscope.analyses import probe as prb
    from layerscope.analyses.probe_tasks import make_task
    from layerscope.sweep import sweep

    ds = run.dataset
    if not (isinstance(ds.items, list) and all(isinstance(t, str) for t in ds.items[:50])):
        return []
    task = make_task("bigram-shift", ds.subset(range(min(n_items, len(ds)))), seed=run.seed)
    red = prb.reducers(task, seed=run.seed)
    sweep(run.loaded, task, reducers=red, layers=run.chosen, batch_size=run.batch_size,
          max_length=run.max_length, progress=run.stages.progress)
    return [_ProbeTask("bigram shift", "syntax", red[0], task)]


def _pictures(run: _Run, sample) -> None:
    """PCA and t-SNE of the first, middle and last layer, coloured by label."""
    from layerscope.analyses.pictures import dominant_dimensions, outlier_note, project

    names = [n for n in run.layers if n in sample.rows]
    if not names or len(sample.indices) < 10:
        return
    chosen = list(dict.fromkeys([names[0], names[len(names) // 2], names[-1]]))
    ds = run.dataset
    labels, continuous = _label_texts(ds, sample.indices)
    hover = _hover_texts(ds, sample.indices)
    views, coords, outliers = [], {}, {}
    from layerscope.progress import track

    for name in track(chosen, desc="PCA and t-SNE", unit="layer", enabled=run.stages.progress):
        x = np.nan_to_num(np.asarray(sample.rows[name], dtype=np.float64).reshape(len(sample.indices), -1))
        pca, ratios = project(x, "pca", seed=run.seed)
        tsne, _ = project(x, "tsne", seed=run.seed)
        explained = float(sum(ratios))
        dims = dominant_dimensions(x)
        if dims:
            outliers[name] = [[d, share] for d, share in dims]
            why = S._sentence(outlier_note(name, dims, explained))[:-1]
        else:
            why = (f"The first two principal components of {name} explain "
                   f"{100 * explained:.0f}% of its variance")
        views.append({"layer": name, "method": "pca", "points": pca.tolist(), "labels": labels,
                      "hover": hover, "continuous": continuous,
                      "reading": f"{why} over {len(x)} items; "
                                 f"{_separation(pca, labels, continuous)}."})
        views.append({"layer": name, "method": "tsne", "points": tsne.tolist(), "labels": labels,
                      "hover": hover, "continuous": continuous,
                      "reading": f"t-SNE of {name}: {_separation(tsne, labels, continuous)}."})
        coords[name] = {"pca": pca.tolist(), "tsne": tsne.tolist(), "pca_explained": explained}
    run.results["pictures"] = {"indices": list(sample.indices), "layers": coords,
                               "outlier_dimensions": outliers}
    images = _feature_maps(run)
    sec = S.pictures_section(views, label_name="label", images=images)
    for name, dims in outliers.items():
        sec.findings.insert(0, S._sentence(outlier_note(name, [tuple(d) for d in dims])))
    run.sections.append(sec)


def _label_texts(ds, indices):
    if ds.labels is None or ds.labels.dim() != 1:
        return ["item"] * len(indices), False
    lab = ds.labels[torch.as_tensor(indices)]
    if ds.classes is not None or not lab.is_floating_point():
        names = ds.classes
        return [names[int(v)] if names else str(int(v)) for v in lab], False
    return [float(v) for v in lab], True


def _hover_texts(ds, indices):
    if isinstance(ds.items, list):
        return [str(ds.items[i])[:120] for i in indices]
    return [f"item {i}" for i in indices]


def _separation(points: np.ndarray, labels, continuous: bool) -> str:
    """One sentence on how well labels separate in a 2-D map, from its own numbers."""
    n = len(points)
    if n < 10:
        return f"{n} items"
    from sklearn.neighbors import NearestNeighbors

    k = min(10, n - 1)
    idx = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points, return_distance=False)[:, 1:]
    if continuous:
        y = np.asarray(labels, dtype=float)
        neigh = y[idx].mean(1)
        r = float(np.corrcoef(neigh, y)[0, 1]) if y.std() > 0 else float("nan")
        return (f"an item's label correlates with its {k} nearest neighbours' mean label at "
                f"r = {r:.2f} over {n} items")
    y = np.asarray([str(v) for v in labels])
    if len(set(y)) < 2:
        return f"{n} items with one label"
    agree = float((y[idx] == y[:, None]).mean())
    _, counts = np.unique(y, return_counts=True)
    chance = float(((counts / n) ** 2).sum())
    return (f"{100 * agree:.0f}% of each item's {k} nearest neighbours share its label "
            f"(chance {100 * chance:.0f}%) over {n} items")


def _feature_maps(run: _Run) -> list[dict]:
    """Feature maps of the first block with (C, H, W) outputs, on the first image."""
    if run.loaded.modality != "image" or not torch.is_tensor(run.dataset.items):
        return []
    import io

    import matplotlib.pyplot as plt

    from layerscope.analyses.pictures import feature_maps

    fm = None
    for name in run.layers:
        try:
            fm = feature_maps(run.loaded, run.dataset.items[0], name, granularity="blocks", max_channels=8)
            break
        except LayerscopeError:
            continue
    if fm is None:
        return []
    run.results["feature_maps"] = {"layer": fm.layer, "channels": fm.channels}
    fig = fm.plot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return [{"title": f"Feature maps of {fm.layer} on the first image", "png": buf.getvalue(),
             "reading": fm.summary() + "."}]


def _importance(run: _Run, n_items: int, curve: bool) -> None:
    from layerscope.analyses.importance import layer_importance, removal_curve

    sub = run.dataset.subset(range(min(n_items, len(run.dataset))))
    res = layer_importance(run.loaded, sub, batch_size=min(run.batch_size, 16),
                           max_length=run.max_length, progress=run.stages.progress)
    run.results["importance"] = res
    higher_is_worse = res.objective not in ("accuracy",)
    curve_vals, curve_x = None, None
    if curve:
        rc = removal_curve(run.loaded, sub, max_k=max(1, min(8, len(res.layers) // 3)),
                           batch_size=min(run.batch_size, 16), max_length=run.max_length,
                           importance=res, progress=run.stages.progress)
        run.results["removal_curve"] = rc
        curve_vals, curve_x = rc.curves, rc.ks
    shown = _shown(run, res.layers)
    run.sections.append(S.importance_section([res.layers[i] for i in shown],
                                             [res.metric[i] for i in shown], res.objective,
                                             baseline=res.baseline,
                                             block_influence=[res.block_influence[i] for i in shown],
                                             curve=curve_vals, curve_x=curve_x,
                                             higher_is_worse=higher_is_worse))


def _lens(run: _Run, n_items: int) -> None:
    from layerscope.analyses.lens import logit_lens

    sub = run.dataset.subset(range(min(n_items, len(run.dataset))))
    prompt = "The capital of France is" if run.loaded.tokenizer is not None else None
    res = logit_lens(run.loaded, sub, prompt=prompt, batch_size=min(run.batch_size, 8),
                     max_length=run.max_length, progress=run.stages.progress)
    run.results["lens"] = res
    top = [[k[0] if k else "" for k in layer] for layer in res.top_tokens] if res.top_tokens else None
    shown = _shown(run, res.layers)
    top = [top[i] for i in shown] if top else None
    run.sections.append(S.lens_section([res.layers[i] for i in shown],
                                       kl=[res.kl[i] for i in shown],
                                       accuracy=[res.accuracy[i] for i in shown],
                                       prompt=res.prompt, top_tokens=top,
                                       prompt_tokens=res.prompt_tokens))


def _shown(run: _Run, names: list[str]) -> list[int]:
    """Indices of ``names`` a section shows: the blocks of the main pass under ``--layers`` (the
    removal and lens passes measure every block, which their angles and KL curves need), else all."""
    if run.chosen is None:
        return list(range(len(names)))
    kept = set(run.layers)
    return [i for i, n in enumerate(names) if n in kept]


def _chosen_note(run: _Run, n_blocks: int) -> str:
    return (f"Only the {len(run.layers)} of {n_blocks} blocks chosen with --layers "
            f"{run.chosen!r} are shown ({', '.join(run.layers)}).")


def _causal_pairs(loaded, causal) -> list:
    """The prompt pairs of ``--causal`` (a .tsv file or PromptPairs), checked before any long work."""
    from layerscope.analyses.causal.patching import PromptPair, check_pairs, read_pairs

    if loaded.task != "causal-lm":
        raise LayerscopeError(f"--causal patches next-token predictions; model {loaded.ref!r} is a "
                              f"{loaded.task} model, not a causal language model: leave out --causal")
    pairs = read_pairs(causal) if isinstance(causal, (str, Path)) else list(causal)
    if not all(isinstance(p, PromptPair) for p in pairs):
        raise LayerscopeError("causal must be a .tsv file of prompt pairs or a list of PromptPair")
    check_pairs(loaded, pairs)
    return pairs


def _causal(run: _Run, pairs: list) -> None:
    """Activation patching of every block's output at every position, averaged over the pairs."""
    from layerscope.analyses.causal.patching import patch

    res = patch(run.loaded, pairs=pairs, part="block", blocks=run.loaded.meta.get("blocks"),
                batch_size=run.batch_size)
    run.results["causal"] = res
    run.sections.append(S.causal_section(res.labels, res.tokens, res.restored, metric=res.metric,
                                         metric_clean=res.metric_clean,
                                         metric_corrupt=res.metric_corrupt, pairs=res.pairs,
                                         direction=res.direction))


def _training(run: _Run) -> None:
    """What `layerscope train` recorded next to the checkpoint, when there is a run folder:
    gradient flow per layer (metrics.jsonl) and the run's flags of every kind (result.json)."""
    path = run.loaded.meta.get("path")
    if not path:
        return
    folder = Path(path)
    run_dir = next((p for p in (folder, folder.parent)
                    if (p / "metrics.jsonl").is_file() or (p / "result.json").is_file()), None)
    if run_dir is None:
        return
    from layerscope.train.monitors import read_metrics

    metrics = run_dir / "metrics.jsonl"
    rows = read_metrics(metrics) if metrics.is_file() else []
    grad: dict[str, dict[int, float]] = {}
    for r in rows:
        if r.get("kind") == "block" and r.get("grad_norm") is not None:
            grad.setdefault(r["layer"], {})[r["step"]] = r["grad_norm"]
    steps = sorted({step for by_step in grad.values() for step in by_step})
    raw_flags = _run_flags(run_dir / "result.json")
    if not steps and not raw_flags:
        return
    loss_at = {r["step"]: r["loss"] for r in rows if r.get("kind") == "loss"}
    grad_norm = {name: [by_step.get(s) for s in steps] for name, by_step in grad.items()}
    loss = [loss_at.get(s) for s in steps] if loss_at and steps else None
    flags = [flag_sentence(f) for f in raw_flags]
    run.results["training"] = {"metrics": str(metrics) if rows else None, "steps": steps,
                               "grad_norm": grad_norm, "loss": loss, "flags": raw_flags}
    run.sections.append(S.training_section(steps, grad_norm, loss=loss, flags=flags))


def _run_flags(result_file: Path) -> list[dict]:
    """The flags a training run wrote to its result.json (none when the file is absent or unreadable)."""
    if not result_file.is_file():
        return []
    try:
        flags = json.loads(result_file.read_text()).get("flags", [])
    except (ValueError, AttributeError):
        return []
    return [f for f in flags if isinstance(f, dict) and f.get("kind")] if isinstance(flags, list) else []


#: how the report words each kind of training flag when the flag carries no message of its own
FLAG_WORDS = {
    "vanishing": "a vanishing gradient", "exploding": "an exploding gradient or update",
    "dead-units": "dead units", "stuck-at-chance": "accuracy stuck at chance",
    "overfitting": "overfitting", "divergence": "divergence",
}


def flag_sentence(flag: dict) -> str:
    """One sentence for a training flag of any kind (see :mod:`layerscope.train.diagnose`).

    Example:
        >>> flag_sentence({"kind": "dead-units", "layer": "blocks.0.act", "step": 40,
        ...                "message": "dead units in ReLU 'blocks.0.act' from step 40: 75% of its units"})
        "Training flagged dead units in ReLU 'blocks.0.act' from step 40: 75% of its units."
        >>> flag_sentence({"kind": "stuck-at-chance", "layer": "(model)", "step": 60})
        'Training flagged accuracy stuck at chance in the whole model from step 60.'
    """
    message = flag.get("message")
    if message:
        return S._sentence(f"Training flagged {message}")
    kind = str(flag.get("kind"))
    layer = flag.get("layer")
    where = "the whole model" if layer in (None, "(model)") else str(layer)
    step = f" from step {flag['step']}" if flag.get("step") is not None else ""
    return S._sentence(f"Training flagged {FLAG_WORDS.get(kind, kind)} in {where}{step}")


# --- writing ----------------------------------------------------------------------------------


def _headline(sections) -> list[str]:
    """The first finding of each section; every probe task's, since they answer one question together."""
    out = []
    for sec in sections:
        out.extend(sec.findings if sec.id == "probes" else sec.findings[:1])
    return out


def _write_figures(out: Path, page: Page) -> list[str]:
    written = []
    for sec in page.sections:
        for fig in sec.figures:
            name = f"{sec.id}-{fig.id}.png"
            if fig.chart is not None:
                data = chart_png(fig.chart, fig.title)
            elif fig.image_png is not None:
                data = fig.image_png
            else:
                continue
            write_atomic(out / "figures" / name, data)
            written.append(f"figures/{name}")
    return written


def build_report(model="minilm", data=None, out_dir="layerscope-report", *, limit: int | str | None = None,
                 batch_size: int = 32, max_length: int | None = 128, seed: int = 0,
                 input_shape=None, blocks: str | None = None, trust_remote_code: bool = False,
                 importance_items: int | None = None, progress: bool = True,
                 force: bool = False, allow_missing_weights: bool = False,
                 causal=None, layers: str | None = None) -> ReportResult:
    """Analyse ``model`` on ``data`` and write ``out_dir/index.html``, ``results.json`` and PNGs.

    ``model``: a reference (see ``layerscope models``), an ``nn.Module`` or a LoadedModel.
    ``data``: a dataset name or file, a :class:`~layerscope.data.Dataset`, or ``None`` for the
    built-in data that suits the model. ``limit`` caps the items of the main pass (a number or
    ``"all"``; default 2,000, a seeded random subset; 500 for models above 50M parameters; a
    Dataset object is used whole unless ``limit`` is given); ``importance_items`` caps the
    removal and lens passes (default 256; 64 for large models). ``causal`` (causal LMs): a .tsv
    of prompt pairs (``clean<TAB>corrupt<TAB>target[<TAB>foil]``, see
    :func:`~layerscope.analyses.causal.patching.read_pairs`) or a list of PromptPairs; adds the
    section "What each layer does" (activation patching of every block × position).
    ``layers`` (``--layers``: "0,8,16", "0-3", names): the blocks the per-layer sections measure
    and show (statistics, probes, similarity, pictures; removal and lens measure every block and
    show these); each such section says so. The anatomy, patching and training sections stay whole.

    Example:
        >>> import tempfile, torch
        >>> from layerscope.data import Dataset
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> ds = Dataset("toy", torch.randn(40, 4), torch.randint(0, 2, (40,)), "tensor", "classification")
        >>> build_report(net, ds, tempfile.mkdtemp(), progress=False, input_shape=(4,)).n_items
        40
    """
    from layerscope.models import load_model

    from layerscope.cli.limits import parse_limit

    if (parse_limit(limit, None) or 4) < 4:
        raise LayerscopeError(f"--limit must be at least 4 (similarity needs n > 3); got {limit}")
    if batch_size < 1:
        raise LayerscopeError(f"--batch-size must be at least 1; got {batch_size}")
    if importance_items is not None and importance_items < 2:
        raise LayerscopeError(f"--importance-items must be at least 2; got {importance_items}")
    check_out_dir(out_dir, force=force)
    t0 = time.perf_counter()
    stages = Stages(progress)
    with stages.stage("load", str(model) if isinstance(model, str) else type(model).__name__):
        loaded = load_model(model, input_shape=input_shape, trust_remote_code=trust_remote_code,
                            allow_missing_weights=allow_missing_weights)
        if blocks:
            loaded.meta["blocks"] = blocks
        main_items, removal_items = default_amounts(loaded)
        importance_items = removal_items if importance_items is None else importance_items
        dataset, data_name = _load_data(data if data is not None else default_data(loaded), limit,
                                        seed, main_items, progress)
        _check_fits(loaded, dataset, max_length)
        if layers is not None:   # a bad --layers fails here, before any long work
            from layerscope.layers import Layers

            every = Layers(loaded, granularity="blocks", blocks=blocks)
            every.select(layers)
        pairs = _causal_pairs(loaded, causal) if causal is not None else None
        # load, anatomy, main pass, bigram shift, probe fits, removal, (lens), (patching), training, write
        stages.total = (9 if loaded.task == "causal-lm" else 8) + (pairs is not None)
    out = prepare_out_dir(out_dir, force=force)
    run = _Run(loaded, dataset, data_name, stages, batch_size, max_length, seed, chosen=layers)
    with stages.optional("anatomy"):
        _anatomy(run)
    with stages.stage("main pass", f"{len(dataset):,} items of {data_name}"):
        _main_pass(run)
    texts = isinstance(dataset.items, list)
    with stages.optional("bigram-shift probe", f"{min(BIGRAM_ITEMS, len(dataset)):,} perturbed items"
                         if texts else "(text only; skipped)"):
        run.probes += _bigram_shift(run, BIGRAM_ITEMS)
    with stages.stage("probe fits", f"{len(run.probes)} tasks × {len(run.layers)} layers"):
        _probe_results(run, run.probes)
    is_lm = loaded.task == "causal-lm"
    with stages.optional("layer removal", f"{min(importance_items, len(dataset))} items"):
        _importance(run, importance_items, curve=is_lm)
    if is_lm:
        with stages.optional("logit lens"):
            _lens(run, importance_items)
    if pairs is not None:
        with stages.optional("activation patching", f"{len(pairs)} prompt pair(s) × "
                             f"every block × position"):
            _causal(run, pairs)
    with stages.optional("training history"):
        _training(run)

    with stages.stage("write", str(out)):
        order = ["anatomy", "probes", "similarity", "importance", "causal", "activations", "pictures",
                 "lens", "training"]
        secs = sorted(run.sections, key=lambda s: order.index(s.id) if s.id in order else len(order))
        facts = [("model", loaded.ref), ("family", loaded.family), ("data", data_name),
                 ("items", f"{len(dataset):,}"), ("layers swept", str(len(run.layers)))]
        if run.chosen is not None:
            note = _chosen_note(run, len(every))
            facts.append(("layers", note))
            for sec in secs:
                if sec.id in ("probes", "similarity", "importance", "activations", "pictures",
                              "lens"):
                    sec.note = note
        if stages.skipped:
            facts.append(("left out", "; ".join(f"{k}: {v}" for k, v in stages.skipped.items())))
        page = Page(title=f"layerscope report: {loaded.ref}", facts=facts, headline=_headline(secs),
                    sections=secs, generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"))
        figures = _write_figures(out, page)
        record_report_files(out, [*figures, "results.json", "index.html"])
        seconds = time.perf_counter() - t0
        payload = {"format": FORMAT, "version": 1, "model": loaded.ref, "data": data_name,
                   "n_items": len(dataset), "layers": run.layers, "chosen_layers": run.chosen,
                   "figures": figures,
                   "stages": stages.seconds, "skipped": stages.skipped,
                   "findings": {s.id: s.findings for s in secs},
                   "results": run.results}
        write_atomic(out / "results.json", json.dumps(to_plain(payload), indent=1))
        write_atomic(out / "index.html", render_html(page))
    return ReportResult(model=loaded.ref, data=data_name, out_dir=str(out), index=str(out / "index.html"),
                        n_items=len(dataset), seconds=time.perf_counter() - t0, stages=dict(stages.seconds),
                        sections=[s.id for s in secs], skipped=dict(stages.skipped),
                        findings=_headline(secs))


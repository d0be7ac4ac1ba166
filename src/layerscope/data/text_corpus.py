"""Built-in text: the 23,703 human-scored sentences of the VADER study, shipped inside the
package (``files/sentences.tsv.gz``, MIT licence), and a character-level language-modelling
corpus made from them.

Example:
    >>> from layerscope.data.text_corpus import sentences, char_corpus
    >>> ds = sentences()
    >>> len(ds), ds.task, -4 <= float(ds.labels.min()) <= float(ds.labels.max()) <= 4
    (23703, 'regression', True)
    >>> lm = char_corpus(seq_len=16)
    >>> tuple(lm.items.shape[1:]), bool((lm.items[:, 1:] == lm.labels[:, :-1]).all())
    ((16,), True)
"""

from __future__ import annotations

import csv
import gzip
import io
import unicodedata
from functools import lru_cache
from importlib import resources

import torch

from layerscope.errors import LayerscopeError

from .dataset import Dataset, positive_int

SENTENCES_FILE = "sentences.tsv.gz"
SOURCES = {"movie": "movie-review snippets", "tweet": "tweets",
           "nyt": "New York Times editorial snippets", "amazon": "Amazon review snippets"}
CITATION = ("Hutto, C.J. & Gilbert, E.E. (2014). VADER: A Parsimonious Rule-based Model for "
            "Sentiment Analysis of Social Media Text. Eighth International Conference on "
            "Weblogs and Social Media (ICWSM-14), Ann Arbor, MI.")
SOURCE = "vaderSentiment 3.3.2 sdist, shipped in layerscope"
SOURCE_DETAIL = ("additional_resources/hutto_ICWSM_2014.tar.gz (*_GroundTruth.txt) of the "
                 "vaderSentiment 3.3.2 sdist, shipped as layerscope/data/files/sentences.tsv.gz")
LICENCE = "MIT"
LICENCE_DETAIL = "Copyright (c) 2016 C.J. Hutto; see layerscope/data/files/LICENSES.txt"
#: the 95 printable ASCII characters plus newline: token id = code point, 128 ids in all
ASCII_VOCAB = [chr(i) for i in range(128)]


@lru_cache(maxsize=1)
def _rows() -> tuple[tuple[str, str, float, str], ...]:
    raw = resources.files("layerscope.data").joinpath("files", SENTENCES_FILE).read_bytes()
    reader = csv.DictReader(io.StringIO(gzip.decompress(raw).decode("utf-8")), delimiter="\t",
                            quoting=csv.QUOTE_NONE)
    return tuple((r["source"], r["id"], float(r["score"]), r["text"]) for r in reader)


def sentences(source: str | None = None) -> Dataset:
    """The sentences with their mean human sentiment score (float32, -4 to 4); ``source`` keeps
    one of movie, tweet, nyt, amazon."""
    rows = _rows()
    if source is not None:
        if source not in SOURCES:
            raise LayerscopeError(f"unknown source {source!r}; use one of: {', '.join(SOURCES)}")
        rows = tuple(r for r in rows if r[0] == source)
    counts = {k: sum(1 for r in rows if r[0] == k) for k in SOURCES}
    meta = {
        "description": "English sentences, each with the mean sentiment score of about 20 human "
                       "raters on a scale from -4 (most negative) to 4 (most positive): "
                       + ", ".join(f"{counts[k]:,} {SOURCES[k]}" for k in SOURCES if counts[k]),
        "source": SOURCE, "source_detail": SOURCE_DETAIL, "licence": LICENCE,
        "licence_detail": LICENCE_DETAIL, "citation": CITATION, "size": len(rows),
    }
    return Dataset("sentences", [r[3] for r in rows],
                   torch.tensor([r[2] for r in rows], dtype=torch.float32),
                   modality="text", task="regression", meta=meta)


def to_ascii(text: str) -> str:
    """Accents dropped (é -> e); other characters outside ASCII become '?'."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c if ord(c) < 128 else ("" if unicodedata.combining(c) else "?")
                   for c in decomposed)


def char_corpus(seq_len: int = 64) -> Dataset:
    """The sentences joined by newlines as ASCII character ids, cut into non-overlapping windows:
    items int64 ``(N, seq_len)``, labels the next character at each position ``(N, seq_len)``."""
    seq_len = positive_int("seq_len", seq_len, "a number of characters, e.g. 64")
    text = "\n".join(to_ascii(r[3]) for r in _rows()) + "\n"
    ids = torch.tensor(list(text.encode("ascii")), dtype=torch.int64)
    n = (len(ids) - 1) // seq_len
    if n < 1:
        raise LayerscopeError(f"seq_len={seq_len} is longer than the corpus; use a smaller one")
    items = ids[: n * seq_len].reshape(n, seq_len)
    labels = ids[1: n * seq_len + 1].reshape(n, seq_len)
    meta = {
        "description": f"character-level language modelling: the sentences as {len(ids):,} ASCII "
                       f"characters (accents dropped), {n:,} windows of {seq_len}; the label at "
                       "each position is the next character; token id = ASCII code (128 ids)",
        "source": SOURCE, "source_detail": SOURCE_DETAIL, "licence": LICENCE,
        "licence_detail": LICENCE_DETAIL, "citation": CITATION, "size": n,
        "vocab": list(ASCII_VOCAB), "seq_len": seq_len, "characters": len(ids),
    }
    return Dataset("text", items, labels, modality="sequence", task="language-modeling",
                   meta=meta)

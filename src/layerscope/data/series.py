"""Built-in real-valued time series for the sequence networks, cut into windows.

Three public-domain series ship with the package (copied from statsmodels' data sets, see
``files/LICENSES.txt``): yearly sunspot activity 1700-2008 (``sunspots``, 309 values), weekly
Mauna Loa CO2 1958-2001 (``co2``, 2,284 weeks; the 59 missing weeks are filled by linear
interpolation) and the yearly Nile flow 1871-1970 (``nile``, 100 values).

A window of ``seq_len`` values is one item ``(seq_len, 1)``; its label is the value that follows.
Values are standardised with the mean and standard deviation of the first 80 % of the series
(the part a default ``split`` trains on), recorded in ``meta``. Windows stay in time order and
``split`` holds out the last ones, leaving out the windows that would overlap the held-out part.

Example:
    >>> from layerscope.data.series import timeseries
    >>> ds = timeseries("sunspots", seq_len=10)
    >>> len(ds), tuple(ds.items.shape[1:]), ds.meta["values"]
    (299, (10, 1), 309)
    >>> bool((ds.items[1, -1, 0] == ds.labels[0]))
    True
"""

from __future__ import annotations

import csv
import io
from importlib import resources

import numpy as np
import torch

from layerscope.errors import LayerscopeError

from .dataset import Dataset, positive_int

SERIES = {
    "sunspots": ("sunspots.csv", "SUNACTIVITY", "yearly sunspot activity 1700-2008",
                 "National Geophysical Data Center (NOAA), via statsmodels.datasets.sunspots",
                 None),
    "co2": ("co2.csv", "co2", "weekly atmospheric CO2 (ppmv) at Mauna Loa, March 1958 - "
            "December 2001, missing weeks linearly interpolated",
            "Scripps / CDIAC, via statsmodels.datasets.co2",
            "Keeling, C.D. & Whorf, T.P. (2004). Atmospheric CO2 concentrations derived from "
            "flask air samples at sites in the SIO network. Trends: A Compendium of Data on "
            "Global Change. CDIAC, Oak Ridge National Laboratory."),
    "nile": ("nile.csv", "volume", "yearly flow of the Nile at Aswan 1871-1970 (10^8 m^3)",
             "via statsmodels.datasets.nile",
             "Cobb, G.W. (1978). The Problem of the Nile: Conditional Solution to a Changepoint "
             "Problem. Biometrika 65(2), 243-251."),
}
TRAIN_PART = 0.8


def series_values(name: str) -> np.ndarray:
    """The raw values of a shipped series (float64), gaps filled by linear interpolation."""
    if name not in SERIES:
        raise LayerscopeError(f"unknown series {name!r}; use one of: {', '.join(SERIES)}")
    file, column = SERIES[name][:2]
    text = resources.files("layerscope.data").joinpath("files", file).read_text("utf-8")
    cells = [row[column] for row in csv.DictReader(io.StringIO(text))]
    values = np.array([float(c) if c.strip() else np.nan for c in cells])
    gaps = np.isnan(values)
    if gaps.any():
        positions = np.arange(len(values))
        values[gaps] = np.interp(positions[gaps], positions[~gaps], values[~gaps])
    return values


def timeseries(series: str = "sunspots", seq_len: int = 32) -> Dataset:
    """Windows of ``seq_len`` standardised values ``(N, seq_len, 1)`` float32 and the next value
    ``(N,)`` float32, in time order."""
    seq_len = positive_int("seq_len", seq_len, "a number of steps, e.g. 32")
    raw = series_values(series)
    if len(raw) <= seq_len + 1:
        raise LayerscopeError(f"series {series!r} has {len(raw)} values: too short for windows of "
                              f"{seq_len}; use a smaller seq_len")
    fit = raw[: int(len(raw) * TRAIN_PART)]
    mean, std = float(fit.mean()), float(fit.std())
    z = torch.from_numpy(((raw - mean) / std).astype(np.float32))
    windows = z.unfold(0, seq_len, 1)[:-1]          # (N, seq_len): every window with a next value
    labels = z[seq_len:].clone()
    description, source, citation = SERIES[series][2:]
    meta = {
        "description": f"{description}: {len(windows):,} windows of {seq_len} standardised "
                       "values, label = the next value",
        "source": "statsmodels 0.15 data set, shipped in layerscope", "source_detail": source,
        "licence": "public domain",
        "licence_detail": "marked public domain in statsmodels (BSD-3-Clause); see "
                          "layerscope/data/files/LICENSES.txt",
        "citation": citation, "size": len(windows), "values": len(raw), "series": series,
        "seq_len": seq_len, "window": seq_len, "ordered": True, "mean": mean, "std": std,
    }
    return Dataset(series, windows.unsqueeze(-1).contiguous(), labels, modality="sequence",
                   task="regression", meta=meta)

"""Walk through a two-layer feed-forward network given as plain matrices in a JSON file.

The file holds ``W1`` (d x h), ``b1`` (h), ``W2`` (h x k), ``b2`` (k) and ``x`` (rows = tokens,
n x d) as nested lists. The walk-through computes ``x·W1 + b1``, the activation, and
``·W2 + b2``, with the shape at every step, the parameter count, and how many layers that is and
why. ``seed002`` names the worked example shipped with layerscope.

Example:
    >>> from layerscope.explain.ffn import explain_ffn
    >>> r = explain_ffn("seed002")
    >>> r.params, r.steps[-1].shape, round(r.steps[-1].values[0][0], 6)
    (58, [3, 4], 1.703559)
"""

from __future__ import annotations

import json
import math
from importlib import resources
from numbers import Real
from pathlib import Path

import numpy as np

from layerscope.errors import LayerscopeError

from .steps import ExplainResult, step

KEYS = ("W1", "b1", "W2", "b2", "x")
ACTIVATIONS = ("relu", "gelu")
EXAMPLES = {"seed002": "seed002_ffn.json"}
FORMAT = "an explain file holds W1 (d×h), b1 (h), W2 (h×k), b2 (k) and x (n×d) as nested lists"


def example_path(name: str) -> Path:
    """The path of a shipped example file (``seed002``).

    Example:
        >>> example_path("seed002").name
        'seed002_ffn.json'
    """
    if name not in EXAMPLES:
        raise LayerscopeError(
            f"no shipped example {name!r}; use one of: {', '.join(EXAMPLES)}")
    return Path(str(resources.files("layerscope") / "examples" / EXAMPLES[name]))


def load_ffn(source) -> tuple[dict[str, np.ndarray], str]:
    """The five arrays of an explain file (a path, a shipped name, or a dict), checked; and a label.

    Raises :class:`LayerscopeError` naming the key, row or dimensions that are wrong.
    """
    if isinstance(source, dict):
        data, label = source, "the explain data"
    else:
        text = str(source)
        path = example_path(text) if text in EXAMPLES else Path(text)
        label = text if text in EXAMPLES else str(path)
        if not path.is_file():
            raise LayerscopeError(f"explain file {path} does not exist; {FORMAT} "
                                  f"(or use --example seed002)")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LayerscopeError(f"explain file {path} is not valid JSON ({exc}); {FORMAT}")
    if not isinstance(data, dict):
        raise LayerscopeError(f"{label} must be a JSON object; {FORMAT}")
    missing = [k for k in KEYS if k not in data]
    if missing:
        raise LayerscopeError(f"{label} is missing {', '.join(missing)}; {FORMAT}")
    arrays = {
        "W1": _matrix(data["W1"], "W1"),
        "b1": _vector(data["b1"], "b1"),
        "W2": _matrix(data["W2"], "W2"),
        "b2": _vector(data["b2"], "b2"),
        "x": _matrix(data["x"], "x", allow_vector=True),
    }
    _check_dims(arrays)
    return arrays, label


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise LayerscopeError(f"{where} is {json.dumps(value)}, not a number; write plain numbers")
    if not math.isfinite(float(value)):
        raise LayerscopeError(f"{where} is {value}, not a finite number")
    return float(value)


def _matrix(value, key: str, allow_vector: bool = False) -> np.ndarray:
    if not isinstance(value, list) or not value:
        raise LayerscopeError(f"{key} must be a non-empty list of rows (a nested list)")
    if allow_vector and all(not isinstance(v, list) for v in value):
        value = [value]  # a single token given as a flat list
    rows = []
    for i, row in enumerate(value, 1):
        if not isinstance(row, list) or not row:
            raise LayerscopeError(f"{key} row {i} is not a non-empty list; {key} must be a "
                                  f"nested list of rows")
        rows.append([_number(v, f"{key} row {i} column {j}") for j, v in enumerate(row, 1)])
        if len(rows[-1]) != len(rows[0]):
            raise LayerscopeError(f"{key} row {i} has {len(rows[-1])} entries but row 1 has "
                                  f"{len(rows[0])}; every row of {key} needs the same length")
    return np.array(rows, dtype=np.float64)


def _vector(value, key: str) -> np.ndarray:
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        # a column [[a], [b], ...] or a single row [[a, b, ...]] as written in papers
        if all(len(v) == 1 for v in value):
            value = [v[0] for v in value]
        elif len(value) == 1:
            value = value[0]
        else:
            raise LayerscopeError(f"{key} is a {len(value)}×{len(value[0])} matrix; {key} must be "
                                  f"a vector (a flat list of numbers)")
    if not isinstance(value, list) or not value:
        raise LayerscopeError(f"{key} must be a non-empty flat list of numbers")
    return np.array([_number(v, f"{key} entry {i}") for i, v in enumerate(value, 1)])


def _check_dims(a: dict[str, np.ndarray]) -> None:
    n, d = a["x"].shape
    r1, h = a["W1"].shape
    r2, k = a["W2"].shape
    if r1 != d:
        raise LayerscopeError(f"W1 has {r1} rows but x has {d} columns (input width); "
                              f"W1 must be {d}×h")
    if len(a["b1"]) != h:
        raise LayerscopeError(f"b1 has {len(a['b1'])} entries but W1 has {h} columns (hidden "
                              f"width); b1 must have {h}")
    if r2 != h:
        raise LayerscopeError(f"W2 has {r2} rows but W1 has {h} columns (hidden width); "
                              f"W2 must be {h}×k")
    if len(a["b2"]) != k:
        raise LayerscopeError(f"b2 has {len(a['b2'])} entries but W2 has {k} columns (output "
                              f"width); b2 must have {k}")


def _activate(z: np.ndarray, activation: str) -> tuple[np.ndarray, str]:
    if activation == "relu":
        return np.maximum(z, 0.0), "max(0, z), element by element"
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * z * (1.0 + erf(z / math.sqrt(2.0))), "z·Φ(z) = ½·z·(1 + erf(z/√2)), exact GELU"


def _dims(shape) -> str:
    return "×".join(str(s) for s in shape)


def explain_ffn(source, activation: str = "relu", *, compare: bool = True) -> ExplainResult:
    """Walk ``x·W1 + b1 → activation → ·W2 + b2`` on the matrices of an explain file.

    ``source`` is a file path, a shipped example name (``seed002``) or a dict with the five keys.
    The result carries the matrices (``parameters``), ``notes`` on what the numbers show (e.g.
    why every hidden unit coincides), and then, with ``compare``, ``compare``: the same network
    on the input shifted by 1, whose rows no longer sum to zero.

    Example:
        >>> r = explain_ffn("seed002")
        >>> r.params, list(r.parameters), r.compare is not None
        (58, ['W1', 'b1', 'W2', 'b2'], True)
    """
    if activation not in ACTIVATIONS:
        raise LayerscopeError(
            f"unknown activation {activation!r}; use one of: {', '.join(ACTIVATIONS)}")
    a, label = load_ffn(source)
    x, w1, b1, w2, b2 = a["x"], a["W1"], a["b1"], a["W2"], a["b2"]
    n, d = x.shape
    h, k = w1.shape[1], w2.shape[1]
    z1 = x @ w1 + b1
    h1, act_formula = _activate(z1, activation)
    y = h1 @ w2 + b2
    steps = [
        step("x", f"input, one row per token ({n} tokens of width {d})", x),
        step("x·W1", f"({_dims(x.shape)})·({_dims(w1.shape)}) = {_dims(z1.shape)}", x @ w1),
        step("x·W1 + b1", f"add b1 ({h}) to every row", z1),
        step(activation, act_formula, h1),
        step("·W2", f"({_dims(h1.shape)})·({_dims(w2.shape)}) = {_dims(y.shape)}", h1 @ w2),
        step("·W2 + b2", f"add b2 ({k}) to every row: the output", y),
    ]
    params = w1.size + b1.size + w2.size + b2.size
    note = (f"2 layers: one hidden layer (W1, b1 and {activation}) of width {h}, and one output "
            f"layer (W2, b2) of width {k}; a layer is one weight matrix with its bias (and "
            f"activation) applied to every token at once. The input x (width {d}) is not a "
            f"layer: it has no weights. Parameters: {d}×{h} + {h} + {h}×{k} + {k} = {params}.")
    result = ExplainResult(
        title=f"feed-forward network {d} → {h} → {k} ({activation})", layer_kind="ffn", layer="ffn",
        steps=steps, params=int(params), layers_note=note, inputs=label,
        tensors={"x": x, "z1": z1, "h": h1, "y": y},
        parameters={"W1": w1.tolist(), "b1": b1.tolist(), "W2": w2.tolist(), "b2": b2.tolist()},
        notes=coincidence_notes(x, w1, b1))
    if result.notes and compare:
        shifted = x + 1.0
        result.compare = explain_ffn({"W1": w1.tolist(), "b1": b1.tolist(), "W2": w2.tolist(),
                                      "b2": b2.tolist(), "x": shifted.tolist()},
                                     activation=activation, compare=False)
        result.compare.inputs = (f"the same tokens plus 1 in every entry (rows now sum to "
                                 f"{', '.join(f'{v:.3g}' for v in shifted.sum(1))}, not 0)")
        z = result.compare.tensors["z1"]
        result.compare.notes = [
            f"with rows that do not sum to zero the hidden units differ: token 1's pre-activations "
            f"x·W1 + b1 range from {z[0].min():.4f} to {z[0].max():.4f} across the {h} units "
            f"(the degenerate input: {z1[0].min():.4f} to {z1[0].max():.4f})"]
    return result


def coincidence_notes(x: np.ndarray, w1: np.ndarray, b1: np.ndarray, tol: float = 1e-9) -> list[str]:
    """Say when every hidden unit gets the same x·W1 (so only b1 tells them apart), and why.

    The usual cause: the rows of x sum to zero (as layer norm's output without its affine part
    does: LN(x) = (x − mean)/std) and the columns of W1 differ by constants, W1[:, j] = W1[:, 0]
    + c_j, so x·W1[:, j] = x·W1[:, 0] + c_j·Σx = x·W1[:, 0] for every j.

    Example:
        >>> x = np.array([[-1.0, 0.0, 1.0]]); w1 = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
        >>> notes = coincidence_notes(x, w1, np.zeros(2))
        >>> notes[0].startswith("every hidden unit gets the same x·W1"), notes[1].startswith("why")
        (True, True)
    """
    z = x @ w1
    if w1.shape[1] < 2:
        return []
    scale = max(float(np.abs(z).max()), 1.0)
    spread = float((z.max(1) - z.min(1)).max())
    if spread > tol * scale * 1e3:
        return []
    values = ", ".join(f"{v:.4f}" for v in z[:, 0][:6])
    notes = [f"every hidden unit gets the same x·W1 on every token (x·W1 = {values} "
             f"for the {len(z)} tokens, in all {w1.shape[1]} columns), so after adding b1 the "
             f"units differ only by b1 (from {b1.min():.3g} to {b1.max():.3g})"]
    diffs = w1 - w1[:, [0]]
    row_sums = x.sum(1)
    constant_cols = np.allclose(diffs, diffs[[0], :], atol=1e-9 * max(float(np.abs(w1).max()), 1.0))
    zero_rows = np.allclose(row_sums, 0.0, atol=1e-6 * max(float(np.abs(x).max()), 1.0))
    if constant_cols and zero_rows:
        steps = ", ".join(f"{v:.3g}" for v in diffs[0, 1:6])
        notes.append(
            f"why: each row of x sums to zero (x is layer-normalised: LN(x) = (x − mean)/std has "
            f"mean 0; row sums {', '.join(f'{v:.1e}' for v in row_sums)}), and W1's columns differ "
            f"by a constant (W1[:, j] − W1[:, 0] = {steps}{', ...' if w1.shape[1] > 6 else ''} "
            f"in every row), so x·W1[:, j] = x·W1[:, 0] + c_j·Σx = x·W1[:, 0] for every j")
        notes.append("a layer-norm gain/bias, an input whose rows do not sum to zero, or W1 "
                     "columns that are not shifted copies of each other would set the units apart")
    return notes


__all__ = ["explain_ffn", "load_ffn", "example_path", "coincidence_notes", "ACTIVATIONS", "EXAMPLES"]

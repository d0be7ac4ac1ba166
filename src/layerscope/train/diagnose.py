"""Diagnoses of a training run, read from its per-layer metrics and its per-epoch history.

Each flag names a kind, the layer (``"(model)"`` for the whole run), the step where the
problem starts, the figures behind it and a one-line ``message``:

* ``vanishing`` – a layer's gradient norm is at least ``ratio`` (1,000) times smaller than that
  of a layer after it (closer to the loss) or than the median of the layers, on ``SUSTAIN``
  monitored steps in a row (all of them when fewer were taken); or (absolute) at most 1e-7 ×
  max(1, weight norm) on any monitored step. Layers are the blocks when the model has at least
  three, otherwise every module with parameters. The flag names the deepest such layer and
  counts the others.
* ``exploding`` – a layer's gradient norm is ``ratio`` times the median of the layers, sustained
  the same way; or one optimizer step moves a layer by more than its own norm (update ratio
  ≥ 1) or its weight norm has grown ``ratio``-fold, sustained; or (absolute) above 1,000 × max(1, weight norm) or non-finite on any step.
  Absolute flags come once per kind (the first layer and step, with the count of layers), and
  only when no relative flag of that kind was raised.
* ``dead-units`` – at least half of a ReLU's units gave 0 for every item of ``SUSTAIN``
  monitored batches in a row.
* ``stuck-at-chance`` – a classifier whose held-out accuracy stayed within two standard errors
  of the better of the majority class share and 1/classes on its last two evaluations or more
  (and at least ``min_steps`` steps in).
* ``overfitting`` / ``divergence`` – the held-out loss rose on two evaluations in a row and
  ended at least 10% above its best; ``overfitting`` when the training loss kept falling,
  ``divergence`` when it rose too (or the held-out loss became non-finite).

Example:
    >>> rows = [{"step": s, "kind": "block", "layer": f"blocks.{i}", "grad_norm": g * 10.0 ** i,
    ...          "weight_norm": 1.0} for s in (0, 10, 20) for i, g in enumerate([1e-5, 1, 1])]
    >>> [(f["kind"], f["layer"], f["step"]) for f in diagnose(rows, [])]
    [('vanishing', 'blocks.0', 0)]
"""

from __future__ import annotations

import math
import statistics

from .monitors import SUSTAIN, depth_kind

RATIO = 1e3            # "orders of magnitude": three
ABS_VANISH, ABS_EXPLODE = 1e-7, 1e3
DEAD_SHARE = 0.5
RISE = 0.10


def diagnose(rows: list[dict], history: list[dict], *, task: str | None = None,
             baseline: dict | None = None, min_steps: int = 50, ratio: float = RATIO) -> list[dict]:
    """Every flag the metrics rows and the epoch history support, ordered by step."""
    flags = gradient_flags(rows, ratio=ratio) + dead_unit_flags(rows)
    if task == "classification" and baseline:
        flags += chance_flags(history, baseline, min_steps=min_steps)
    flags += held_out_flags(history)
    return sorted(flags, key=lambda f: (f["step"], f["kind"], f["layer"]))


# -- gradients ---------------------------------------------------------------------------------
def _by_step(rows: list[dict]) -> dict[int, list[dict]]:
    kind = depth_kind(rows)
    if kind not in {r["kind"] for r in rows}:
        return {}
    steps: dict[int, list[dict]] = {}
    for r in rows:
        if r["kind"] == kind and r.get("grad_norm") is not None:
            steps.setdefault(r["step"], []).append(r)
    return steps


def _relative(layers: list[dict], ratio: float) -> tuple[dict, dict]:
    """At one step: {layer: (g, reference)} for the vanishing and the exploding ones."""
    g = [r["grad_norm"] for r in layers]
    if len(g) < 3 or not all(math.isfinite(x) for x in g):
        return {}, {}
    median = statistics.median(g)
    vanishing, exploding = {}, {}
    later_max = 0.0
    for r, x in reversed(list(zip(layers, g))):     # from the loss side back to the input
        ref = max(median, later_max)
        if ref > 0 and x <= ref / ratio:
            vanishing[r["layer"]] = (x, ref)
        if median > 0 and x >= median * ratio:
            exploding[r["layer"]] = (x, median)
        later_max = max(later_max, x)
    return vanishing, exploding


def _sustained(hits: list[tuple[int, dict]], need: int) -> dict[str, int]:
    """{layer: first step of its first run of ``need`` monitored steps in a row}."""
    run: dict[str, tuple[int, int]] = {}
    found: dict[str, int] = {}
    for step, layers in hits:
        for name in list(run):
            if name not in layers:
                del run[name]
        for name in layers:
            start, count = run.get(name, (step, 0))
            run[name] = (start, count + 1)
            if count + 1 >= need and name not in found:
                found[name] = start
    return found


def gradient_flags(rows: list[dict], *, ratio: float = RATIO) -> list[dict]:
    """Vanishing / exploding gradients, relative to the other layers and absolute."""
    flags = []
    steps = _by_step(rows)
    order = sorted(steps)
    if order:
        need = min(SUSTAIN, len(order))
        per_step = [(s, _relative(steps[s], ratio)) for s in order]
        for kind, pick in (("vanishing", 0), ("exploding", 1)):
            found = _sustained([(s, res[pick]) for s, res in per_step], need)
            if not found:
                continue
            depth = [r["layer"] for r in steps[order[0]]]
            names = sorted(found, key=lambda n: depth.index(n) if n in depth else -1)
            name = names[-1] if kind == "vanishing" else names[0]
            step = found[name]
            g, ref = dict(per_step)[step][pick][name]
            flags.append(_gradient_flag(kind, name, step, g, ref, len(names), need, ratio))
    flags += _update_flags(rows, ratio)
    kinds = {f["kind"] for f in flags}
    first: dict[str, list] = {}
    for r in rows:
        g, w = r.get("grad_norm"), r.get("weight_norm") or 0.0
        if r["kind"] != "module" or g is None:
            continue
        scale = max(1.0, w)
        kind = ("exploding" if not math.isfinite(g) or g > ABS_EXPLODE * scale else
                "vanishing" if g <= ABS_VANISH * scale else None)
        if kind is None or kind in kinds:
            continue
        hit = first.setdefault(kind, [r, set()])
        hit[1].add(r["layer"])
    for kind, (r, layers) in first.items():
        g, w = r["grad_norm"], r.get("weight_norm") or 0.0
        more = f" ({len(layers)} layers in all)" if len(layers) > 1 else ""
        flags.append({"kind": kind, "layer": r["layer"], "step": r["step"], "rule": "absolute",
                      "grad_norm": g, "weight_norm": w, "layers": len(layers),
                      "message": f"{kind} gradient in layer {r['layer']!r} at step {r['step']}"
                                 f"{more}: gradient norm {g:.3g} (weight norm {w:.3g})"})
    return flags


def _update_flags(rows: list[dict], ratio: float = RATIO) -> list[dict]:
    """Steps that move a layer by more than its own size, or weights grown ``ratio``-fold from
    their first monitored norm, ``SUSTAIN`` monitored steps in a row: a learning rate far too
    large (the weights explode even where normalisation keeps the gradients in range)."""
    hits: dict[int, dict] = {}
    first: dict[str, float] = {}
    for r in rows:
        if r["kind"] != "module" or r.get("weight_norm") is None:
            continue
        w0 = first.setdefault(r["layer"], r["weight_norm"])
        u = r.get("update_ratio")
        grown = r["weight_norm"] / w0 if w0 > 0 else 1.0
        if (u is not None and u >= 1.0) or grown >= ratio:
            hits.setdefault(r["step"], {})[r["layer"]] = (u or 0.0, grown)
    steps = sorted({r["step"] for r in rows if r["kind"] == "module"})
    if not steps:
        return []
    need = min(SUSTAIN, len(steps))
    found = _sustained([(s, hits.get(s, {})) for s in steps], need)
    if not found:
        return []
    name = min(found, key=lambda n: (found[n], n))
    step = found[name]
    u, _ = hits[step][name]
    grown = max(hits[s][name][1] for s in hits if name in hits[s])
    return [{"kind": "exploding", "layer": name, "step": step, "rule": "update",
             "update_ratio": u, "weight_growth": grown, "layers": len(found),
             "message": f"exploding updates from step {step} in layer {name!r}"
                        f"{f' ({len(found)} layers in all)' if len(found) > 1 else ''}: one "
                        f"step changed its weights by {u:.3g}x their norm and they grew up to "
                        f"{grown:.3g}x, on {need} monitored steps in a row; lower lr"}]


def _gradient_flag(kind, name, step, g, ref, count, need, ratio) -> dict:
    where = "below" if kind == "vanishing" else "above"
    others = f" ({count} layers in all)" if count > 1 else ""
    times = ref / g if kind == "vanishing" and g > 0 else (g / ref if ref > 0 else math.inf)
    what = ("the strongest layer after it or the median" if kind == "vanishing"
            else "the median of the layers")
    return {"kind": kind, "layer": name, "step": step, "rule": "relative", "grad_norm": g,
            "reference": ref, "factor": times, "layers": count,
            "message": f"{kind} gradient from layer {name!r} at step {step}{others}: gradient "
                       f"norm {g:.3g}, {_times(times)} {where} {what} ({ref:.3g}), on {need} "
                       f"monitored steps in a row (threshold {ratio:.0e}x)"}


def _times(x: float) -> str:
    return "infinitely far" if not math.isfinite(x) else f"{x:.3g}x"


# -- dead units --------------------------------------------------------------------------------
def dead_unit_flags(rows: list[dict]) -> list[dict]:
    """ReLUs with at least half their units silent on ``SUSTAIN`` monitored batches in a row."""
    flags, seen = [], set()
    steps: dict[str, list[int]] = {}
    for r in rows:
        if r["kind"] != "relu":
            continue
        steps.setdefault(r["layer"], []).append(r["step"])
        share = r.get("dead_sustained")
        if share is None or share < DEAD_SHARE or r["layer"] in seen:
            continue
        seen.add(r["layer"])
        start = steps[r["layer"]][-SUSTAIN] if len(steps[r["layer"]]) >= SUSTAIN else r["step"]
        flags.append({"kind": "dead-units", "layer": r["layer"], "step": start,
                      "dead_share": share, "confirmed_at": r["step"],
                      "message": f"dead units in ReLU {r['layer']!r} from step {start}: "
                                 f"{share:.0%} of its units gave 0 for every item of "
                                 f"{SUSTAIN} monitored batches in a row (to step {r['step']})"})
    return flags


# -- the held-out figures ------------------------------------------------------------------------
def chance_baseline(labels, n_classes: int | None = None) -> dict | None:
    """The accuracy of guessing: the majority class share of ``labels`` or 1/classes.

    Example:
        >>> import torch
        >>> chance_baseline(torch.tensor([0, 0, 0, 1]))["accuracy"]
        0.75
    """
    import torch

    if labels is None or len(labels) == 0:
        return None
    labels = torch.as_tensor(labels).reshape(-1).long()
    counts = torch.bincount(labels)
    k = max(int(n_classes or 0), int((counts > 0).sum()))
    majority = float(counts.max()) / len(labels)
    return {"accuracy": max(majority, 1.0 / max(k, 1)), "majority": majority, "classes": k,
            "n": len(labels)}


def chance_flags(history: list[dict], baseline: dict, *, min_steps: int = 50) -> list[dict]:
    """A classifier whose last evaluations (two or more) are all at the guessing baseline."""
    b, n = baseline["accuracy"], baseline["n"]
    bar = b + 2.0 * math.sqrt(b * (1.0 - b) / max(n, 1))
    streak = []
    for row in history:
        acc = row.get("accuracy")
        streak = streak + [row] if acc is not None and acc <= bar else []
    if len(streak) < 2 or not history or history[-1].get("step", 0) < min_steps:
        return []
    first, last = streak[0], streak[-1]
    return [{"kind": "stuck-at-chance", "layer": "(model)", "step": first["step"],
             "accuracy": last["accuracy"], "baseline": b, "bar": bar,
             "message": f"stuck at chance from step {first['step']} (epoch {first['epoch']}): "
                        f"held-out accuracy {last['accuracy']:.4g} after {last['step']} steps, "
                        f"within noise of guessing ({b:.4g}: majority class "
                        f"{baseline['majority']:.3g}, 1/{baseline['classes']} classes; "
                        f"{n} items)"}]


def held_out_flags(history: list[dict]) -> list[dict]:
    """Held-out loss rising on two evaluations in a row, ending 10% above its best."""
    losses = [row.get("eval_loss") for row in history]
    if len(losses) < 3 or any(x is None for x in losses):
        return []
    if not all(math.isfinite(x) for x in losses):
        i = next(i for i, x in enumerate(losses) if not math.isfinite(x))
        return [_loss_flag("divergence", history, i, i, "became non-finite")]
    best = min(range(len(losses)), key=losses.__getitem__)
    last = len(losses) - 1
    if not (losses[last] > losses[last - 1] > losses[last - 2]) or best == last:
        return []
    if losses[last] < losses[best] * (1.0 + RISE):
        return []
    train = [row.get("train_loss") for row in history]
    rising_train = train[last] is not None and train[best] is not None and train[last] > train[best]
    kind = "divergence" if rising_train else "overfitting"
    return [_loss_flag(kind, history, best, last, f"rose from {losses[best]:.4g} to "
                                                  f"{losses[last]:.4g}")]


def _loss_flag(kind, history, start, end, what) -> dict:
    row, last = history[start], history[end]
    train = (f"; training loss {history[start].get('train_loss', math.nan):.4g} -> "
             f"{last.get('train_loss', math.nan):.4g}")
    return {"kind": kind, "layer": "(model)", "step": row["step"], "epoch": row["epoch"],
            "eval_loss": last.get("eval_loss"), "best_eval_loss": row.get("eval_loss"),
            "message": f"{kind}: held-out loss {what} after step {row['step']} (epoch "
                       f"{row['epoch']}) to step {last['step']}{train}"}

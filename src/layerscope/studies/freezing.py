"""Study: does freezing the early layers keep their general features when transferring a
pretrained model to a new task (and save time), while the later layers need adapting?

MiniLM's first ``k`` blocks are frozen (k = 0 .. all), a new linear head on the mean-pooled last
hidden state is trained with the remaining blocks on the bundled sentences' sentiment (sign of the
human score, |score| >= 0.5), and held-out accuracy, trainable parameters and CPU time are
compared over seeds.

Frozen blocks run in eval mode and never change, so their outputs are computed once (recorded
through :func:`layerscope.replay.record_forward`) and the trainable blocks are re-run from the
recorded input of block ``k`` with the recorded call arguments (attention mask) — the feature-
extraction practice of transfer learning. A setting's time is its training CPU time plus the
one-off CPU time of the frozen blocks' forward pass over all items (measured per block).

Example:
    >>> acc = {0: [0.80, 0.81, 0.79], 3: [0.80, 0.805, 0.795], 6: [0.70, 0.71, 0.69]}
    >>> cpu = {0: [10.0, 11.0, 10.5], 3: [5.0, 5.5, 5.2], 6: [1.0, 1.1, 1.0]}
    >>> freezing_verdict(acc, cpu, blocks=6).verdict
    'supported'
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn

from layerscope.errors import LayerscopeError

from .common import (Settings, Verdict, combine, diff_interval, make_result, not_applicable, pm,
                     register, seed_list, threshold_rule)

TOLERANCE = 0.02          # "keeps the general features": at most 2 accuracy points below full tuning
TEST_FRACTION = 0.25
BLOCK_LR, HEAD_LR = 5e-5, 2e-3
MIN_ITEMS = 100
TAKES = "pretrained text encoders such as minilm"


def freezing_verdict(acc: dict[int, list[float]], cpu: dict[int, list[float]], *, blocks: int,
                     tolerance: float = TOLERANCE) -> Verdict:
    """The claim in three parts, each a paired interval over seeds (``acc``/``cpu``: frozen block
    count -> per-seed held-out accuracy / CPU seconds; needs 0, ``blocks // 2`` and ``blocks``):

    - *general features intact*: accuracy with the first half frozen − with none frozen lies wholly
      above −``tolerance``;
    - *later layers adapt to the task*: accuracy with the first half frozen − with every block
      frozen (head only) lies wholly above 0;
    - *saves time*: CPU time with none frozen − with the first half frozen lies wholly above 0.
    """
    half = blocks // 2
    missing = [k for k in (0, half, blocks) if k not in acc or k not in cpu]
    if missing:
        raise LayerscopeError(f"the freezing verdict needs runs with {missing} blocks frozen")
    parts = {
        "freezing the first half keeps accuracy": threshold_rule(
            diff_interval(acc[half], acc[0], what=f"held-out accuracy, first {half} blocks frozen − none frozen"),
            -tolerance, claim="above", line=f"−{tolerance:g} (a {tolerance * 100:g}-point loss)"),
        "the later blocks need adapting": threshold_rule(
            diff_interval(acc[half], acc[blocks], what=f"held-out accuracy, first {half} frozen − all {blocks} frozen"),
            0.0, claim="above"),
        "freezing saves time": threshold_rule(
            diff_interval(cpu[0], cpu[half], what=f"CPU seconds, none frozen − first {half} frozen"),
            0.0, claim="above"),
    }
    return combine(parts, claim="freezing early layers")


def _mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


def _run_blocks(blocks, rec, start: int, h):
    from layerscope.layers import primary_tensor
    from layerscope.replay import with_hidden

    for j, block in enumerate(blocks, start=start):
        args, kwargs = with_hidden(*rec.calls[j], h)
        h = primary_tensor(block(*args, **kwargs))
    return h


def record(stack, texts, labels, *, batch_size: int, max_length: int, timed: int = 3):
    """Every batch's recorded forward (block inputs and call arguments), its attention mask and
    labels, and the CPU seconds of each block's forward pass over all the items (timed block by
    block on the first ``timed`` batches, scaled to all items)."""
    from layerscope.replay import prepare, record_forward

    batches, per_block, n_timed = [], np.zeros(len(stack.blocks)), 0
    with torch.no_grad():
        for a in range(0, len(texts), batch_size):
            enc = prepare(stack, stack.loaded.encode(list(texts[a:a + batch_size]), max_length=max_length))
            rec = record_forward(stack, enc)
            if len(batches) < timed:                      # the frozen part's cost, block by block
                for j, block in enumerate(stack.blocks):
                    c = time.process_time()
                    _run_blocks([block], rec, j, rec.block_input(j))
                    per_block[j] += time.process_time() - c
                n_timed += len(rec.block_input(0))
            batches.append((rec, enc.kwargs["attention_mask"], labels[a:a + batch_size]))
    return batches, per_block * (len(texts) / max(n_timed, 1))


def train_frozen(stack, train, test, *, frozen: int, seed: int, epochs: int, n_classes: int = 2):
    """Fine-tune copies of blocks ``frozen..`` and a new head from the recorded batches; returns
    (held-out accuracy, trainable parameters, training CPU seconds). The model is not changed."""
    torch.manual_seed(seed)
    blocks = nn.ModuleList(copy.deepcopy(b) for b in stack.blocks[frozen:])
    for p in blocks.parameters():
        p.requires_grad_(True)
    width = train[0][0].block_input(0).shape[-1]
    head = nn.Linear(width, n_classes)
    groups = [{"params": list(head.parameters()), "lr": HEAD_LR}]
    if len(blocks):
        groups.append({"params": list(blocks.parameters()), "lr": BLOCK_LR})
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    params = sum(p.numel() for g in groups for p in g["params"])
    gen = torch.Generator().manual_seed(seed)

    def pooled(rec, mask):          # the tuned blocks from the frozen part's recorded output, pooled
        h = rec.block_input(frozen) if frozen < len(stack.blocks) else rec.outs[-1]
        return _mean_pool(_run_blocks(blocks, rec, frozen, h), mask)

    c = time.process_time()
    blocks.train()
    with torch.enable_grad():
        for _ in range(epochs):
            for i in torch.randperm(len(train), generator=gen).tolist():
                rec, mask, y = train[i]
                loss = nn.functional.cross_entropy(head(pooled(rec, mask)), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
    seconds = time.process_time() - c
    blocks.eval()
    correct = total = 0
    with torch.no_grad():
        for rec, mask, y in test:
            correct += int((head(pooled(rec, mask)).argmax(1) == y).sum())
            total += len(y)
    return correct / total, params, seconds


@register("freezing", title="Freezing early layers for transfer",
          claim="When transferring a pretrained network, freeze the early layers to keep their general "
                "features intact and adapt the later ones to the new task; it saves time and data.",
          source="seed 003 (forum post: 'You freeze early layers to keep general features intact, then "
                 "adapt later ones to your specifics')",
          anchor="Lee et al. 2019 ('What would Elsa do? Freezing layers during transformer fine-tuning'): "
                 "fine-tuning only the last quarter of BERT's layers keeps about 90% of full fine-tuning "
                 "quality; Yosinski et al. 2014: the first layers of a CNN are general, the last specific",
          models="pretrained text encoders: minilm, or a local Hugging Face text encoder", order=65)
def freezing(s: Settings):
    from layerscope.analyses.probe_tasks import make_task
    from layerscope.data import load_dataset
    from layerscope.models import load_model
    from layerscope.report.charts import line_chart
    from layerscope.replay import build_stack

    model_ref = s.model or "minilm"
    loaded = load_model(model_ref)
    if loaded.modality != "text":
        raise not_applicable("freezing", model_ref, TAKES, f"{loaded.modality} input")
    stack = build_stack(loaded)
    if stack.task != "encoder":
        raise not_applicable("freezing", model_ref, TAKES, f"a {stack.task} model")
    data_ref = s.data or "sentences"
    raw = load_dataset(data_ref, limit=s.pick(250, 1500), seed=0)
    if getattr(raw, "labels", None) is None:
        raise LayerscopeError(f"study freezing needs sentences with sentiment scores (the bundled "
                              f"'sentences'); {data_ref!r} has no scores")
    task = make_task("sentiment", raw)
    if len(task) < MIN_ITEMS:
        raise LayerscopeError(f"study freezing needs at least {MIN_ITEMS} sentences with |score| >= 0.5 "
                              f"for a held-out accuracy; {data_ref!r} gave {len(task)}")
    L = len(stack.blocks)
    ks = sorted(set(s.pick((0, L // 2, L), tuple(range(L + 1)))))
    epochs, batch, max_length = s.pick(2, 3), 16, s.pick(16, 32)     # quick: within 3 CPU minutes
    texts, labels = list(task.items), task.labels.long()
    n_test = int(round(len(texts) * TEST_FRACTION))
    cut = (len(texts) - n_test) // batch * batch            # whole batches on each side
    batches, per_block = record(stack, texts, labels, batch_size=batch, max_length=max_length)
    train, test = batches[:cut // batch], batches[cut // batch:]
    n_train, n_test = sum(len(b[2]) for b in train), sum(len(b[2]) for b in test)
    acc = {k: [] for k in ks}
    cpu = {k: [] for k in ks}
    params = {}
    for seed in seed_list(s):
        for k in ks:
            a, p, sec = train_frozen(stack, train, test, frozen=k, seed=seed, epochs=epochs)
            acc[k].append(a)
            cpu[k].append(sec + float(per_block[:k].sum()))
            params[k] = p
    verdict = freezing_verdict(acc, cpu, blocks=L)
    majority = float(max((labels[cut:] == c).float().mean() for c in (0, 1)))
    rows = [[k, f"{params[k]:,}", pm(acc[k]), pm(cpu[k]), f"{np.mean(cpu[k]) / np.mean(cpu[0]):.2f}"]
            for k in ks]
    best = max(ks, key=lambda k: np.mean(acc[k]))
    findings = [
        f"Best mean held-out accuracy with {best} of {L} blocks frozen ({np.mean(acc[best]):.3f}); "
        f"head only (all {L} frozen) {np.mean(acc[L]):.3f}; majority class {majority:.3f} on "
        f"{n_test} held-out items.",
        f"Lee et al. 2019 keep about 90% of full fine-tuning quality with the last quarter tuned; here "
        f"tuning the last {L - L // 2} of {L} blocks keeps "
        f"{100 * np.mean(acc[L // 2]) / max(np.mean(acc[0]), 1e-9):.0f}% of full tuning's accuracy.",
    ]
    chart = line_chart([str(k) for k in ks], {"held-out accuracy": [float(np.mean(acc[k])) for k in ks]},
                       bands={"held-out accuracy": ([min(acc[k]) for k in ks], [max(acc[k]) for k in ks])},
                       x_title="blocks frozen (from the input)", y_title="held-out accuracy (min-max over seeds)")
    return make_result(
        "freezing",
        experiment=(f"{model_ref} ({L} blocks; the embeddings stay frozen in every setting) with its first k "
                    f"blocks frozen, k in {{{', '.join(map(str, ks))}}}, and a new linear head on the "
                    f"mean-pooled last hidden state, trained on the sentiment of {n_train} {data_ref} items "
                    f"(sign of the human score, |score| >= 0.5; {max_length} tokens at most) and scored on "
                    f"{n_test} held-out ones: AdamW (blocks lr {BLOCK_LR:g}, head lr {HEAD_LR:g}, weight "
                    f"decay 0.01), {epochs} epochs of batches of {batch}, dropout on in the tuned blocks; "
                    f"{len(seed_list(s))} seeds (head initialisation, batch order, dropout) on one split. "
                    f"Frozen blocks run once in eval mode and their outputs are reused; time = training CPU "
                    f"seconds + the frozen blocks' one-off forward CPU seconds."),
        columns=["blocks frozen", "trainable parameters", "held-out accuracy", "CPU seconds", "time vs none frozen"],
        rows=rows, chart=chart, verdict=verdict, findings=findings, model=model_ref, data=data_ref,
        settings={"frozen": list(ks), "epochs": epochs, "items": n_train + n_test, "tolerance": TOLERANCE})

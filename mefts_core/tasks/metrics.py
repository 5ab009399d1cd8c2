"""GLUE's metrics in numpy (scipy and sklearn are not dependencies).

Conventions where a metric is undefined (a constant prediction or label vector): MCC, F1, Pearson and Spearman
return 0.0, as sklearn does for MCC and F1, so early-epoch results stay JSON numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRICS = ("accuracy", "f1", "macro_f1", "mcc", "pearson", "spearman", "mse")


def accuracy(preds: Sequence, labels: Sequence) -> float:
    p, y = np.asarray(preds), np.asarray(labels)
    return float((p == y).mean()) if len(y) else 0.0


def f1(preds: Sequence, labels: Sequence, positive: int = 1) -> float:
    """Binary F1 of the positive class (GLUE's MRPC/QQP F1)."""
    p, y = np.asarray(preds) == positive, np.asarray(labels) == positive
    tp = float(np.sum(p & y))
    fp = float(np.sum(p & ~y))
    fn = float(np.sum(~p & y))
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


def macro_f1(preds: Sequence, labels: Sequence) -> float:
    y = np.asarray(labels)
    classes = np.unique(np.concatenate([np.asarray(preds), y]))
    return float(np.mean([f1(preds, labels, positive=c) for c in classes])) if len(classes) else 0.0


def mcc(preds: Sequence, labels: Sequence) -> float:
    """Matthews correlation (multi-class form of Gorodkin 2004; the usual formula for two classes)."""
    p, y = np.asarray(preds), np.asarray(labels)
    classes = np.unique(np.concatenate([p, y]))
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    conf = np.zeros((k, k), dtype=np.float64)  # rows: true, cols: predicted
    for t, q in zip(y, p):
        conf[index[t], index[q]] += 1
    s = conf.sum()
    c = np.trace(conf)
    t_k = conf.sum(axis=1)
    p_k = conf.sum(axis=0)
    num = c * s - float(t_k @ p_k)
    den = np.sqrt(s * s - float(p_k @ p_k)) * np.sqrt(s * s - float(t_k @ t_k))
    return float(num / den) if den else 0.0


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den else 0.0


def rank(x: Sequence[float]) -> np.ndarray:
    """Ranks starting at 1, ties get the average of their ranks (as scipy.stats.rankdata)."""
    a = np.asarray(x, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), dtype=np.float64)
    sorted_a = a[order]
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and sorted_a[j + 1] == sorted_a[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return pearson(rank(x), rank(y))


def mse(x: Sequence[float], y: Sequence[float]) -> float:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.mean((a - b) ** 2)) if len(a) else 0.0


_FUNCS = {
    "accuracy": accuracy,
    "f1": f1,
    "macro_f1": macro_f1,
    "mcc": mcc,
    "pearson": pearson,
    "spearman": spearman,
    "mse": mse,
}


def compute_metrics(names: Sequence[str], preds: Sequence, labels: Sequence) -> dict[str, float]:
    """The named metrics; with more than one (MRPC, QQP, STS-B) also `combined_score`, their mean (GLUE's average
    for the task). `mse` is a loss and stays out of the combined score."""
    out = {n: _FUNCS[n](preds, labels) for n in names}
    scored = [n for n in names if n != "mse"]
    if len(scored) > 1:
        out["combined_score"] = float(np.mean([out[n] for n in scored]))
    return out

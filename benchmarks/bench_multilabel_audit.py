"""Multi-label label issues on the mosaic sets: are injected flips found in the audit's top-k? (#30)

For each set and split, ``FLIP_SHARE`` of the pool mosaics get one flip: one class drawn at random is added
to the image's set when absent or removed when present. The audit's multi-label path
(:func:`tlkit.audit.labels.multilabel_out_of_fold_probs`: 5-fold one-vs-rest heads on the embeddings for
cleanlab's flags and ranking, as ``tlkit audit`` does, or ``--ranking worst-class`` with
:func:`~tlkit.audit.labels.multilabel_knn_share`; :func:`tlkit.audit.labels.find_multilabel_issues`) ranks every mosaic; the
recall of the flips in the top ``k = flips`` and ``k = 2 x flips`` rows is printed (the issue's bar: 80 %).

``--evidence`` (the tile study, ``results/multilabel_audit_tiles_plan.md``; not in ``tlkit audit``): ``whole`` the
mosaic's embedding (tlkit's); ``tilemax`` the element-wise max of it and its four crops' embeddings
(:func:`benchmarks.multilabel_data.load_crop_embeddings`, ``--crop`` of the side); ``mil`` one-vs-rest heads
fitted on the crops, each inheriting its mosaic's label set, out-of-fold by mosaic, a class's probability the
max over the mosaic's crops.

Usage (from the repository root; about a minute per split):
  python benchmarks/bench_multilabel_audit.py [--sets intel,clothing] [--splits 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
FLIP_SHARE = 0.05
"""The share of images given one wrong class (as benchmarks/bench_audit_photos.py flips 5 % of single labels)."""


RANKINGS = ("cleanlab", "worst-class", "per-class-z", "percentile", "posterior")
"""``cleanlab``: tlkit audit's ranking; ``worst-class``: its option with the neighbours' share; the other three
rank each row by its most suspicious label measured against its own class's out-of-fold logits (tried, not
adopted; ``results/multilabel_pooling.md``): ``per-class-z`` the robust z-score of the logit among the class's
given positives (or negatives), ``percentile`` its rank there, ``posterior`` the probability that the label is
the other value from Gaussian KDEs of the class's logits among its given positives and negatives."""


def per_class_suspicion(given: np.ndarray, probs: np.ndarray, how: str) -> np.ndarray:
    """``[m]`` suspicion of each row (higher: more likely mislabeled): the max over its labels of ``how``'s
    per-class score (see :data:`RANKINGS`)."""
    from scipy.special import logit
    from scipy.stats import gaussian_kde, rankdata

    G = np.asarray(given, bool)
    L = logit(np.clip(np.asarray(probs, np.float64), 1e-6, 1 - 1e-6))
    S = np.zeros_like(L)
    for j in range(G.shape[1]):
        pos, neg = G[:, j], ~G[:, j]
        if pos.sum() < 3 or neg.sum() < 3:
            continue
        if how == "per-class-z":
            S[pos, j] = -(L[pos, j] - np.median(L[pos, j])) / (L[pos, j].std() + 1e-6)
            S[neg, j] = (L[neg, j] - np.median(L[neg, j])) / (L[neg, j].std() + 1e-6)
        elif how == "percentile":
            S[pos, j] = 1 - rankdata(L[pos, j]) / pos.sum()
            S[neg, j] = rankdata(L[neg, j]) / neg.sum()
        elif how == "posterior":
            dp, dn = gaussian_kde(L[pos, j])(L[:, j]) + 1e-9, gaussian_kde(L[neg, j])(L[:, j]) + 1e-9
            post = pos.mean() * dp / (pos.mean() * dp + (1 - pos.mean()) * dn)
            S[:, j] = np.where(pos, 1 - post, post)
        else:
            raise ValueError(how)
    return S.max(1)


def inject_flips(Y: np.ndarray, split: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(given, rows, cols)``: a copy of ``Y [m, k]`` (0/1) in which :data:`FLIP_SHARE` of the rows, drawn with
    ``default_rng([seed, split])``, have the class ``cols`` added when absent or removed when present."""
    rng = np.random.default_rng([seed, split])
    flips = rng.choice(len(Y), int(round(FLIP_SHARE * len(Y))), replace=False)
    given = Y.copy()
    cols = rng.integers(0, Y.shape[1], len(flips))
    given[flips, cols] ^= 1
    return given, flips, cols


EVIDENCE = ("whole", "tilemax", "mil")
TUNING = ("clothing", "cifar10")
"""Tuning mosaics: ``--splits N`` means their split 100 + N (``results/multilabel_sets_plan.md``)."""


def mil_out_of_fold_probs(crops: np.ndarray, given: np.ndarray, seed: int = 0, folds: int = 5) -> np.ndarray:
    """``[m, k]``: one-vs-rest heads fitted on the crops ``[m, t, d]`` of the other folds' rows (each crop
    inherits its row's labels ``given``), a row's probability of a class the max over its crops."""
    from sklearn.model_selection import KFold

    from tlkit.active.head import Scaler, fit_multilabel_head
    from tlkit.audit.labels import AUDIT_GTOL

    m, t, d = crops.shape
    scaler = Scaler.fit(crops.reshape(-1, d))
    classes = tuple(str(c) for c in range(given.shape[1]))
    probs = np.zeros(given.shape, np.float32)
    for tr, te in KFold(folds, shuffle=True, random_state=seed).split(crops):
        head = fit_multilabel_head(crops[tr].reshape(-1, d), np.repeat(given[tr], t, 0), classes, scaler=scaler,
                                   seed=seed, tol=AUDIT_GTOL)
        probs[te] = head.predict_proba(crops[te].reshape(-1, d)).reshape(len(te), t, -1).max(1)
    return probs


def run(name: str, split: int, seed: int = 0, rankings: tuple[str, ...] = ("cleanlab",), evidence: str = "whole",
        crop: float = 0.5, subsample: int | None = None) -> list[dict]:
    """Inject flips into split ``split`` of mosaic set ``name``; per ranking, the recall of the audit's top k and 2k
    (the out-of-fold probabilities are computed once, from ``evidence``). ``subsample``: only that many pool
    mosaics, drawn with ``default_rng([split, seed, 77])`` (a small project); ``seed`` also draws the flips."""
    from threadpoolctl import threadpool_limits

    from benchmarks.multilabel_data import load_crop_embeddings, load_embeddings
    from tlkit.active.head import Scaler, mean_average_precision
    from tlkit.audit.labels import find_multilabel_issues, multilabel_knn_share, multilabel_out_of_fold_probs

    x, _, Y, _, classes = load_embeddings(name, split)
    crops = load_crop_embeddings(name, split, crop) if evidence != "whole" else None
    if subsample is not None:
        keep = np.sort(np.random.default_rng([split, seed, 77]).choice(len(Y), subsample, replace=False))
        x, Y, crops = x[keep], Y[keep], (crops[keep] if crops is not None else None)
    given, flips, cols = inject_flips(Y, split, seed)
    with threadpool_limits(limits=1):
        if evidence == "mil":
            probs = mil_out_of_fold_probs(crops, given, seed)
            x = crops.mean(1)  # the neighbours of the worst-class ranking
        else:
            x = np.maximum(crops.max(1), x) if evidence == "tilemax" else x
            probs = multilabel_out_of_fold_probs(x, given, seed=seed, scaler=Scaler.fit(x))
    oof_map = round(float(mean_average_precision(Y, probs)), 4)
    k = len(flips)
    rows = []
    for ranking in rankings:
        found = find_multilabel_issues(given, probs,
                                       multilabel_knn_share(x, given) if ranking == "worst-class" else None)
        rank = found.ranking
        if ranking not in ("cleanlab", "worst-class"):
            rank = np.argsort(-per_class_suspicion(given, probs, ranking), kind="stable")
        out = {"set": name, "split": split, "seed": seed, "subsample": subsample, "ranking": ranking,
               "evidence": evidence, "crop": crop if crops is not None else None, "oof_map": oof_map,
               "images": len(Y), "flips": k,
               "added": int(given[flips, cols].sum()), "removed": int(k - given[flips, cols].sum()),
               "recall_at_k": float(np.isin(flips, rank[:k]).mean()),
               "recall_at_2k": float(np.isin(flips, rank[: 2 * k]).mean()),
               "flagged": int(len(found.issues)), "flagged_recall": float(np.isin(flips, found.issues).mean())}
        size = f" ({subsample} mosaics, draw {seed})" if subsample else ""
        print(f"{name} split {split}{size} ({evidence}, {ranking}; OOF mAP {oof_map:.3f}): {k} flips ({out['added']} "
              f"added, {out['removed']} removed); recall top-k {100 * out['recall_at_k']:.1f} %, top-2k "
              f"{100 * out['recall_at_2k']:.1f} %; cleanlab flags {out['flagged']} rows holding "
              f"{100 * out['flagged_recall']:.1f} % of the flips", flush=True)
        rows.append(out)
    return rows


def main(argv: list[str]) -> None:
    import json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="intel,clothing")
    ap.add_argument("--splits", default="0")
    ap.add_argument("--out", type=Path, default=RESULTS / "multilabel_audit.json")
    ap.add_argument("--ranking", default="cleanlab",
                    help="comma-separated: cleanlab's pooled label quality (tlkit audit's), the worst class with "
                         "neighbours, or a per-class score (RANKINGS)")
    ap.add_argument("--evidence", default="whole", help=f"comma-separated, of {EVIDENCE} (see the docstring)")
    ap.add_argument("--subsample", type=int, default=None, help="only this many pool mosaics (a small project)")
    ap.add_argument("--draws", type=int, default=1, help="seeds 0.. of the subsample and the flips")
    ap.add_argument("--crop", type=float, default=0.5, help="crop side as a share of the mosaic's (0.5: its cells)")
    args = ap.parse_args(argv)
    bad = [v for v in args.ranking.split(",") if v not in RANKINGS] + [v for v in args.evidence.split(",")
                                                                        if v not in EVIDENCE]
    if bad:
        ap.error(f"unknown --ranking/--evidence {bad}; rankings {RANKINGS}, evidence {EVIDENCE}")
    rows = []
    for name in args.sets.split(","):
        for split in (int(s) for s in args.splits.split(",")):
            for ev in args.evidence.split(","):
                for draw in range(args.draws):
                    rows += run(name, split + 100 if name in TUNING else split, draw,
                                rankings=tuple(args.ranking.split(",")), evidence=ev, crop=args.crop,
                                subsample=args.subsample)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])

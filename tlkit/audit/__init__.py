"""``tlkit audit``: label issues, near-duplicates, train/test leaks and outliers of an image set.

One pass over the embeddings (:mod:`tlkit.audit.neighbours`, blocked, bounded memory) gives every
image's nearest neighbours and every pair above the duplicate threshold; then

- :mod:`tlkit.audit.labels`: out-of-fold head probabilities -> cleanlab's label issues;
- :mod:`tlkit.audit.duplicates`: near-duplicate and exact (file hash) groups;
- :mod:`tlkit.audit.outliers`: images far from all others;
- leaks: ``test`` images that duplicate audited ones (same search, test rows against the audited set);
- :mod:`tlkit.audit.report`: a contact sheet per list and an ``index.html`` linking everything.

Example:
    >>> res = run_audit("labeled/", out="audit/", test="test/")     # doctest: +SKIP
    >>> res.label_issues[0]        # {'path': ..., 'given': 'cat', 'suggested': 'dog', 'score': 0.02, ...}
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tlkit.audit import duplicates as dups
from tlkit.audit import labels as lab
from tlkit.audit import outliers as outl
from tlkit.audit import pixels
from tlkit.audit import report
from tlkit.audit.inputs import AuditSet, Embedder, from_folder, from_project
from tlkit.audit.neighbours import normalise, search
from tlkit.core.constants import DEFAULT_BACKBONE
from tlkit.core.errors import TlkitError
from tlkit.core.io import check_output_dir, write_csv, write_json

log = logging.getLogger(__name__)

__all__ = ["AuditResult", "run_audit", "DEFAULT_THRESHOLD"]

DEFAULT_THRESHOLD = dups.DEFAULT_THRESHOLD
SKIP_LABEL = "__skip__"


@dataclass
class AuditResult:
    """What :func:`run_audit` found and wrote (rows as in the CSV files, most severe first).

    Attributes:
        out: the output folder.
        images: images audited.
        label_issues: ``path, given, suggested, score, confidence`` per flagged label (score: out-of-fold
            probability of the given label).
        groups: duplicate groups (row lists of ``group, path, label, match, cosine``).
        leaks: one row per test image that duplicates audited images: ``test_path, train_path`` (its best
            match: same bytes first, then the closest thumbnail), ``match, cosine, matches`` (how many audited
            images it duplicates), ``test_label, train_label``.
        outliers: ``path, label, score, z``.
        propagated: ``(path, label)`` written with ``propagate``.
        files: name -> path of every file written.
        notes: what was skipped and why.
    """

    out: Path
    images: int
    label_issues: list[dict[str, Any]] = field(default_factory=list)
    groups: list[list[dict[str, Any]]] = field(default_factory=list)
    leaks: list[dict[str, Any]] = field(default_factory=list)
    outliers: list[dict[str, Any]] = field(default_factory=list)
    propagated: list[tuple[str, str]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def run_audit(
    data: str | os.PathLike | None = None,
    *,
    project: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    test: str | os.PathLike | None = None,
    backbone: str = DEFAULT_BACKBONE,
    weights: str | None = None,
    image_size: int | None = None,
    device: str = "auto",
    folds: int = 5,
    threshold: float = DEFAULT_THRESHOLD,
    pred_probs: str | os.PathLike | None = None,
    propagate: bool = False,
    sheets: bool = True,
    progress: Callable[[int], None] | None = None,
) -> AuditResult:
    """Audit a labeled folder / extract folder (``data``) or a project's pool (``project``).

    Args:
        data: class-folder tree, ``path,label`` manifest, or ``tlkit extract`` folder with labels.
        project: an active-learning project folder (then ``out`` defaults to ``PROJECT/audit``; the
            duplicate groups are saved there for ``al-round``). Give exactly one of the two.
        out: output folder.
        test: a test folder (or extract folder): its images that duplicate audited ones are leaks.
        backbone, weights, image_size: how image folders are embedded (a project uses its own).
        folds: k of the out-of-fold head probabilities.
        threshold: cosine above which two images are near-duplicates.
        pred_probs: CSV ``path,<class>...`` of cross-validated probabilities (e.g. of a fine-tuned
            run) to use instead of the head's.
        propagate: (project) write ``propagated.csv``: labels for unlabeled copies of labeled images.
        sheets: draw the contact sheets.
        progress: called with images embedded.

    Raises:
        TlkitError: bad inputs (--data without labels, a missing folder, --pred-probs that are not
            probabilities, --test features of another backbone), as one line. With fewer than two classes the
            label issues are skipped (a note says so) and the other checks run.
    """
    if (data is None) == (project is None):
        raise TlkitError("give a project folder or --data LABELED_DIR (one of the two)")
    if not 0.0 < threshold <= 1.0:
        raise TlkitError(f"--threshold must be a cosine in (0, 1] (got {threshold})")
    if project is not None:
        from tlkit.active.project import Project

        proj = Project.open(project)
        out_dir = check_output_dir(out if out is not None else proj.root / "audit")
        with proj.lock("tlkit audit"):
            cfg = proj.config
            emb = Embedder(cfg.backbone, cfg.weights, cfg.image_size, device)
            aset = from_project(proj, device=device, progress=progress)
            return _audit(aset, out_dir, test, emb, folds, threshold, pred_probs, sheets, proj, propagate)
    if out is None:
        raise TlkitError("--out DIR is required with --data (the folder for issues.csv, duplicates.csv, ...)")
    if propagate:
        raise TlkitError("--propagate needs a project (it writes labels that `tlkit al-import` takes)")
    out_dir = check_output_dir(out)
    emb = Embedder(backbone, weights, image_size, device)
    aset = from_folder(data, out_dir / "features" / "data", emb, progress=progress)
    lab.check_labels(aset.labels, f"--data {data}")
    return _audit(aset, out_dir, test, emb, folds, threshold, pred_probs, sheets, None, False)


def _audit(aset: AuditSet, out: Path, test, emb: Embedder, folds: int, threshold: float, pred_probs, sheets: bool,
           project, propagate: bool) -> AuditResult:
    out.mkdir(parents=True, exist_ok=True)
    res = AuditResult(out, len(aset.paths))
    tset = _test_set(aset, test, out, emb) if test is not None else None
    _label_issues(res, aset, folds, pred_probs, project)  # bad --pred-probs fail before the searches
    xn = normalise(aset.embeddings)
    files = [aset.file(i) for i in range(len(aset.paths))] if aset.root else None
    hashes = dups.file_hashes(files) if files else None
    thumbs = pixels.thumbnails(files)[:2] if files else None
    if files is None:  # one search gives the outliers' neighbours and the near-duplicate pairs
        res.notes.append("exact duplicates: skipped, and near-duplicates by embeddings alone (the images are not "
                         "on this machine)")
        nb = search(xn, k=outl.K + 5, threshold=dups.embedding_only_threshold(threshold))
        near = nb.pairs
    else:
        nb = search(xn, k=outl.K + 5)
        near, _, _ = dups.near_pairs(xn, thumbs, threshold=threshold)
    groups = dups.build_groups(xn, near, dups.hash_pairs(hashes or []))
    res.groups = _group_rows(aset, groups)
    group_of = np.full(len(aset.paths), -1, np.int64)
    for g, grp in enumerate(groups):
        group_of[list(grp.members)] = g
    scores = outl.knn_scores(nb.index, nb.dist, group_of)
    z = outl.robust_z(scores)
    res.outliers = [{"path": aset.paths[i], "label": aset.labels[i] or "", "score": round(float(scores[i]), 4),
                     "z": round(float(z[i]), 2)} for i in outl.flag(scores)]
    if tset is not None:
        res.leaks = _leaks(aset, xn, hashes, thumbs, tset, threshold)
    _write(res, aset, project, groups, threshold, propagate, tset is not None)
    if sheets:
        _sheets(res, aset, tset)
    report.html_page(out / "index.html", f"tlkit audit of {aset.name}", _sections(res))
    res.files["html"] = out / "index.html"
    return res


def _label_issues(res: AuditResult, aset: AuditSet, folds: int, pred_probs, project) -> None:
    if aset.multilabel:
        return _multilabel_issues(res, aset, folds, pred_probs)
    rows = np.flatnonzero([lbl is not None for lbl in aset.labels])
    names = [aset.labels[i] for i in rows]
    skipped = lab.too_few_classes(names, aset.name)
    if skipped:  # duplicates, leaks and outliers need no labels
        res.notes.append(skipped)
        return
    classes = lab.check_labels(names, aset.name)
    idx = {c: i for i, c in enumerate(classes)}
    y = np.array([idx[n] for n in names], np.int64)
    rank = None
    if pred_probs is not None:
        probs = lab.read_pred_probs(Path(pred_probs), [aset.paths[i] for i in rows], classes)
    else:
        from tlkit.active.head import Scaler

        scaler = Scaler.fit(aset.embeddings)
        probs = lab.out_of_fold_probs(aset.embeddings[rows], y, len(classes), folds=folds, scaler=scaler)
        rank = lab.ranking_probs(aset.embeddings[rows], y, len(classes), folds=folds, scaler=scaler)
    found = lab.find_issues(y, probs, lab.knn_agreement(aset.embeddings[rows], y), rank)
    res.label_issues = [{"path": aset.paths[rows[i]], "given": classes[y[i]], "suggested": classes[found.suggested[i]],
                         "score": round(float(found.quality[i]), 6),
                         "confidence": round(float(probs[i, found.suggested[i]]), 4)} for i in found.issues]


def _multilabel_issues(res: AuditResult, aset: AuditSet, folds: int, pred_probs) -> None:
    """Label issues of multi-label sets (cleanlab's multi-label API); ``given``/``suggested`` are set texts,
    ``confidence`` the probability of the suggested set."""
    from tlkit.active.labeltext import split_labels
    from tlkit.active.round import predicted_label

    rows = np.flatnonzero([lbl is not None for lbl in aset.labels])
    classes = aset.classes
    if len(rows) < 4 or len(classes) < 1:
        res.notes.append(f"label issues: skipped ({aset.name} has {len(rows)} labeled images; they need at least 4)")
        return
    idx = {c: i for i, c in enumerate(classes)}
    Y = np.zeros((len(rows), len(classes)), np.uint8)
    for r, i in enumerate(rows):
        Y[r, [idx[c] for c in split_labels(aset.labels[i])]] = 1
    x = aset.embeddings[rows]
    if pred_probs is not None:
        probs = lab.read_pred_probs(Path(pred_probs), [aset.paths[i] for i in rows], classes, multilabel=True)
    else:
        from tlkit.active.head import Scaler

        probs = lab.multilabel_out_of_fold_probs(x, Y, folds=folds, scaler=Scaler.fit(aset.embeddings))
    found = lab.find_multilabel_issues(Y, probs, lab.multilabel_knn_share(x, Y))
    out = []
    for i in found.issues:
        suggested, conf = predicted_label(classes, probs[i], multilabel=True)
        out.append({"path": aset.paths[rows[i]], "given": aset.labels[rows[i]], "suggested": suggested,
                    "score": round(float(found.quality[i]), 6), "confidence": round(conf, 4)})
    res.label_issues = out


def _group_rows(aset: AuditSet, groups: list[dups.DuplicateGroup]) -> list[list[dict[str, Any]]]:
    return [[{"group": g + 1, "path": aset.paths[m], "label": aset.labels[m] or "", "match": grp.match[j],
              "cosine": round(grp.cosine[j], 4)} for j, m in enumerate(grp.members)] for g, grp in enumerate(groups)]


def _test_set(aset: AuditSet, test, out: Path, emb: Embedder) -> AuditSet:
    """The ``--test`` images (embedded into ``out/features/test``), refused when their features cannot be
    compared with the audited ones."""
    tset = from_folder(test, out / "features" / "test", emb, option="--test")
    d, dt = aset.embeddings.shape[1], tset.embeddings.shape[1]
    if d != dt:
        raise TlkitError(f"--test {test} has {dt}-d features but {aset.name} has {d}-d: embed both with the same "
                         "backbone (an image folder is embedded with --backbone; re-extract an extract folder)")
    return tset


def _leaks(aset: AuditSet, xn: np.ndarray, hashes, thumbs, tset: AuditSet, threshold: float) -> list[dict]:
    """Test images whose embedding (cosine ≥ threshold) or bytes match an audited image."""
    tn = normalise(tset.embeddings)
    tfiles = [tset.file(i) for i in range(len(tset.paths))] if tset.root else None
    tthumbs = pixels.thumbnails(tfiles)[:2] if tfiles else None
    pairs, cos, pix = dups.near_pairs(tn, tthumbs, threshold=threshold, ref=xn, ref_thumbs=thumbs)
    found: dict[int, list[tuple[int, str, float, float]]] = {}  # test row -> (train row, match, pixel, cosine)
    for (i, j), c, p in zip(pairs.tolist(), cos.tolist(), pix.tolist()):
        found.setdefault(i, []).append((j, "near", p, c))
    if hashes is not None and tfiles is not None:
        first: dict[str, list[int]] = {}
        for j, h in enumerate(hashes):
            if h is not None:
                first.setdefault(h, []).append(j)
        for i, h in enumerate(dups.file_hashes(tfiles)):
            for j in first.get(h, []) if h else []:
                found.setdefault(i, []).append((j, "exact", 1.0, float(tn[i] @ xn[j])))
    rows = []
    for i, matches in found.items():  # one row per leaked test image: its best match (exact, then pixels)
        j, m, _, c = max(matches, key=lambda t: (t[1] == "exact", t[2], t[3]))
        rows.append({"test_path": tset.paths[i], "train_path": aset.paths[j], "match": m, "cosine": round(c, 4),
                     "matches": len({t[0] for t in matches}), "test_label": tset.labels[i] or "",
                     "train_label": aset.labels[j] or ""})
    rows.sort(key=lambda r: (r["match"] != "exact", -r["cosine"], r["test_path"]))
    return rows


ISSUE_COLUMNS = ("rank", "path", "given", "suggested", "score", "confidence")
GROUP_COLUMNS = ("group", "path", "label", "match", "cosine")
LEAK_COLUMNS = ("test_path", "train_path", "match", "cosine", "matches", "test_label", "train_label")
OUTLIER_COLUMNS = ("rank", "path", "label", "score", "z")


def _write(res: AuditResult, aset: AuditSet, project, groups, threshold: float, propagate: bool,
           with_leaks: bool) -> None:
    """The CSV files, summary.json and, for a project, review.json, outliers_skip.csv, the saved groups."""
    out, f = res.out, res.files
    ranked = [{"rank": r, **row} for r, row in enumerate(res.label_issues, start=1)]
    write_csv(out / "issues.csv", ISSUE_COLUMNS, ([row[c] for c in ISSUE_COLUMNS] for row in ranked))
    write_csv(out / "duplicates.csv", GROUP_COLUMNS, ([row[c] for c in GROUP_COLUMNS] for g in res.groups for row in g))
    ranked_out = [{"rank": r, **row} for r, row in enumerate(res.outliers, start=1)]
    write_csv(out / "outliers.csv", OUTLIER_COLUMNS, ([row[c] for c in OUTLIER_COLUMNS] for row in ranked_out))
    f.update(issues=out / "issues.csv", duplicates=out / "duplicates.csv", outliers=out / "outliers.csv")
    if with_leaks:
        write_csv(out / "leaks.csv", LEAK_COLUMNS, ([row[c] for c in LEAK_COLUMNS] for row in res.leaks))
        f["leaks"] = out / "leaks.csv"
    if project is not None:
        _write_project(res, aset, project, groups, threshold, propagate)
    write_json(out / "summary.json", {
        "images": res.images, "label_issues": len(res.label_issues), "duplicate_groups": len(res.groups),
        "images_in_groups": sum(len(g) for g in res.groups), "leaks": len(res.leaks), "outliers": len(res.outliers),
        "threshold": threshold, "notes": res.notes, "files": {k: v.name for k, v in f.items()},
    })
    f["summary"] = out / "summary.json"


def _write_project(res: AuditResult, aset: AuditSet, project, groups, threshold: float, propagate: bool) -> None:
    """review.json (Label Studio tasks of the suspects), outliers_skip.csv, the groups al-round reads."""
    from tlkit.active import labelstudio as ls
    from tlkit.active.duplicate_groups import save_project_groups

    out, f = res.out, res.files
    rows = [{"path": r["path"], "rank": k, "score": r["score"], "predicted": r["suggested"],
             "confidence": r["confidence"]} for k, r in enumerate(res.label_issues, start=1)]
    tasks = ls.tasks(rows, project.image_urls(), 0, multilabel=aset.multilabel)
    for task, r in zip(tasks, res.label_issues):
        task["meta"]["tlkit_given"] = r["given"]
        task["meta"]["tlkit_audit"] = "label issue"
    write_json(out / "review.json", tasks)
    write_csv(out / "outliers_skip.csv", ("path", "label"), ((r["path"], SKIP_LABEL) for r in res.outliers))
    f.update(review=out / "review.json", outliers_skip=out / "outliers_skip.csv")
    f["groups"] = save_project_groups(project.root, [[aset.paths[m] for m in g.members] for g in groups], threshold)
    if propagate:
        res.propagated = dups.propagate(aset.paths, project.labels(), groups, SKIP_LABEL)
        write_csv(out / "propagated.csv", ("path", "label"), res.propagated)
        f["propagated"] = out / "propagated.csv"


def _sheets(res: AuditResult, aset: AuditSet, tset: AuditSet | None) -> None:
    """One contact sheet per non-empty list."""
    from tlkit.audit.report import Tile, contact_sheet

    out, f = res.out, res.files

    def tile(path: str, *lines: str, s: AuditSet = aset) -> Tile:
        return Tile(s.root / path if s.root is not None else None, (path, *lines))

    if res.label_issues:
        f["issues_png"] = contact_sheet([tile(r["path"], f"given: {r['given']}", f"suggest: {r['suggested']} "
                                              f"({r['confidence']:.2f})") for r in res.label_issues],
                                        out / "issues.png", f"label issues (most suspicious first) of {aset.name}")
    if res.groups:
        f["duplicates_png"] = contact_sheet([[tile(r["path"], f"label: {r['label'] or '-'}",
                                                   f"{r['match'] or 'first'} {r['cosine']:.3f}") for r in g]
                                             for g in res.groups], out / "duplicates.png",
                                            "duplicate groups (one per row)")
    if res.leaks and tset is not None:
        f["leaks_png"] = contact_sheet([[tile(r["test_path"], "test", f"{r['match']} {r['cosine']:.3f}", s=tset),
                                         tile(r["train_path"], "train", r["train_label"])] for r in res.leaks],
                                       out / "leaks.png", "test images that duplicate training images (test | train)")
    if res.outliers:
        f["outliers_png"] = contact_sheet([tile(r["path"], f"label: {r['label'] or '-'}", f"z {r['z']:.1f}")
                                           for r in res.outliers], out / "outliers.png",
                                          "outliers (far from every other image)")


def _sections(res: AuditResult) -> list[tuple[str, str, Path | None, Path | None]]:
    f = res.files
    out = [("Label issues", f"{len(res.label_issues)} labels that look wrong (cleanlab on out-of-fold head "
            "probabilities), most suspicious first.", f.get("issues"), f.get("issues_png")),
           ("Near-duplicates", f"{len(res.groups)} groups, {sum(len(g) for g in res.groups)} images.",
            f.get("duplicates"), f.get("duplicates_png")),
           ("Outliers", f"{len(res.outliers)} images far from every other image.", f.get("outliers"),
            f.get("outliers_png"))]
    if "leaks" in f:
        out.append(("Train/test leaks", f"{len(res.leaks)} test images duplicate audited images.", f.get("leaks"),
                    f.get("leaks_png")))
    for note in res.notes:
        out.append(("Note", note, None, None))
    return out

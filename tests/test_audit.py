"""`tlkit audit`: label issues, duplicate groups, leaks, outliers, the review file, al-round's groups."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli
from tlkit.active.duplicate_groups import one_per_group, read_project_groups
from tlkit.active.labels import import_labels, import_seed_labels
from tlkit.active.project import Project
from tlkit.audit import run_audit
from tlkit.audit.neighbours import normalise, search
from tlkit.core.errors import TlkitError
from tlkit.core.io import read_csv, write_csv

SIZE = 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """120 real digits (12 per class) with 6 labels flipped, 3 injected copies, one photo among them,
    and a disjoint test folder holding one exact and one re-encoded copy of training images."""
    from skimage import data as skdata

    from tlkit.demo import digits_arrays, make_digits_folder

    _, labels = digits_arrays()
    rng = np.random.default_rng(5)
    picks = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:14] for c in range(10)]))
    train_idx, test_idx = picks[np.arange(len(picks)) % 7 != 0], picks[np.arange(len(picks)) % 7 == 0]
    root = tmp_path_factory.mktemp("audit")
    data = make_digits_folder(root / "data", indices=train_idx)
    test = make_digits_folder(root / "test", indices=test_idx)
    files = sorted(data.rglob("*.png"))
    flipped = []
    for f in [files[i] for i in rng.choice(len(files), 6, replace=False)]:
        new = str((int(f.parent.name) + 1 + int(rng.integers(9))) % 10)
        shutil.move(f, data / new / f.name)
        flipped.append(f"{new}/{f.name}")
    files = sorted(p for p in data.rglob("*.png") if p.relative_to(data).as_posix() not in flipped)
    copies = {}
    a, b, c = files[3], files[40], files[77]
    shutil.copy(a, a.with_name("copy_exact.png"))
    Image.open(b).convert("RGB").save(b.with_name("copy_reenc.jpg"), quality=70)
    img = Image.open(c)
    img.crop((2, 2, 30, 30)).resize((24, 24)).save(c.with_name("copy_crop.png"))
    for orig, name in ((a, "copy_exact.png"), (b, "copy_reenc.jpg"), (c, "copy_crop.png")):
        copies[orig.relative_to(data).as_posix()] = (orig.parent / name).relative_to(data).as_posix()
    Image.fromarray(skdata.astronaut()).resize((32, 32)).save(data / "4" / "astronaut.png")
    leak = files[60]
    shutil.copy(leak, test / leak.parent.name / "leak_exact.png")
    Image.open(files[90]).convert("RGB").save(test / files[90].parent.name / "leak_reenc.jpg", quality=75)
    leaks = {(f"{leak.parent.name}/leak_exact.png", leak.relative_to(data).as_posix()),
             (f"{files[90].parent.name}/leak_reenc.jpg", files[90].relative_to(data).as_posix())}
    res = run_audit(data, out=root / "out", test=test, image_size=SIZE)
    return {"root": root, "data": data, "test": test, "flipped": flipped, "copies": copies, "leaks": leaks,
            "res": res}


@pytest.mark.slow
def test_flipped_labels_rank_first(dataset):
    res, flipped = dataset["res"], set(dataset["flipped"])
    found = [r["path"] for r in res.label_issues]
    assert len(set(found) & flipped) >= 5, (found, flipped)
    top = found[: 2 * len(flipped)]
    assert len(set(top) & flipped) >= 3
    row = next(r for r in res.label_issues if r["path"] in flipped)
    assert row["suggested"] != row["given"] and 0 <= row["score"] < 0.5
    rows = read_csv(res.files["issues"])
    assert [r["path"] for r in rows] == found and list(rows[0]) == ["rank", "path", "given", "suggested", "score",
                                                                    "confidence"]


@pytest.mark.slow
def test_duplicate_groups(dataset):
    res = dataset["res"]
    groups = [{r["path"] for r in g} for g in res.groups]
    for orig, copy in dataset["copies"].items():
        assert any({orig, copy} <= g for g in groups), (orig, copy, groups)
    assert all(len(g) <= 3 for g in groups), groups  # distinct digits are not lumped together
    exact = next(g for g in res.groups if any(r["path"].endswith("copy_exact.png") for r in g))
    assert {r["match"] for r in exact} >= {"exact"}
    assert len(read_csv(res.files["duplicates"])) == sum(len(g) for g in res.groups)


@pytest.mark.slow
def test_leaks_found_exactly(dataset):
    res = dataset["res"]
    got = {(r["test_path"], r["train_path"]) for r in res.leaks}
    assert dataset["leaks"] <= got, got
    # 8x8 scans can be pixel-identical across writers: an extra pair must be a same-digit twin
    assert all(t.split("/")[0] == s.split("/")[0] for t, s in got - dataset["leaks"])
    assert {r["match"] for r in res.leaks} == {"exact", "near"}


@pytest.mark.slow
def test_outlier_and_report(dataset):
    res = dataset["res"]
    assert res.outliers and res.outliers[0]["path"] == "4/astronaut.png"
    for name in ("issues_png", "duplicates_png", "leaks_png", "outliers_png"):
        with Image.open(res.files[name]) as im:
            assert im.width >= 320 and im.height > 100
    html = res.files["html"].read_text()
    assert "issues.png" in html and "leaks.csv" in html
    summary = json.loads(res.files["summary"].read_text())
    assert summary["leaks"] == len(res.leaks) >= 2 and summary["images"] == res.images


@pytest.mark.parametrize("bf16", [False, True], ids=["projection", "bf16"])
def test_blocked_search_matches_brute_force(bf16, monkeypatch):
    import tlkit.audit.neighbours as nbm

    monkeypatch.setattr(nbm, "BLOCK_BYTES", 700 * 4 * 64)  # several blocks
    rng = np.random.default_rng(0)
    x = rng.random((700, 160)).astype(np.float32)
    x[600:650] = x[:50] + rng.normal(0, 0.03, (50, 160)).astype(np.float32)
    spread = np.linspace(0.08, 0.16, 50, dtype=np.float32)[:, None]  # pairs on both sides of the threshold
    x[650:700] = x[50:100] + spread * rng.normal(0, 1, (50, 160)).astype(np.float32)
    xn = normalise(x)
    nb = search(xn, k=3, threshold=0.98, bf16=bf16)
    s = xn @ xn.T
    np.fill_diagonal(s, -1)
    want = set(zip(*np.nonzero(np.triu(s >= 0.98, 1))))
    got = {tuple(p) for p in nb.pairs.tolist()}
    assert got == want and len(want) >= 60 and ((s > 0.97) & (s < 0.98)).any()
    assert np.allclose(nb.cosine, s[nb.pairs[:, 0], nb.pairs[:, 1]], atol=1e-6)
    planted = np.r_[0:100, 600:700]  # rows with one clear nearest row (the others are uniform noise)
    assert (nb.index[planted, 0] == s.argmax(1)[planted]).all()
    if bf16:  # the k distances are the exact ones of the rows found, nearest first
        exact = np.sqrt(np.clip(2 - 2 * np.take_along_axis(s, nb.index, 1), 0, None))
        assert np.allclose(nb.dist, exact, atol=1e-5) and (np.diff(nb.dist, axis=1) >= 0).all()
    ref = search(xn[:600], k=2, threshold=0.98, ref=xn[600:], bf16=bf16)  # query vs reference
    cross = xn[:600] @ xn[600:].T
    assert {tuple(p) for p in ref.pairs.tolist()} == set(zip(*np.nonzero(cross >= 0.98)))


@pytest.mark.slow
def test_project_review_round_trip_groups_and_propagation(dataset, tmp_path):
    data, flipped = dataset["data"], dataset["flipped"]
    pool = tmp_path / "pool"
    shutil.copytree(data, pool)
    labels = [(p.relative_to(pool).as_posix(), p.parent.name) for p in sorted(pool.rglob("*")) if p.is_file()]
    copies = set(dataset["copies"].values())
    write_csv(tmp_path / "seed.csv", ["path", "label"], [r for r in labels if r[0] not in copies])
    project = Project.create(tmp_path / "proj", pool=pool, image_size=SIZE)
    import_seed_labels(project, tmp_path / "seed.csv")
    res = run_audit(project=project.root, propagate=True)
    assert res.out == project.root / "audit"
    tasks = json.loads(res.files["review"].read_text())
    assert [t["data"]["tlkit_path"] for t in tasks] == [r["path"] for r in res.label_issues]
    scores = [t["predictions"][0]["score"] for t in tasks]
    assert scores == sorted(scores)  # ascending = most suspicious first
    # a reviewer accepts every suggestion on the flipped images: the export goes back through al-import
    accepted = []
    for t in tasks:
        if t["data"]["tlkit_path"] in flipped:
            t["annotations"] = [{"id": 1, "result": t["predictions"][0]["result"], "was_cancelled": False}]
            accepted.append(t["data"]["tlkit_path"])
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    with pytest.raises(TlkitError, match="--overwrite"):
        import_labels(project, tmp_path / "export.json")
    report = import_labels(project, tmp_path / "export.json", overwrite=True)
    assert report.relabeled == len(accepted) >= 4
    # duplicate groups saved for al-round; propagated labels import
    groups = read_project_groups(project.root)
    assert any({*pair} <= set(g) for g in groups for pair in dataset["copies"].items())
    assert {p for p, _ in res.propagated} == copies
    assert import_labels(project, res.files["propagated"]).added == len(copies)
    skip = read_csv(res.files["outliers_skip"])
    assert skip[0] == {"path": "4/astronaut.png", "label": "__skip__"}


def test_one_per_group():
    paths = ["a", "b", "c", "d", "e"]
    cand = np.array([False, True, True, True, True])
    kept = one_per_group(paths, cand, [["a", "b", "c"], ["d", "e"], ["x"]])
    assert kept.tolist() == [False, True, False, True, False]


@pytest.mark.slow
def test_al_round_never_queries_two_copies(tmp_path):
    from tlkit.active.round import run_round
    from tlkit.demo import make_digits_folder

    pool = make_digits_folder(tmp_path / "pool", per_class=4, seed=2)
    files = sorted(pool.rglob("*.png"))
    for i, f in enumerate(files[:10]):
        for k in range(3):
            shutil.copy(f, f.with_name(f"{f.stem}_copy{k}.png"))
    project = Project.create(tmp_path / "proj", pool=pool, classes=[str(d) for d in range(10)], image_size=32)
    run_audit(project=project.root, sheets=False)
    groups = read_project_groups(project.root)
    assert len(groups) >= 10
    res = run_round(project.root, batch=30, strategy="random")
    picked = {r["path"] for r in res.query}
    assert len(res.query) == 30
    assert all(len(picked & set(g)) <= 1 for g in groups)


@pytest.mark.parametrize("case,message", [
    ("unlabeled", "has no labels"),
    ("missing", "does not exist"),
    ("no_out", "--out DIR is required"),
])
def test_bad_inputs_one_line(tmp_path, digits_dir, case, message):
    if case == "unlabeled":
        flat = tmp_path / "flat"
        flat.mkdir()
        for f in sorted(digits_dir.rglob("*.png"))[:6]:
            shutil.copy(f, flat / f"{f.parent.name}_{f.name}")
        args = ["--data", str(flat), "--out", str(tmp_path / "o")]
    elif case == "missing":
        args = ["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]
    else:
        args = ["--data", str(digits_dir)]
    r = run_cli("audit", *args, "--image-size", "32")
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], r.stderr


@pytest.mark.slow
def test_cli_audit_on_a_folder(tmp_path, photos_dir):
    r = run_cli("audit", "--data", str(photos_dir), "--out", str(tmp_path / "o"), "--image-size", "32")
    assert r.returncode == 0, r.stderr
    assert "audited 20 images" in r.stdout and (tmp_path / "o" / "index.html").is_file()


@pytest.mark.slow
def test_features_without_their_images_and_given_probabilities(dataset, tmp_path):
    """A `tlkit extract` folder whose images are gone: one embedding search gives the near-duplicate
    pairs (exact copies, by cosine alone) and the outliers; --pred-probs replaces the k-fold heads."""
    feats = tmp_path / "feats"
    shutil.copytree(dataset["root"] / "out" / "features" / "data", feats)
    meta = json.loads((feats / "meta.json").read_text())
    meta["source"]["root"] = str(tmp_path / "gone")  # as on another machine
    (feats / "meta.json").write_text(json.dumps(meta))
    flipped = set(dataset["flipped"])
    rows = read_csv(feats / "index.csv")
    classes = sorted({r["label"] for r in rows})
    probs = []
    for r in rows:  # a model that is confident and right: the flipped images' true class is not the given one
        p = np.full(len(classes), 0.01)
        given = classes.index(r["label"])
        p[(given + 1) % len(classes) if r["path"] in flipped else given] = 0.91
        probs.append([r["path"], *p.round(3)])
    write_csv(tmp_path / "probs.csv", ["path", *classes], probs)
    res = run_audit(feats, out=tmp_path / "out", pred_probs=tmp_path / "probs.csv", sheets=False)
    assert any("by embeddings alone" in n for n in res.notes)
    assert {r["path"] for r in res.label_issues} == flipped
    assert all(r["suggested"] == classes[(classes.index(r["given"]) + 1) % len(classes)] for r in res.label_issues)
    groups = [{r["path"] for r in g} for g in res.groups]
    exact = next((o, c) for o, c in dataset["copies"].items() if c.endswith("copy_exact.png"))
    assert any(set(exact) <= g for g in groups), groups
    assert all(r["match"] == "near" for g in res.groups for r in g[1:]), "no file hashes without the files"
    assert res.outliers and res.outliers[0]["path"] == "4/astronaut.png"
    write_csv(tmp_path / "short.csv", ["path", *classes], probs[1:])
    with pytest.raises(TlkitError, match=r"has no row for 1 labeled images"):
        run_audit(feats, out=tmp_path / "out2", pred_probs=tmp_path / "short.csv", sheets=False)

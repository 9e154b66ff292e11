"""Active learning on big pools: float16/memmap embeddings, the projection strategies see, faiss k-means."""

from __future__ import annotations

import shutil
import tracemalloc

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.test_active import CLASSES, _label, flat_digits_pool
from tlkit.active.project import Project
from tlkit.active.round import run_round
from tlkit.active.strategies import Approx, PoolView, list_strategies, select
from tlkit.active.strategies import _geometry
from tlkit.active.strategies._scale import geometry


def _blobs(n: int, d: int, k: int, seed: int = 0, rank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``[n, d]`` float32 clustered rows (k well separated blobs), optionally of rank ``rank``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    r = rank or d
    centers = rng.normal(0, 4, (k, r))
    x = centers[y] + rng.normal(0, 1, (n, r))
    if rank is not None:
        x = x @ rng.normal(0, 1, (rank, d)) / np.sqrt(rank)
    return (x + 3).astype(np.float32), y  # + 3: a mean away from 0, as pooled features have


def _pool(x: np.ndarray, y: np.ndarray, labeled: int, seed: int = 0, probs: bool = True) -> PoolView:
    rng = np.random.default_rng(seed)
    lab = np.zeros(len(x), bool)
    lab[rng.choice(len(x), labeled, replace=False)] = True
    k = int(y.max()) + 1
    p = None
    if probs:
        logits = rng.normal(0, 1, (len(x), k)) + 3 * np.eye(k)[y]
        p = np.exp(logits - logits.max(1, keepdims=True))
        p = (p / p.sum(1, keepdims=True)).astype(np.float32)
    mc = None if p is None else np.stack([p] * 3, axis=2)
    return PoolView(x, lab, ~lab, probs=p, mc_probs=mc, labels=np.where(lab, y, -1))


def test_float16_memmap_embeddings_select_as_their_float32_values(tmp_path):
    """A float16 memmap pool gives exactly the picks of the same values held as float32, for every strategy."""
    x, y = _blobs(600, 24, 4)
    x16 = x.astype(np.float16)
    np.save(tmp_path / "x.npy", x16)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    for info in list_strategies():
        a = select(info.name, _pool(mm, y, 20), 15, seed=3)
        b = select(info.name, _pool(x16.astype(np.float32), y, 20), 15, seed=3)
        assert np.array_equal(a.indices, b.indices), info.name


def test_the_projection_keeps_distances_of_low_rank_embeddings_and_coreset_picks_with_them():
    x, y = _blobs(3000, 96, 6, rank=12)
    z = geometry(x, Approx.forced(dim=16), seed=0)
    assert z.shape == (3000, 17) and z.dtype == np.float32 and np.abs(z[:, 16]).max() < 1e-2 * np.abs(z).max()
    i, j = np.arange(0, 3000, 7), np.arange(3, 3000, 7)[: len(np.arange(0, 3000, 7))]
    exact = np.linalg.norm(x[i] - x[j], axis=1)
    assert np.allclose(np.linalg.norm(z[i] - z[j], axis=1), exact, rtol=1e-3, atol=1e-3)
    assert np.allclose(np.linalg.norm(z, axis=1), np.linalg.norm(x, axis=1), rtol=1e-4)  # uncentred: norms kept
    pool = _pool(x, y, 30)
    assert np.array_equal(select("coreset", pool, 20, seed=1).indices,
                          select("coreset", pool, 20, seed=1, approx=Approx.forced(dim=16)).indices)
    # below the threshold nothing is projected
    assert geometry(x, Approx(dim=16), seed=0) is x


@pytest.mark.parametrize("name", [s.name for s in list_strategies()])
def test_every_strategy_works_with_the_approximations_forced_on(tmp_path, name):
    x, y = _blobs(2000, 64, 5)
    np.save(tmp_path / "x.npy", x.astype(np.float16))
    pool = _pool(np.load(tmp_path / "x.npy", mmap_mode="r"), y, 25)
    sel = select(name, pool, 40, seed=0, approx=Approx.forced(dim=8))
    assert len(set(sel.indices.tolist())) == 40 and pool.candidates[sel.indices].all()
    again = select(name, pool, 40, seed=0, approx=Approx.forced(dim=8))
    assert np.array_equal(sel.indices, again.indices)


def test_no_float32_copy_of_a_big_float16_pool():
    """The pool is checked and projected by blocks: numpy's allocations peak at the projection plus a
    few blocks, far below one float32 copy of the embeddings (what the input check used to make)."""
    from tlkit.active.strategies._scale import BLOCK_ROWS

    x, y = _blobs(300_000, 96, 8)
    x16 = x.astype(np.float16)
    del x
    pool = _pool(x16, y, 200)
    float32_copy = x16.size * 4
    tracemalloc.start()
    assert len(select("margin", pool, 20, seed=0)) == 20  # validation only: the embeddings are not needed
    validate_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    z = geometry(x16, Approx.forced(dim=16), seed=0)
    project_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    block = BLOCK_ROWS * 96 * 4
    assert validate_peak < 2 * block + 40 * 2**20, validate_peak  # + probs/mc_probs checks of [n, 8, 3]
    assert project_peak < z.nbytes + 3 * block + 2**20, (project_peak, z.nbytes)
    assert project_peak < 0.3 * float32_copy


@pytest.mark.skipif(not _geometry.faiss_available(), reason="faiss-cpu is not installed (pip install faiss-cpu)")
def test_large_pool_kmeans_through_faiss_and_without_it_finds_the_blobs(monkeypatch):
    x, y = _blobs(4000, 32, 6, seed=2)
    results = {}
    for faiss_on in ("1", "0"):
        monkeypatch.setenv("TLKIT_FAISS", faiss_on)
        with _geometry.large_pool_kmeans():
            labels, centers = _geometry.kmeans(x, 6, np.random.default_rng(0))
        # every blob is one cluster: the clustering equals y up to renaming
        pairs = set(zip(y.tolist(), labels.tolist()))
        assert len(pairs) == 6 and centers.shape == (6, 32)
        results[faiss_on] = labels
    d2 = ((x[:, None, :] - centers[None]) ** 2).sum(-1)
    assert np.array_equal(results["0"], d2.argmin(1))  # labels are each row's nearest centre


def test_float16_project_round_caches_float16_and_selects(tmp_path, pool):
    pool_dir, truth = pool
    r = run_cli("al-init", str(tmp_path / "p"), "--pool", str(pool_dir), "--classes", ",".join(CLASSES),
                "--image-size", "64", "--embedding-dtype", "float16")
    assert r.returncode == 0, r.stderr
    project = Project.open(tmp_path / "p")
    assert project.config.embedding_dtype == "float16"
    first = run_round(project.root, batch=20)
    _label(project, first.query, truth, tmp_path / "l1.csv")
    second = run_round(project.root, batch=10)
    assert len(second.query) == 10 and not {q["path"] for q in second.query} & {q["path"] for q in first.query}
    (cache,) = [p for p in project.cache_dir.iterdir() if p.is_dir()]
    assert cache.name.endswith("-float16") and np.load(cache / "features.npy", mmap_mode="r").dtype == np.float16
    bad = (tmp_path / "p" / "project.yaml").read_text().replace("embedding_dtype: float16", "embedding_dtype: int8")
    (tmp_path / "p" / "project.yaml").write_text(bad)
    r = run_cli("al-round", str(tmp_path / "p"))
    assert r.returncode != 0 and "embedding_dtype is 'int8'" in r.stderr and "Traceback" not in r.stderr
    shutil.rmtree(tmp_path / "p")


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> tuple:
    """100 digits in one flat folder, and the truth."""
    return flat_digits_pool(tmp_path_factory, per_class=10, seed=2)


def test_an_ensemble_scores_the_pool_in_one_pass_as_its_members_would():
    """stacked_proba (one GEMM over the pool for all heads) equals each head's own predict_proba,
    classes without labels included (probability 0)."""
    from tlkit.active import head as heads

    x, y = _blobs(3000, 40, 4, seed=5)
    scaler = heads.Scaler.fit(x)
    members = [heads.fit_head(x[i : 300 + i], np.where(y[i : 300 + i] == 3, 0, y[i : 300 + i]), tuple("abcd"),
                              scaler=scaler, seed=i) for i in range(3)]
    stacked = heads.stacked_proba(members, x, chunk=1000)
    each = np.stack([m.predict_proba(x) for m in members], axis=2)
    assert stacked.shape == (3000, 4, 3)
    np.testing.assert_allclose(stacked, each, atol=2e-6)
    assert stacked[:, 3].max() == 0.0


def test_kmeans_rows_streams_a_float16_memmap_at_full_dimension(tmp_path, monkeypatch):
    """The large path trains on a sample and assigns every row block by block: it finds the blobs,
    each representative is its cluster's member nearest the centre, and no float32 copy of the rows
    is made (blocks of 1 MB here, so that the pool is many blocks)."""
    monkeypatch.setattr(_geometry, "CHUNK_BYTES", 2**20)
    x, y = _blobs(60_000, 64, 6, seed=4)
    np.save(tmp_path / "x.npy", x.astype(np.float16))
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    rows = np.arange(1, 60_000, 2)
    with _geometry.large_pool_kmeans():
        _geometry.kmeans_rows(mm, rows[:5000], 6, np.random.default_rng(0))  # imports (sklearn, faiss) before tracing
        tracemalloc.start()
        labels, rep = _geometry.kmeans_rows(mm, rows, 6, np.random.default_rng(0))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 0.5 * rows.size * 64 * 4, peak
    assert len(set(zip(y[rows].tolist(), labels.tolist()))) == 6  # one cluster per blob
    xr = mm[rows].astype(np.float32)
    for c in range(6):  # the representative is central (the centre was trained on a sample)
        members = np.flatnonzero(labels == c)
        d = ((xr[members] - xr[members].mean(0)) ** 2).sum(1)
        assert rep[c] in members and d[members == rep[c]][0] <= 1.05 * d.min()
    centers = xr[[0, 5, 9, 77]] + 0.5  # the streamed pass, against brute force
    lab2, rep2 = _geometry.assign_rows(mm, rows, centers)
    D = ((xr[:, None, :] - centers[None]) ** 2).sum(-1)
    assert np.array_equal(lab2, D.argmin(1))
    for c in range(4):
        members = np.flatnonzero(lab2 == c)
        assert rep2[c] == members[np.argmin(D[members, c])]


def test_the_small_path_of_kmeans_rows_is_kmeans_on_the_copied_rows():
    x, y = _blobs(800, 16, 4)
    rows = np.arange(0, 800, 3)
    labels, rep = _geometry.kmeans_rows(x.astype(np.float16), rows, 5, np.random.default_rng(7))
    xr = x.astype(np.float16)[rows].astype(np.float32)
    l2, centers = _geometry.kmeans(xr, 5, np.random.default_rng(7))
    assert np.array_equal(labels, l2) and np.array_equal(rep, _geometry.nearest_to_centers(xr, l2, centers))


def test_sampling_strategies_read_full_dimension_rows_instead_of_the_projection():
    """MaxHerding (and auto's phases) read a bounded sample of rows: with the approximations forced on
    they still see every dimension, so they pick what the exact path picks, on data the projection
    would distort (rank 40 > 8 dimensions)."""
    x, y = _blobs(1500, 64, 5, rank=40)
    pool = _pool(x, y, 12)
    infos = {s.name: s for s in list_strategies()}
    assert all(infos[s].full_dim for s in ("auto", "maxherding", "maxherding-entropy", "kmeans", "clue", "probcover"))
    assert not infos["coreset"].full_dim
    for name in ("maxherding", "maxherding-entropy", "auto"):
        exact = select(name, pool, 30, seed=2).indices
        assert np.array_equal(select(name, pool, 30, seed=2, approx=Approx.forced(dim=8)).indices, exact), name
    assert not np.array_equal(select("coreset", pool, 30, seed=2).indices,
                              select("coreset", pool, 30, seed=2, approx=Approx.forced(dim=8)).indices)

"""Active-learning strategies on real arrays: digits pixels as embeddings, a real logistic model."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from tlkit.active.strategies import PoolView, Selection, get_strategy, list_strategies, select
from tlkit.active.strategies import _geometry, auto, coldstart, diversity
from tlkit.core.errors import TlkitError

NAMES = [s.name for s in list_strategies()]
N_PICK = 10


def _fit_probs(X: np.ndarray, y: np.ndarray, idx: np.ndarray, seed: int = 0) -> np.ndarray:
    clf = LogisticRegression(max_iter=300, random_state=seed).fit(X[idx], y[idx])
    P = np.zeros((X.shape[0], 10), dtype=np.float32)
    P[:, clf.classes_] = clf.predict_proba(X)
    return P


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y.astype(np.int64)


def _labeled_mask(y: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(10)])
    return np.isin(np.arange(y.size), idx)


def _pool(X, y, labeled, *, excluded=None, probs=True, mc=True) -> PoolView:
    excluded = np.zeros_like(labeled) if excluded is None else excluded
    lab_idx = np.flatnonzero(labeled)
    P = _fit_probs(X, y, lab_idx) if probs and lab_idx.size else None
    MC = None
    if mc and P is not None:  # a real bootstrap ensemble of 5 models
        rng = np.random.default_rng(1)
        MC = np.stack([_fit_probs(X, y, rng.choice(lab_idx, lab_idx.size), seed=t) for t in range(5)], axis=2)
    labels = np.where(labeled, y, -1)
    return PoolView(X, labeled, ~labeled & ~excluded, P, MC, labels)


@pytest.fixture(scope="module")
def warm(digits) -> PoolView:
    """20 labels (2 per class); 50 rows excluded (neither labeled nor candidates)."""
    X, y = digits
    labeled = _labeled_mask(y, 2)
    excluded = np.zeros_like(labeled)
    excluded[np.flatnonzero(~labeled)[::35][:50]] = True
    return _pool(X, y, labeled, excluded=excluded)


# ------------------------------------------------------------------ registry


def test_registry_lists_sorted_with_descriptions():
    infos = list_strategies()
    assert [i.name for i in infos] == sorted(i.name for i in infos)
    assert {"auto", "random", "margin", "entropy", "least-confidence", "bald", "badge", "coreset", "typiclust",
            "probcover", "ranked-batch", "class-balanced", "kmeans"} <= set(NAMES)
    for i in infos:
        assert i.description and "\n" not in i.description
        assert set(i.needs) <= {"probs", "embeddings", "mc_probs"}


def test_unknown_name_lists_choices(warm):
    with pytest.raises(TlkitError, match=r"unknown strategy 'entrpy' \(did you mean 'entropy'\?\); choose one of: auto, badge"):
        select("entrpy", warm, 5)
    with pytest.raises(TlkitError, match="choose one of: auto"):
        get_strategy("zzzzzz")


# ------------------------------------------------------------------ contract, for every strategy


def _check(sel: Selection, pool: PoolView, m: int) -> None:
    assert sel.indices.shape == (m,) and sel.scores.shape == (m,)
    assert np.unique(sel.indices).size == m
    assert pool.candidates[sel.indices].all() and not pool.labeled[sel.indices].any()


@pytest.mark.parametrize("name", NAMES)
def test_picks_distinct_candidates_deterministically(name, warm):
    a = select(name, warm, N_PICK, seed=3)
    _check(a, warm, N_PICK)
    b = select(name, warm, N_PICK, seed=3)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.strategy.startswith(name)


@pytest.mark.parametrize("name", NAMES)
def test_n_above_candidates_returns_all(name, warm):
    cand = np.zeros_like(warm.candidates)
    cand[np.flatnonzero(warm.candidates)[:7]] = True
    pool = PoolView(warm.embeddings, warm.labeled, cand, warm.probs, warm.mc_probs, warm.labels)
    sel = select(name, pool, 50)
    assert sorted(sel.indices) == sorted(np.flatnonzero(cand))


@pytest.mark.parametrize("name", NAMES)
def test_no_candidates_or_zero_gives_empty(name, warm):
    none = np.zeros_like(warm.candidates)
    pool = PoolView(warm.embeddings, warm.labeled, none, warm.probs, warm.mc_probs, warm.labels)
    assert len(select(name, pool, 5)) == 0
    assert len(select(name, warm, 0)) == 0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["k=1", "one-class-model"])
def test_single_class_probs(name, kind, warm):
    n = warm.n
    if kind == "k=1":
        P, MC = np.ones((n, 1), np.float32), np.ones((n, 1, 4), np.float32)
    else:  # a model that predicts class 3 everywhere, confidently
        P = np.full((n, 10), 0.01, np.float32)
        P[:, 3] = 0.91
        MC = np.repeat(P[:, :, None], 4, axis=2)
    pool = PoolView(warm.embeddings, warm.labeled, warm.candidates, P, MC, warm.labels)
    _check(select(name, pool, N_PICK, seed=1), pool, N_PICK)


@pytest.mark.parametrize("name", NAMES)
def test_cold_start(name, digits):
    X, _ = digits
    none = np.zeros(X.shape[0], dtype=bool)
    pool = PoolView(X, none, ~none, None, None, None)
    if get_strategy(name).cold_start:
        _check(select(name, pool, N_PICK), pool, N_PICK)
    else:
        with pytest.raises(TlkitError, match=r"cold start|mc_probs") as err:
            select(name, pool, N_PICK)
        assert "mc_probs" in str(err.value) or "typiclust" in str(err.value)


# ------------------------------------------------------------------ validation


def test_rejects_malformed_pools(warm):
    E, lab, cand = warm.embeddings, warm.labeled, warm.candidates
    cases = [
        (PoolView(E[:-1], lab, cand, warm.probs), "embeddings must have shape"),
        (PoolView(E, lab.astype(int), cand, warm.probs), "labeled must be a bool mask"),
        (PoolView(E, lab, cand | lab, warm.probs), "both labeled and candidates"),
        (PoolView(E, lab, cand, np.log(warm.probs + 1e-3)), "apply softmax"),
        (PoolView(E, lab, cand, warm.probs[:, :, None]), r"probs must have shape \[n, k\]"),
        (PoolView(E, lab, cand, warm.probs, warm.mc_probs[:, :3]), "classes"),
    ]
    for pool, message in cases:
        with pytest.raises(TlkitError, match=message):
            select("margin", pool, 5)
    with pytest.raises(TlkitError, match="non-negative integer"):
        select("margin", warm, -1)
    with pytest.raises(TlkitError, match="needs embeddings"):
        select("coreset", PoolView(None, lab, cand, warm.probs), 5)
    assert len(select("margin", PoolView(None, lab, cand, warm.probs), 5)) == 5  # embeddings not needed


# ------------------------------------------------------------------ auto


def test_auto_switches_at_documented_threshold(digits, monkeypatch):
    X, y = digits
    assert auto.auto_threshold(10) == max(auto.AUTO_MIN_LABELS, auto.AUTO_LABELS_PER_CLASS * 10)
    few = _pool(X, y, _labeled_mask(y, 2), mc=False)  # 20 labels < threshold 100
    many = _pool(X, y, _labeled_mask(y, 11), mc=False)  # 110 labels >= 100
    assert few.n_labels < auto.auto_threshold(10) <= many.n_labels

    sel = select("auto", few, N_PICK, seed=2)
    assert sel.strategy == f"auto({auto.AUTO_FEW})" == "auto(maxherding-entropy)"
    np.testing.assert_array_equal(sel.indices, select(auto.AUTO_FEW, few, N_PICK, seed=2).indices)
    monkeypatch.setattr(auto, "AUTO_FEW", "typiclust")  # the few-labels phase is its own setting
    assert select("auto", few, N_PICK, seed=2).strategy == "auto(typiclust)"
    assert select("auto", PoolView(X, np.zeros(X.shape[0], bool), np.ones(X.shape[0], bool)), N_PICK).strategy \
        == f"auto({auto.AUTO_COLD})"
    monkeypatch.undo()

    sel = select("auto", many, N_PICK, seed=2)
    assert sel.strategy == "auto(margin+kmeans)"
    cand = many.candidate_indices
    from tlkit.active.strategies.uncertainty import margin_scores

    s = margin_scores(many.probs[cand])
    top = cand[np.argsort(-s)[: auto.AUTO_CANDIDATE_FACTOR * N_PICK]]
    assert set(sel.indices) <= set(top)

    cold = PoolView(X, np.zeros(X.shape[0], bool), np.ones(X.shape[0], bool))
    assert select("auto", cold, N_PICK).strategy == "auto(maxherding)"

    monkeypatch.setattr(auto, "AUTO_LABELS_PER_CLASS", 1)  # threshold max(20, 10) = 20: now trusted
    assert select("auto", few, N_PICK).strategy == "auto(margin+kmeans)"


# ------------------------------------------------------------------ quality against random


def _random_mean(pool, stat, n=N_PICK * 2, seeds=range(10)) -> float:
    return float(np.mean([stat(select("random", pool, n, seed=s).indices) for s in seeds]))


@pytest.mark.parametrize("name", ["margin", "entropy", "least-confidence"])
def test_uncertainty_picks_are_less_confident_than_random(name, warm):
    confidence = lambda idx: warm.probs[idx].max(axis=1).mean()  # noqa: E731
    assert confidence(select(name, warm, N_PICK * 2).indices) < _random_mean(warm, confidence) - 0.05


def test_coreset_picks_are_farther_from_labeled_than_random(warm):
    X, lab = warm.embeddings, warm.labeled_indices
    far = lambda idx: cdist(X[idx], X[lab]).min(axis=1).mean()  # noqa: E731
    assert far(select("coreset", warm, N_PICK * 2).indices) > 1.2 * _random_mean(warm, far)


@pytest.mark.parametrize("name", ["typiclust", "kmeans", "probcover"])
def test_cold_start_covers_more_classes_than_random(name, digits):
    X, y = digits
    none = np.zeros(y.size, bool)
    pool = PoolView(X, none, ~none)
    picked = np.mean([np.unique(y[select(name, pool, 10, seed=s).indices]).size for s in range(5)])
    rand = np.mean([np.unique(y[select("random", pool, 10, seed=s).indices]).size for s in range(50)])
    assert picked >= rand + 1.0, (picked, rand)  # random averages ~6.5 of 10 classes


def test_probcover_covers_more_of_the_pool_than_random(digits, monkeypatch):
    X, y = digits
    none = np.zeros(y.size, bool)
    pool = PoolView(X, none, ~none)
    deltas = []
    radius = coldstart.purity_radius
    monkeypatch.setattr(coldstart, "purity_radius", lambda *a: deltas.append(radius(*a)) or deltas[-1])
    sel = select("probcover", pool, 10)
    Z = coldstart.centred_unit_rows(X)  # the space ProbCover covers (its delta is measured there)
    covered = lambda idx: (cdist(Z, Z[idx]).min(axis=1) <= deltas[0]).mean()  # noqa: E731
    assert deltas[0] > 0
    np.testing.assert_allclose(sel.scores.sum(), covered(sel.indices), rtol=1e-3)  # scores = coverage gains
    assert covered(sel.indices) > 1.5 * _random_mean(pool, covered, n=10, seeds=range(20))


def test_class_balanced_spreads_over_predicted_classes(warm):
    pred = warm.probs.argmax(axis=1)
    n_pred = np.unique(pred[warm.candidates]).size
    sel = select("class-balanced", warm, n_pred)
    assert np.unique(pred[sel.indices]).size == n_pred
    assert np.unique(pred[select("margin", warm, n_pred).indices]).size <= n_pred


# ------------------------------------------------------------------ building blocks


def test_badge_factorised_distances_equal_outer_products(monkeypatch):
    rng = np.random.default_rng(0)
    A1, H1 = rng.normal(size=(37, 4)).astype(np.float32), rng.normal(size=(37, 6)).astype(np.float32)
    A2, H2 = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(5, 6)).astype(np.float32)
    G1 = np.einsum("ik,id->ikd", A1, H1).reshape(37, -1)
    G2 = np.einsum("ik,id->ikd", A2, H2).reshape(5, -1)
    naive = cdist(G1, G2, "sqeuclidean")
    monkeypatch.setattr(_geometry, "CHUNK_BYTES", 64)  # force many row blocks
    got = diversity.gradient_embedding_sq_dists(A1, H1, A2, H2)
    np.testing.assert_allclose(got, naive, rtol=1e-4, atol=1e-3)


def test_chunked_min_distances_equal_naive(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 8)).astype(np.float32)
    rows, centers = np.arange(0, 60, 2), np.array([1, 7, 33])
    monkeypatch.setattr(_geometry, "CHUNK_BYTES", 32)
    got = _geometry.min_sq_dists(X, rows, centers)
    np.testing.assert_allclose(got, cdist(X[rows], X[centers], "sqeuclidean").min(axis=1), rtol=1e-4, atol=1e-4)


def test_bald_is_zero_when_passes_agree():
    from tlkit.active.strategies.bayesian import bald_scores

    agree = np.repeat(np.array([[0.5, 0.5], [0.9, 0.1]])[:, :, None], 3, axis=2)
    disagree = np.array([[[1.0, 0.0], [0.0, 1.0]]])  # [1, k=2, T=2]
    np.testing.assert_allclose(bald_scores(agree), 0.0, atol=1e-9)
    np.testing.assert_allclose(bald_scores(disagree), np.log(2), rtol=1e-6)


def test_bounded_paths_still_pick_valid_rows(warm, monkeypatch):
    """The large-pool code paths (prefilter, sampling, minibatch k-means), forced on a small pool."""
    monkeypatch.setattr(diversity, "RANKED_BATCH_MAX_CANDIDATES", 40)
    monkeypatch.setattr(coldstart, "PROBCOVER_MAX_POINTS", 300)
    monkeypatch.setattr(coldstart, "TYPICALITY_MAX_POINTS", 30)
    monkeypatch.setattr(_geometry, "KMEANS_FULL_WORK", 0)
    from tlkit.active.strategies.uncertainty import least_confidence_scores

    sel = select("ranked-batch", warm, N_PICK)
    _check(sel, warm, N_PICK)
    cand = warm.candidate_indices
    top40 = cand[np.argsort(-least_confidence_scores(warm.probs[cand]))[:40]]
    assert set(sel.indices) <= set(top40)
    for name in ("probcover", "typiclust", "kmeans"):
        _check(select(name, warm, N_PICK), warm, N_PICK)
    none = np.zeros(warm.n, bool)
    cold = PoolView(warm.embeddings, none, ~none)
    _check(select("typiclust", cold, 3), cold, 3)  # 3 clusters of ~600 rows > 30: sampled typicality


# ------------------------------------------------------------------ maxherding, clue, batchbald


def _brute_force_herding(X: np.ndarray, labeled: np.ndarray, cand: np.ndarray, n: int, gamma: float,
                         weights: np.ndarray | None = None) -> list[int]:
    """MaxHerding as written in the paper: the full n x n kernel, every gain recomputed each step
    (``weights [n]``: each row's coverage counted that many times)."""
    w = np.ones(len(X)) if weights is None else weights
    Z = X / np.linalg.norm(X, axis=1, keepdims=True)
    K = np.exp(-gamma * cdist(Z, Z, "sqeuclidean"))
    kmax = K[:, labeled].max(axis=1) if labeled.any() else np.zeros(len(X))
    picked = []
    for _ in range(n):
        gains = (np.maximum(K[cand][:, cand] - kmax[cand][None, :], 0) * w[cand][None, :]).mean(axis=1)
        gains[np.isin(cand, picked)] = -1
        j = int(cand[np.argmax(gains)])
        picked.append(j)
        kmax = np.maximum(kmax, K[:, j])
    return picked


def _herding_case(seed: int, n_labeled: int, monkeypatch):
    """300 rows in 4 shifted blobs, ``n_labeled`` of them labeled; bandwidth fixed at 3, many row blocks.
    Returns ``(rng, X, labeled)`` (the rng continues the draws)."""
    from tlkit.active.strategies import herding

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(300, 12)).astype(np.float32) + 3 * rng.integers(0, 4, size=(300, 1))
    labeled = np.zeros(300, bool)
    labeled[rng.choice(300, n_labeled, replace=False)] = True
    monkeypatch.setattr(herding, "herding_gamma", lambda *a: 3.0)
    monkeypatch.setattr(herding, "knn_gamma", lambda *a: 3.0)  # maxherding-entropy's width
    monkeypatch.setattr(_geometry, "CHUNK_BYTES", 4096)  # many row blocks
    return rng, X, labeled


@pytest.mark.parametrize("n_labeled", [0, 15])
def test_maxherding_matches_brute_force(n_labeled, monkeypatch):
    _, X, labeled = _herding_case(0, n_labeled, monkeypatch)
    pool = PoolView(X, labeled, ~labeled)
    sel = select("maxherding", pool, 12, seed=4)
    np.testing.assert_array_equal(sel.indices, _brute_force_herding(X, labeled, np.flatnonzero(~labeled), 12, 3.0))
    assert np.all(np.diff(sel.scores) <= 1e-6)  # coverage gains shrink (submodular)


@pytest.mark.parametrize("n_labeled", [0, 15])
def test_maxherding_entropy_matches_brute_force_and_is_maxherding_without_a_model(n_labeled, monkeypatch):
    from tlkit.active.strategies import herding

    rng, X, labeled = _herding_case(1, n_labeled, monkeypatch)
    logits = rng.normal(size=(300, 4)) * rng.uniform(0.1, 4, size=(300, 1))  # sure and unsure rows
    P = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    sel = select("maxherding-entropy", PoolView(X, labeled, ~labeled, P), 12, seed=4)
    w = -(P * np.log(P)).sum(1) / np.log(4) + herding.HERDING_WEIGHT_FLOOR
    cand = np.flatnonzero(~labeled)
    np.testing.assert_array_equal(sel.indices, _brute_force_herding(X, labeled, cand, 12, 3.0, w))
    assert not np.array_equal(sel.indices, _brute_force_herding(X, labeled, cand, 12, 3.0)), "the weights matter"
    plain = select("maxherding-entropy", PoolView(X, labeled, ~labeled), 12, seed=4)
    np.testing.assert_array_equal(plain.indices, select("maxherding", PoolView(X, labeled, ~labeled), 12, seed=4).indices)


def test_maxherding_bandwidth_from_median_pair_distance():
    from tlkit.active.strategies import herding

    Z = herding.normalized(np.random.default_rng(0).normal(size=(500, 64)).astype(np.float32))
    med = np.median(cdist(Z, Z, "sqeuclidean")[np.triu_indices(500, 1)])
    gamma = herding.herding_gamma(Z, np.random.default_rng(1))
    np.testing.assert_allclose(gamma, 1 / (herding.MAXHERDING_BANDWIDTH * med), rtol=0.05)


def test_maxherding_entropy_bandwidth_from_the_kth_neighbour():
    """knn_gamma = 1 / (2 * median squared distance to the k-th nearest other row); exact when every row is a query."""
    from tlkit.active.strategies import herding

    rng = np.random.default_rng(0)
    Z = herding.normalized((rng.normal(size=(400, 16)) + 4 * rng.integers(0, 5, size=(400, 1))).astype(np.float32))
    D = cdist(Z, Z, "sqeuclidean")
    kth = np.sort(D, axis=1)[:, herding.HERDING_ENTROPY_KNN]  # column 0 is the row itself
    gamma = herding.knn_gamma(Z, herding.HERDING_ENTROPY_KNN, np.random.default_rng(1))
    np.testing.assert_allclose(gamma, 1 / (2 * np.median(kth)), rtol=1e-3)
    assert gamma > herding.herding_gamma(Z, np.random.default_rng(1))  # clustered rows: the local scale is narrower
    dup = np.repeat(Z[:3], 20, axis=0)  # every 10th neighbour is a duplicate (distance 0): the global width instead
    after_queries = np.random.default_rng(2)
    after_queries.choice(60, 60, replace=False)
    assert herding.knn_gamma(dup, 10, np.random.default_rng(2)) == herding.herding_gamma(dup, after_queries)


def test_cone_is_the_share_of_one_direction():
    from tlkit.active.strategies import herding

    rng = np.random.default_rng(0)
    same = np.tile(rng.normal(size=(1, 8)), (50, 1)) * rng.uniform(1, 3, size=(50, 1))
    assert herding.cone(same) == pytest.approx(1.0, abs=1e-5)  # one direction, any lengths
    spread = rng.normal(size=(20000, 8))
    assert herding.cone(spread) < 0.05  # around the origin
    shifted = spread + 2.0  # a shared offset: in between, and centring removes it
    assert 0.5 < herding.cone(shifted) < 0.99
    assert herding.cone(shifted - shifted.mean(0)) < 1e-6
    assert herding.cone(np.zeros((3, 4))) == 0.0


@pytest.mark.parametrize("below, centred", [(1.01, True), (0.01, False)])
def test_maxherding_entropy_centres_rows_only_below_the_cone_threshold(below, centred, monkeypatch):
    """Below the threshold the picks are brute-force herding on rows centred over candidates and labeled rows;
    above it they are today's (uncentred) picks."""
    from tlkit.active.strategies import herding

    rng, X, labeled = _herding_case(2, 15, monkeypatch)
    X = X + 20.0  # rows in one cone (cone ~ 0.99)
    logits = rng.normal(size=(300, 4)) * rng.uniform(0.1, 4, size=(300, 1))
    P = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    w = -(P * np.log(P)).sum(1) / np.log(4) + herding.HERDING_WEIGHT_FLOOR
    monkeypatch.setattr(herding, "HERDING_ENTROPY_CENTRE_BELOW", below)
    sel = select("maxherding-entropy", PoolView(X, labeled, ~labeled, P), 12, seed=4)
    cand = np.flatnonzero(~labeled)
    plain = _brute_force_herding(X, labeled, cand, 12, 3.0, w)
    centre = _brute_force_herding(X - X.mean(0), labeled, cand, 12, 3.0, w)
    assert plain != centre, "centring matters on this pool"
    np.testing.assert_array_equal(sel.indices, centre if centred else plain)


@pytest.mark.slow
def test_maxherding_memory_is_bounded_on_a_large_pool():
    """20,000 x 1,280: an n x n float32 kernel would take 1.6 GB; the sampled one stays under 200 MB."""
    import tracemalloc

    rng = np.random.default_rng(0)
    X = rng.standard_normal((20_000, 1280), dtype=np.float32)
    labeled = np.zeros(20_000, bool)
    labeled[:200] = True
    pool = PoolView(X, labeled, ~labeled)
    tracemalloc.start()
    sel = select("maxherding", pool, 100)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    _check(sel, pool, 100)
    assert peak < 200 * 2**20, f"{peak / 2**20:.0f} MiB"


def test_clue_weights_uncertain_regions(warm):
    from tlkit.active.strategies.uncertainty import entropy_scores

    ent = lambda idx: entropy_scores(warm.probs[idx]).mean()  # noqa: E731
    picked = np.mean([ent(select("clue", warm, N_PICK * 2, seed=s).indices) for s in range(3)])
    plain = np.mean([ent(select("kmeans", warm, N_PICK * 2, seed=s).indices) for s in range(3)])
    assert picked > plain, (picked, plain)


def test_batchbald_spreads_a_batch_that_bald_piles_up():
    """Ten copies of the most disputed row: BALD takes copies, BatchBALD takes one and moves on."""
    rng = np.random.default_rng(0)
    n, k, T = 60, 3, 8
    mc = rng.dirichlet(np.ones(k), size=(n, T)).transpose(0, 2, 1).astype(np.float32)  # [n, k, T]
    mc[:10] = np.eye(k, dtype=np.float32)[:, [0, 1, 2, 0, 1, 2, 0, 1]]  # passes disagree completely
    P = mc.mean(axis=2)
    none = np.zeros(n, bool)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    pool = PoolView(X, none, ~none, P, mc)
    bald = select("bald", pool, 5, seed=0)
    batch = select("batchbald", pool, 5, seed=0)
    assert set(bald.indices) <= set(range(10))
    assert np.sum(batch.indices < 10) <= 2
    assert batch.indices[0] < 10  # the first pick is BALD's


def test_batchbald_first_score_is_bald(warm):
    from tlkit.active.strategies.bayesian import bald_scores

    sel = select("batchbald", warm, 3)
    np.testing.assert_allclose(sel.scores[0], bald_scores(warm.mc_probs[warm.candidates]).max(), rtol=1e-5)

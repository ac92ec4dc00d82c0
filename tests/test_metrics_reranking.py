"""k-reciprocal re-ranking against a direct transcription of the paper's definitions with Python sets."""

import numpy as np
import pytest
import torch

from evaluation import ReIDEvaluator, evaluate_rank, re_ranking


def rerank_by_definition(qf, gf, k1, k2, lam):
    x = np.concatenate([qf, gf]).astype(np.float64)
    n, nq = len(x), len(qf)
    d = np.array([[np.sum((x[i] - x[j]) ** 2) for j in range(n)] for i in range(n)])
    d = d / d.max(axis=1, keepdims=True)
    ranking = [list(np.argsort(d[i], kind="stable")) for i in range(n)]

    def neighbours(p, k):  # N(p, k): p and its k nearest neighbours
        return set(ranking[p][: k + 1])

    def reciprocal(p, k):  # R(p, k)
        return {g for g in neighbours(p, k) if p in neighbours(g, k)}

    half = int(np.around(k1 / 2))
    vectors = np.zeros((n, n))
    for p in range(n):
        r = reciprocal(p, k1)
        expanded = set(r)
        for q in r:
            rq = reciprocal(q, half)
            if len(r & rq) > 2 / 3 * len(rq):
                expanded |= rq
        for g in expanded:
            vectors[p, g] = np.exp(-d[p, g])
        vectors[p] /= vectors[p].sum()
    vectors = np.array([np.mean([vectors[g] for g in ranking[p][:k2]], axis=0) for p in range(n)])
    jaccard = np.array([[1 - np.minimum(vectors[p], vectors[g]).sum() / np.maximum(vectors[p], vectors[g]).sum()
                         for g in range(nq, n)] for p in range(nq)])
    return (1 - lam) * jaccard + lam * d[:nq, nq:]


@pytest.mark.parametrize(("k1", "k2", "lam", "seed"), [(20, 6, 0.3, 0), (6, 3, 0.5, 1), (5, 1, 0.3, 2)])
def test_re_ranking_matches_definition(k1, k2, lam, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 8))
    x = centres[rng.integers(0, 6, 45)] + 0.7 * rng.normal(size=(45, 8))
    qf, gf = x[:12], x[12:]
    expected = rerank_by_definition(qf, gf, k1, k2, lam)
    got = re_ranking(torch.tensor(qf, dtype=torch.float32), torch.tensor(gf, dtype=torch.float32), k1, k2, lam)
    assert got.shape == (12, 33) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # the case exercises the Jaccard term: re-ranking changes the gallery order of some query
    original = ((qf[:, None] - gf[None]) ** 2).sum(-1)
    assert (np.argsort(got, axis=1, kind="stable") != np.argsort(original, axis=1, kind="stable")).any()


def test_evaluator_with_re_ranking():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(8, 16))
    pids = rng.integers(0, 8, 120)
    groups = rng.integers(0, 3, 120)
    feats = torch.tensor(centres[pids] + 1.2 * rng.normal(size=(120, 16)), dtype=torch.float32)
    evaluator = ReIDEvaluator(30, feat_norm=True, rerank=True)
    evaluator.process(feats, pids, groups)
    result = evaluator.compute()
    normed = torch.nn.functional.normalize(feats, dim=1)
    cmc, m_ap, m_inp = evaluate_rank(re_ranking(normed[:30], normed[30:]), pids[:30], pids[30:], groups[:30],
                                     groups[30:])
    assert result["mAP"] == pytest.approx(m_ap, abs=1e-12)
    assert result["mINP"] == pytest.approx(m_inp, abs=1e-12)
    np.testing.assert_array_equal(result["cmc"], cmc)
    plain = ReIDEvaluator(30, feat_norm=True, rerank=False)
    plain.process(feats, pids, groups)
    assert plain.compute()["mAP"] != pytest.approx(result["mAP"], abs=1e-6)

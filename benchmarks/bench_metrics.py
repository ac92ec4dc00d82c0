"""Speed and memory of the evaluation (evaluation/rank.py, evaluation/reranking.py).

(a) A 4000 x 40000 float32 distance matrix: ``evaluate_rank`` against two per-query baselines that sort each full
    row: the classic market1501 ``eval_func`` loop (argsort of the matrix, then per query masks and a Python loop
    over the row for AP) and the same algorithm with the per-row work in numpy. The baselines are timed on a subset
    of the queries and extrapolated linearly (said in the output); on that subset all three must give the same
    CMC, mAP and mINP. Two matrices: matches at random ranks (nothing to prune: worst case) and matches ranked
    mostly near the top, as in real data. Distances are distinct in every row so that the unstable argsort of
    the classic code and the stable order of ``evaluate_rank`` agree.
(b) ``evaluate_features`` on 20000 query x 100000 gallery features: wall time and peak RSS of a fresh process
    (``ru_maxrss``, baseline taken after the features exist).
(c) k-reciprocal re-ranking at the size of the RGBNT100 test set (1715 queries, 8575 gallery, 3 x 768 features).

Targets: (a) at least 30x faster than the classic loop; (b) peak RSS under 4 GB.
Run: ``.venv/bin/python -m benchmarks.bench_metrics [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from evaluation import evaluate_features, evaluate_rank, re_ranking, squared_euclidean, squared_norms

ROOT = Path(__file__).resolve().parent.parent


def classic_eval(distmat, q_pids, g_pids, q_groups, g_groups, max_rank=50):
    """The market1501 evaluation loop as the field has used it: argsort every row, then per query."""
    indices = np.argsort(distmat, axis=1)
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    for q in range(len(q_pids)):
        order = indices[q]
        keep = np.invert((g_pids[order] == q_pids[q]) & (g_groups[order] == q_groups[q]))
        raw = matches[q][keep]
        if not np.any(raw):
            continue
        cumulative = raw.cumsum()
        last = np.max(np.where(raw == 1)[0])
        all_inp.append(cumulative[last] / (last + 1.0))
        cmc = cumulative.copy()
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        precision = [x / (i + 1.0) for i, x in enumerate(cumulative)]
        all_ap.append((np.asarray(precision) * raw).sum() / raw.sum())
    cmc = np.asarray(all_cmc).astype(np.float32).sum(0) / len(all_cmc)
    return cmc, float(np.mean(all_ap)), float(np.mean(all_inp))


def numpy_per_row_eval(distmat, q_pids, g_pids, q_groups, g_groups, max_rank=50):
    """The same algorithm with the per-row work vectorised: still one full argsort per query."""
    all_cmc, all_ap, all_inp = [], [], []
    for q in range(len(q_pids)):
        order = np.argsort(distmat[q])
        pids = g_pids[order]
        keep = ~((pids == q_pids[q]) & (g_groups[order] == q_groups[q]))
        hits = pids[keep] == q_pids[q]
        if not hits.any():
            continue
        all_cmc.append(np.minimum(np.cumsum(hits), 1)[:max_rank])
        ranks = np.flatnonzero(hits) + 1
        all_ap.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
        all_inp.append(len(ranks) / ranks[-1])
    cmc = np.asarray(all_cmc).astype(np.float32).sum(0) / len(all_cmc)
    return cmc, float(np.mean(all_ap)), float(np.mean(all_inp))


def make_problem(num_q: int, num_g: int, num_ids: int, num_groups: int, near_top: bool, seed: int = 0):
    """Distinct float32 distances (level * num_g + gallery index, exact in float32) on 400 levels drawn uniformly;
    with ``near_top`` other pids take levels 1..399 and a same-pid item level 0 with probability 0.95, otherwise
    400 u^4 (so the farthest match of most queries is near the top, as with a good model)."""
    if 400 * num_g >= 2**24:
        raise ValueError(f"gallery of {num_g} too large for exact distinct float32 distances")
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(0, num_ids, num_q), rng.integers(0, num_ids, num_g)
    q_groups, g_groups = rng.integers(0, num_groups, num_q), rng.integers(0, num_groups, num_g)
    level = rng.integers(1 if near_top else 0, 400, (num_q, num_g), dtype=np.int32)
    if near_top:
        same = q_pids[:, None] == g_pids[None, :]
        n = int(same.sum())
        level[same] = np.where(rng.random(n) < 0.95, 0, (400 * rng.random(n) ** 4).astype(np.int32))
    distmat = (level * np.float32(num_g) + np.arange(num_g, dtype=np.float32)).astype(np.float32)
    return distmat, q_pids, g_pids, q_groups, g_groups


def _same(a, b) -> bool:
    return bool(np.allclose(a[0], b[0], rtol=0, atol=1e-6) and abs(a[1] - b[1]) < 1e-9 and abs(a[2] - b[2]) < 1e-9)


def bench_rank(num_q: int, num_g: int, near_top: bool, classic_subset: int, numpy_subset: int) -> dict:
    problem = make_problem(num_q, num_g, num_ids=num_q // 4, num_groups=6, near_top=near_top)
    distmat, q_pids, g_pids, q_groups, g_groups = problem
    evaluate_rank(distmat[:50], q_pids[:50], g_pids, q_groups[:50], g_groups)  # warm-up
    start = time.perf_counter()
    fast = evaluate_rank(*problem)
    fast_s = time.perf_counter() - start

    out = {"queries": num_q, "gallery": num_g, "matches": "near the top" if near_top else "at random ranks",
           "fast_s": fast_s, "mAP": fast[1], "mINP": fast[2], "Rank-1": float(fast[0][0])}
    sub_fast = {}
    for name, fn, subset in (("classic", classic_eval, classic_subset), ("numpy_per_row", numpy_per_row_eval,
                                                                         numpy_subset)):
        sub = (distmat[:subset], q_pids[:subset], g_pids, q_groups[:subset], g_groups)
        start = time.perf_counter()
        base = fn(*sub)
        seconds = (time.perf_counter() - start) * num_q / subset
        if subset not in sub_fast:
            sub_fast[subset] = evaluate_rank(*sub)
        out[f"{name}_s"] = seconds
        out[f"{name}_timed_queries"] = subset
        out[f"{name}_speedup"] = seconds / fast_s
        out[f"{name}_equal"] = _same(base, sub_fast[subset])
    return out


def _peak_rss_mb() -> tuple[float, float | None]:
    """(ru_maxrss, VmHWM) in MB. After exec, ru_maxrss keeps the parent's peak as a floor (the child started as a
    copy of it); VmHWM is the peak of this process's own memory only (Linux)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        with open("/proc/self/status") as f:
            hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        hwm = None
    return maxrss, hwm


def _features_child(num_q: int, num_g: int, dim: int, chunk_size: int | None) -> None:
    """Runs in a fresh process: builds clustered features, then times evaluate_features; prints JSON."""
    generator = torch.Generator().manual_seed(0)
    num_ids = max(2, num_g // 50)
    centres = torch.randn(num_ids, dim, generator=generator)
    q_pids = torch.randint(0, num_ids, (num_q,), generator=generator)
    g_pids = torch.randint(0, num_ids, (num_g,), generator=generator)
    qf = torch.nn.functional.normalize(centres[q_pids] + 2.0 * torch.randn(num_q, dim, generator=generator), dim=1)
    gf = torch.nn.functional.normalize(centres[g_pids] + 2.0 * torch.randn(num_g, dim, generator=generator), dim=1)
    del centres
    q_groups = torch.randint(0, 6, (num_q,), generator=generator).numpy()
    g_groups = torch.randint(0, 6, (num_g,), generator=generator).numpy()
    q_pids, g_pids = q_pids.numpy(), g_pids.numpy()
    base_maxrss, base_hwm = _peak_rss_mb()
    start = time.perf_counter()
    cmc, m_ap, m_inp = evaluate_features(qf, gf, q_pids, g_pids, q_groups, g_groups, chunk_size=chunk_size)
    seconds = time.perf_counter() - start
    peak_maxrss, peak_hwm = _peak_rss_mb()
    # The distances alone, block by block as evaluate_features computes them: the part that is not ranking.
    start = time.perf_counter()
    gg = squared_norms(gf)
    step = chunk_size or max(1, (1 << 26) // num_g)
    for i in range(0, num_q, step):
        squared_euclidean(qf[i:i + step], gf, g_norms=gg)
    distance_s = time.perf_counter() - start
    print(json.dumps({"queries": num_q, "gallery": num_g, "dim": dim, "chunk_size": chunk_size, "seconds": seconds,
                      "distance_only_s": distance_s, "ru_maxrss_before_mb": base_maxrss,
                      "ru_maxrss_peak_mb": peak_maxrss, "vmhwm_before_mb": base_hwm, "vmhwm_peak_mb": peak_hwm,
                      "mAP": m_ap, "Rank-1": float(cmc[0]), "mINP": m_inp, "threads": torch.get_num_threads()}))


def bench_features(num_q: int, num_g: int, dim: int, chunk_size: int | None = None) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_metrics", "--features-child", str(num_q), str(num_g), str(dim),
           str(chunk_size or 0)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_rerank(num_q: int, num_g: int, dim: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(50, dim, generator=generator)
    qf = centres[torch.randint(0, 50, (num_q,), generator=generator)] + 2 * torch.randn(num_q, dim, generator=generator)
    gf = centres[torch.randint(0, 50, (num_g,), generator=generator)] + 2 * torch.randn(num_g, dim, generator=generator)
    qf, gf = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
    start = time.perf_counter()
    re_ranking(qf, gf)
    return {"queries": num_q, "gallery": num_g, "dim": dim, "seconds": time.perf_counter() - start}


def run(quick: bool) -> dict:
    """All measurements; ``quick`` uses small sizes (a smoke run, not the targets)."""
    if quick:
        sizes, subsets, feats, rerank = (400, 4000), (20, 100), (2000, 10000, 64), (300, 1500, 256)
    else:
        sizes, subsets, feats, rerank = (4000, 40000), (100, 500), (20000, 100000, 256), (1715, 8575, 2304)
    results = {"quick": quick, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "rank": []}
    # First, while this process is small: a child's ru_maxrss starts from the parent's peak.
    results["features"] = bench_features(*feats)
    for near_top in (False, True):
        results["rank"].append(bench_rank(*sizes, near_top=near_top, classic_subset=subsets[0],
                                          numpy_subset=subsets[1]))
    results["rerank"] = bench_rerank(*rerank)
    return results


def _report(results: dict) -> str:
    lines = [f"torch threads {results['threads']}, cpus {results['cpu_count']}" + (" (QUICK sizes)" * results["quick"])]
    for r in results["rank"]:
        lines.append(f"evaluate_rank {r['queries']} x {r['gallery']} float32, matches {r['matches']}: "
                     f"{r['fast_s']:.3f} s (mAP {r['mAP']:.4f}, mINP {r['mINP']:.4f}, R-1 {r['Rank-1']:.4f})")
        for name in ("classic", "numpy_per_row"):
            lines.append(f"  {name:<14} {r[f'{name}_s']:8.2f} s (timed on {r[f'{name}_timed_queries']} queries, "
                         f"extrapolated linearly), speed-up {r[f'{name}_speedup']:7.1f}x, "
                         f"same results on those queries: {r[f'{name}_equal']}")
        lines.append(f"  target: >= 30x the classic loop -> {'met' if r['classic_speedup'] >= 30 else 'NOT met'}")
    f = results["features"]
    peak = f["vmhwm_peak_mb"] if f["vmhwm_peak_mb"] is not None else f["ru_maxrss_peak_mb"]
    lines.append(f"evaluate_features {f['queries']} x {f['gallery']}, dim {f['dim']}: {f['seconds']:.1f} s "
                 f"(of which {f['distance_only_s']:.1f} s computing the distances), mAP {f['mAP']:.4f}, "
                 f"R-1 {f['Rank-1']:.4f}, mINP {f['mINP']:.4f}")
    before = f["vmhwm_before_mb"] or 0.0
    lines.append(f"  peak RSS of the process {peak:.0f} MB (VmHWM; {before:.0f} MB once the features existed; "
                 f"ru_maxrss {f['ru_maxrss_peak_mb']:.0f} MB, before evaluating "
                 f"{f['ru_maxrss_before_mb']:.0f} MB); target < 4096 MB -> {'met' if peak < 4096 else 'NOT met'}")
    r = results["rerank"]
    lines.append(f"re_ranking {r['queries']} x {r['gallery']}, dim {r['dim']}: {r['seconds']:.1f} s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--features-child", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.features_child:
        num_q, num_g, dim, chunk = args.features_child
        _features_child(num_q, num_g, dim, chunk or None)
        return
    results = run(args.quick)
    print(_report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

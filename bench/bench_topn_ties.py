"""Cost of the tie-break at the cut in ``top_n_block``: one block at the MovieLens 25M shape.

Times ``top_n_block`` on 1,024 users x 59,047 items (d=64, N=100, one torch thread, ~150 seen
items per user) with the tie-break and without it (the top-(k+1) cut to k), alternating, best of 5, for MF-like
random factors (no ties) and for the popularity model (every row ties at the cut).
    make bench-topn          (or: .venv/bin/python bench/bench_topn_ties.py)
"""
from __future__ import annotations

import time

import numpy as np
import torch

from lakerec import models
from lakerec.synthetic import ML25M_ITEMS

USERS, DIM, N, REPEATS = 1024, 64, 100, 5


def _best(fn) -> float:
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    seen = rng.integers(0, ML25M_ITEMS, USERS * 150)
    lengths = np.full(USERS, 150)
    cases = {
        "mf": (torch.randn(USERS, DIM), torch.randn(ML25M_ITEMS, DIM), torch.randn(ML25M_ITEMS)),
        "popularity": (torch.zeros(USERS, 1), torch.zeros(ML25M_ITEMS, 1),
                       torch.from_numpy(np.log1p(rng.zipf(1.5, ML25M_ITEMS).clip(max=10**6)).astype(np.float32))),
    }
    buffer = torch.empty(USERS, ML25M_ITEMS)
    tie_break = models._lowest_items_at_the_cut
    for name, (u, v, b) in cases.items():
        result = {}
        plain = (lambda scores, values, items, k: (values[:, :k], items[:, :k]))
        for label, patch in (("with", tie_break), ("without", plain)) * 2:
            models._lowest_items_at_the_cut = patch
            t = _best(lambda: models.top_n_block(u, v, b, lengths, seen, N, buffer))
            result[label] = min(result.get(label, t), t)
        models._lowest_items_at_the_cut = tie_break
        print(f"{name}: with tie-break {result['with'] * 1000:.1f} ms, without {result['without'] * 1000:.1f} ms "
              f"per block ({result['with'] / result['without']:.2f}x)")


if __name__ == "__main__":
    main()

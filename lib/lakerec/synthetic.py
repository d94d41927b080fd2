"""Synthetic interactions in MovieLens-latest layout and random factor models, for tests and scale benchmarks.

Item popularity follows a power law, user activity is log-normally skewed, ratings come from user
and item effects plus noise, timestamps are uniform over 2000-2023. Written in user chunks,
so 25M rows never sit in memory at once.

    python -m lakerec.synthetic --out /tmp/synth --users 162541 --items 59047 --interactions 25000000
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lakerec.models import FactorModel

GENRES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
WORDS = ("night", "city", "love", "war", "river", "star", "ghost", "king", "road", "summer", "code", "island")
OVERSAMPLE = 2.5
ML25M_USERS, ML25M_ITEMS = 162_541, 59_047  # the MovieLens 25M shape the scale benchmarks use
START_TS, END_TS = 946_684_800, 1_700_000_000  # 2000-01-01 .. 2023-11


def write_movielens(
    out: Path,
    n_users: int,
    n_items: int,
    n_interactions: int,
    seed: int = 0,
    popularity_exponent: float = 1.0,
    chunk_users: int = 20_000,
    progress: bool = False,
) -> int:
    """Write ratings.csv, movies.csv and tags.csv under ``out``; returns the number of ratings written."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    _write_movies(out / "movies.csv", n_items, rng)

    item_p = 1.0 / np.arange(1, n_items + 1) ** popularity_exponent
    item_p /= item_p.sum()
    item_order = rng.permutation(n_items)  # popularity rank -> item id, so ids do not encode popularity
    item_quality = rng.normal(0, 0.6, n_items)
    user_bias = rng.normal(3.5, 0.4, n_users)
    activity = rng.lognormal(0, 1.0, n_users)
    per_user = np.maximum(1, np.round(activity / activity.sum() * n_interactions)).astype(np.int64)
    per_user = np.minimum(per_user, n_items)

    written = 0
    with (out / "ratings.csv").open("w", newline="") as fh, (out / "tags.csv").open("w", newline="") as tags_fh:
        fh.write("userId,movieId,rating,timestamp\n")
        tags = csv.writer(tags_fh)
        tags.writerow(["userId", "movieId", "tag", "timestamp"])
        starts = range(0, n_users, chunk_users)
        for start in tqdm(starts, desc="synthetic users", disable=not progress):
            users = np.arange(start, min(start + chunk_users, n_users))
            counts = per_user[users]
            # Draw with replacement, oversampled so that distinct pairs still reach each user's count.
            drawn = np.ceil(counts * OVERSAMPLE).astype(np.int64)
            user_ids = np.repeat(users, drawn)
            ranks = rng.choice(n_items, size=int(drawn.sum()), p=item_p)
            pairs = np.unique(user_ids.astype(np.int64) * n_items + item_order[ranks])
            u, i = pairs // n_items, pairs % n_items
            first = np.searchsorted(u, u, side="left")
            keep = np.arange(len(u)) - first < per_user[u]  # item ids are a random permutation: no bias
            u, i = u[keep], i[keep]
            raw = user_bias[u] + item_quality[i] + rng.normal(0, 0.8, len(u))
            rating = np.clip(np.round(raw * 2) / 2, 0.5, 5.0)
            ts = rng.integers(START_TS, END_TS, len(u))
            lines = "\n".join(
                f"{a + 1},{b + 1},{r:.1f},{t}" for a, b, r, t in zip(u.tolist(), i.tolist(), rating.tolist(), ts.tolist())
            )
            fh.write(lines + "\n")
            written += len(u)
            tagged = rng.random(len(u)) < 0.02
            for a, b, t in zip(u[tagged].tolist(), i[tagged].tolist(), ts[tagged].tolist()):
                tags.writerow([a + 1, b + 1, WORDS[(a + b) % len(WORDS)], t])
    return written


def random_factors(n_users: int, n_items: int, dim: int, seed: int) -> FactorModel:
    """Random factors scaled like a trained model's (scores of order 1, a small item bias): scoring benchmarks."""
    rng = np.random.default_rng(seed)
    return FactorModel(
        rng.normal(0, dim ** -0.5, (n_users, dim)).astype(np.float32),
        rng.normal(0, 1.0, (n_items, dim)).astype(np.float32),
        rng.normal(0, 0.1, n_items).astype(np.float32),
    )


def _write_movies(path: Path, n_items: int, rng: np.random.Generator) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["movieId", "title", "genres"])
        years = rng.integers(1950, 2023, n_items)
        for i in range(n_items):
            k = int(rng.integers(1, 4))
            genres = "|".join(sorted(set(GENRES[j] for j in rng.integers(0, len(GENRES), k))))
            words = " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), 2)).title()
            writer.writerow([i + 1, f"{words} {i + 1} ({years[i]})", genres])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--users", type=int, default=162_541)
    parser.add_argument("--items", type=int, default=59_047)
    parser.add_argument("--interactions", type=int, default=25_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n = write_movielens(args.out, args.users, args.items, args.interactions, args.seed, progress=True)
    print(f"wrote {n} ratings to {args.out}")


if __name__ == "__main__":
    main()

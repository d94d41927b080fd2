"""Item text embeddings with the real packaged encoder: normalised, and only changed texts re-embedded."""
import numpy as np
import pytest

from conftest import make_config
from lakerec import embed, ingest, tables


@pytest.mark.slow
def test_embeds_all_items_then_only_changed_ones(spark, source_copy, tmp_path):
    cfg = make_config(tmp_path, source_copy)
    ingest.run(spark, cfg, "2026-01-01")
    first = embed.run(spark, cfg, "2026-01-01")
    n_items = tables.read(spark, cfg, tables.BRONZE_ITEMS).count()
    assert (first.items, first.embedded, first.reused) == (n_items, n_items, 0)

    rows = {r["item_key"]: r for r in tables.read(spark, cfg, tables.ITEM_TEXT_EMBEDDINGS).collect()}
    vectors = np.array([rows[k]["embedding"] for k in sorted(rows)], dtype=np.float32)
    assert vectors.shape == (n_items, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    again = embed.run(spark, cfg, "2026-01-02")
    assert (again.embedded, again.reused) == (0, n_items)

    movies = source_copy / "movies.csv"
    lines = movies.read_text().splitlines()
    lines[1] = '1,"Toy Story (1995)",Animation|Children|Comedy'
    movies.write_text("\n".join(lines) + "\n")
    ingest.run(spark, cfg, "2026-01-03")
    changed = embed.run(spark, cfg, "2026-01-03")
    assert changed.embedded == 1
    updated = tables.read(spark, cfg, tables.ITEM_TEXT_EMBEDDINGS).where("item_key = '1'").first()
    assert updated["embedded_ds"] == "2026-01-03"
    assert not np.allclose(updated["embedding"], rows["1"]["embedding"])
    assert tables.read(spark, cfg, tables.ITEM_TEXT_EMBEDDINGS).count() == n_items


@pytest.mark.slow  # loads the packaged MiniLM encoder
def test_related_titles_are_closer_than_unrelated_ones():
    encoder = embed.load_encoder(embed.PACKAGED_ENCODER)
    a, b, c = encoder.encode(["space adventure with aliens", "science fiction aliens in space", "romantic comedy wedding"],
                             normalize_embeddings=True)
    assert float(a @ b) > float(a @ c)

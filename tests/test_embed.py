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

    movies = source_copy / "movies.csv"
    with movies.open("a") as fh:
        fh.write("9001,A Later Film (2026),Drama\n")
    ingest.run(spark, cfg, "2026-01-02")
    rerun = embed.run(spark, cfg, "2026-01-01")  # a rerun of the first night sees nothing of the second's drop
    assert (rerun.items, rerun.embedded, rerun.reused) == (n_items, 0, n_items)

    lines = movies.read_text().splitlines()
    lines[1] = '1,"Toy Story (1995)",Animation|Children|Comedy'
    movies.write_text("\n".join(lines) + "\n")
    ingest.run(spark, cfg, "2026-01-03")
    changed = embed.run(spark, cfg, "2026-01-03")
    assert (changed.items, changed.embedded) == (n_items + 1, 2)  # the later film, and the changed text
    updated = tables.read(spark, cfg, tables.ITEM_TEXT_EMBEDDINGS).where("item_key = '1'").first()
    assert updated["embedded_ds"] == "2026-01-03"
    assert not np.allclose(updated["embedding"], rows["1"]["embedding"])
    assert tables.read(spark, cfg, tables.ITEM_TEXT_EMBEDDINGS).count() == n_items + 1
    assert embed.embeddings_by(spark, cfg, "2026-01-02").count() == n_items - 1  # neither text of the 3rd


@pytest.mark.slow  # loads the packaged MiniLM encoder
def test_related_titles_are_closer_than_unrelated_ones():
    encoder = embed.load_encoder(embed.PACKAGED_ENCODER)
    a, b, c = encoder.encode(["space adventure with aliens", "science fiction aliens in space", "romantic comedy wedding"],
                             normalize_embeddings=True)
    assert float(a @ b) > float(a @ c)

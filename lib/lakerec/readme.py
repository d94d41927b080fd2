"""The docs' generated sections: the table contracts (README.md) and the config keys (docs/config.md).

``python -m lakerec.readme`` rewrites the text between each pair of markers; a test fails when
either file drifts from :mod:`lakerec.tables` or :mod:`lakerec.config`.
"""
from __future__ import annotations

import yaml

from lakerec.config import REPO_ROOT, settings

TABLES_MARKERS = ("<!-- tables:begin -->", "<!-- tables:end -->")
CONFIG_MARKERS = ("<!-- config:begin -->", "<!-- config:end -->")
README = REPO_ROOT / "README.md"
CONFIG_DOC = REPO_ROOT / "docs" / "config.md"


def schema_markdown() -> str:
    """Every table contract as a Markdown table (the README's "Tables" section)."""
    from lakerec.tables import ALL_TABLES

    lines = ["| table (under `warehouse/`) | key | partition | columns |", "|---|---|---|---|"]
    for t in ALL_TABLES:
        cols = ", ".join(
            f"`{f.name}` {f.dataType.simpleString()}{'' if f.nullable else ' not null'}" for f in t.schema.fields
        )
        lines.append(f"| `{t.layer}/{t.name}` | {', '.join(t.key) or '—'} | {', '.join(t.partition_by) or '—'} | {cols} |")
    return "\n".join(lines)


def config_markdown() -> str:
    """Every config key with its default and meaning as a Markdown table (the README's "Config keys")."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for s in settings():
        default = yaml.safe_dump(s.default, default_flow_style=True, width=1 << 16).removesuffix("\n...\n").strip()
        cells = (f"`{s.key}`", f"`{default}`", s.doc)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def _replace_between(text: str, markers: tuple[str, str], body: str) -> str:
    begin, end = markers
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def with_tables(readme: str) -> str:
    """README.md's text with its tables section rewritten from the code."""
    return _replace_between(readme, TABLES_MARKERS, schema_markdown())


def with_config(doc: str) -> str:
    """docs/config.md's text with its config table rewritten from the code."""
    return _replace_between(doc, CONFIG_MARKERS, config_markdown())


if __name__ == "__main__":
    for path, rewrite in ((README, with_tables), (CONFIG_DOC, with_config)):
        path.write_text(rewrite(path.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"updated {path}")

"""Credentials out of everything lakerec logs or writes: config logs, MLflow params and artifacts, meta.json.

A password can reach the config in ``train.mlflow_tracking_uri`` (``https://user:pw@host/``,
``?token=...``) or in ``spark.conf`` (``spark.hadoop.fs.s3a.secret.key``, ``fs.azure.account.key.*``).
Every sink passes what it writes through :func:`redacted`; the same pattern becomes Spark's own
``spark.redaction.regex`` so the Spark UI and event logs hide those keys too.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

# A key or query parameter with one of these in its name holds a secret; Spark's default pattern
# (secret|password|token|access.key) misses Azure's fs.azure.account.key.<account> and SAS `sig`.
SECRET_NAME = r"(?i)secret|passw(or)?d|token|key|credential|^sig$"
REDACTED = "***"
_SECRET_NAME = re.compile(SECRET_NAME)


def redacted(value: Any) -> Any:
    """A copy of ``value`` (a config dataclass, mapping, list or string) with every credential replaced by ``***``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: REDACTED if _SECRET_NAME.search(str(k)) else redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return _redacted_uri(value)
    return value


def _redacted_uri(uri: str) -> str:
    """``uri`` without the password of ``user:password@`` and the values of secret-named query parameters."""
    scheme, rest = uri.split("://", 1)
    authority, tail = re.match(r"([^/?#]*)(.*)", rest, re.DOTALL).groups()
    userinfo, at, host = authority.rpartition("@")
    if at and ":" in userinfo:
        authority = f"{userinfo.split(':', 1)[0]}:{REDACTED}@{host}"
    path, question, query = tail.partition("?")
    query, hash_, fragment = query.partition("#")
    params = [_redacted_param(p) for p in query.split("&")]
    return f"{scheme}://{authority}{path}{question}{'&'.join(params)}{hash_}{fragment}"


def _redacted_param(param: str) -> str:
    """One ``name=value`` of a query string, its value hidden when the name is a secret's."""
    name, eq, _ = param.partition("=")
    return f"{name}={REDACTED}" if eq and _SECRET_NAME.search(name) else param

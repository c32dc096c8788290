"""Where a repo's files are: ``resolve_url(host, model, revision, path)``.

- a URL template when ``host`` contains ``{`` - placeholders ``{model}``, ``{revision}``, ``{file}``, e.g.
  ``"https://example.org/{model}/resolve/{revision}/{file}"`` (the Hugging Face hub's layout);
- otherwise a plain prefix: ``{host}/{model}/{file}``; an http(s) URL, or a local directory.

``default_host()`` (from the platform layer): the page origin + ``/models`` in the browser,
``$WEBFORMERS_HOST`` (or None) on CPython.
"""
from __future__ import annotations

from pathlib import Path

from ..platform import default_host

__all__ = ["resolve_url", "default_host", "is_http", "local_path"]

_PLACEHOLDERS = ("{model}", "{revision}", "{file}")


def resolve_url(host: str, model: str, revision: str, path: str) -> str:
    """The URL (or local path) of ``path`` in ``model`` at ``revision`` under ``host``."""
    if "{" in host:
        out = host
        for key, value in (("{model}", model), ("{revision}", revision), ("{file}", path)):
            out = out.replace(key, value)
        if "{" in out or "}" in out:
            raise ValueError(f"host template {host!r} has an unknown placeholder; valid placeholders: "
                             f"{', '.join(_PLACEHOLDERS)}")
        return out
    return f"{host.rstrip('/')}/{model.strip('/')}/{path}"


def is_http(url: str) -> bool:
    """Whether ``url`` is fetched over http(s) (else it is a local path)."""
    return url.startswith(("http://", "https://"))


def local_path(url: str) -> Path:
    """The path of a local ``url`` (a path or a ``file://`` URL)."""
    return Path(url[len("file://"):] if url.startswith("file://") else url)

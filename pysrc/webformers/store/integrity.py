"""Is a file the one the manifest describes? ``await verify(data, entry)``, ``looks_html``, ``IntegrityError``."""
from __future__ import annotations

from .. import platform

__all__ = ["IntegrityError", "verify", "looks_html"]


class IntegrityError(ValueError):
    """A file's bytes are not what the manifest says (size or sha256)."""


async def verify(data, entry: dict) -> str | None:
    """None when ``data`` has the manifest ``entry``'s size and sha256 (each checked when the entry
    gives it), else what is wrong."""
    n = platform.byte_length(data)
    if entry.get("size") is not None and n != entry["size"]:
        return f"{n} bytes instead of {entry['size']}"
    if entry.get("sha256") is None:
        return None
    got = await platform.sha256_hex(data)
    if got != entry["sha256"]:
        return f"sha256 {got[:16]}... instead of {entry['sha256'][:16]}..."
    return None


def looks_html(data, content_type: str) -> bool:
    """Whether a response is an HTML page (a login or error page served with HTTP 200)."""
    if "html" in (content_type or "").lower():
        return True
    head = platform.byte_slice(data, 0, 256).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body"))

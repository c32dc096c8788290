"""CPython side of the platform layer: no page, so events go nowhere and Stop is never requested."""
from __future__ import annotations

__all__ = ["emit_page_event", "stop_requested", "reset_stop", "js_array"]


def emit_page_event(event: dict) -> None:
    """Send ``event`` to the hosting page (none on CPython)."""


def stop_requested() -> bool:
    """Whether the hosting page asked to stop generating (never on CPython)."""
    return False


def reset_stop() -> None:
    """Clear the page's Stop request."""


def js_array(x):
    """``(kind, numpy array)`` for a JS ArrayBuffer / typed array; None for anything else (no JS here)."""
    return None

"""Errors the platform layer raises the same way on both platforms."""
from __future__ import annotations

__all__ = ["RetryableError", "QuotaError"]


class RetryableError(Exception):
    """A download failed in a way worth retrying (network error, truncated body, HTTP 5xx)."""


class QuotaError(Exception):
    """A store refused a file because the storage quota (or the disk) is full."""

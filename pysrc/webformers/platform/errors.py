"""Errors the platform layer raises the same way on both platforms."""
from __future__ import annotations

__all__ = ["RetryableError", "QuotaError", "RuntimeCrashed", "DeviceLost"]


class RetryableError(Exception):
    """A download failed in a way worth retrying (network error, truncated body, HTTP 5xx)."""


class QuotaError(Exception):
    """A store refused a file because the storage quota (or the disk) is full."""


class RuntimeCrashed(RuntimeError):
    """The onnxruntime worker died while (or before) a call used it; its sessions and tensors are gone.
    The next call starts a new worker and a loaded model re-creates its sessions from the cached files."""


class DeviceLost(RuntimeError):
    """The WebGPU device a session ran on was lost; its WebGPU sessions cannot run any more. Unless the model
    was loaded with ``strict=True`` it has re-created its sessions on wasm when this is raised."""

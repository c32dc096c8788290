"""``AutoModelForCausalLM.from_pretrained``: the entry point of the decoder-only models (``.causal_lm``).

This module imports without numpy, so a page may load the tokenizer and open the repo while Pyodide's packages
still load after a snapshot restore (``platform.packages_ready``); what needs numpy is imported once they have.
"""
from __future__ import annotations

__all__ = ["AutoModelForCausalLM"]


class AutoModelForCausalLM:
    """``model = await AutoModelForCausalLM.from_pretrained(model, dtype=, device=, ...)``."""

    def __init__(self):
        raise TypeError("use: model = await AutoModelForCausalLM.from_pretrained(model)")

    @staticmethod
    async def from_pretrained(model, *, dtype="auto", device="auto", revision: str = "main", host: str | None = None,
                              progress_callback=None, strict: bool = False, max_bytes: int | None = None,
                              module: str = "model", execution: str = "auto", max_memory=None) -> "CausalLM":
        """Load a decoder-only language model.

        Args:
            model: a repo id such as ``"webformers/tiny-random-llama"`` (opened with ``ModelRepo.open``), a
                local repo directory on CPython, or an already open ``ModelRepo``.
            dtype: a dtype name (``"q4"``, ``"fp16"``, ... see ``webformers.DTYPES``), ``"auto"`` (the best
                quality the device runs natively, within ``max_bytes``), or ``{module: dtype}``.
            device: ``"wasm"``, ``"webgpu"`` or ``"auto"`` (WebGPU when an adapter exists).
            revision: the repo revision (ignored for an open ``ModelRepo``).
            host: where repos live: an http(s) URL prefix, a URL template with ``{model}``, ``{revision}``
                and ``{file}``, or a local directory (default: ``WEBFORMERS_HOST`` / the page's origin).
            progress_callback: receives the store's download / cache events (``status``, ``file``, ...).
            strict: raise instead of falling back (a dtype the device cannot run natively, WebGPU without an
                adapter).
            max_bytes: the download budget for ``dtype="auto"``.
            module: the ONNX module to load (``onnx/{module}{suffix}.onnx``).
            execution: the execution form per module (``runtime.forms``): ``"auto"`` (fp32 weights on wasm when
                they fit ``max_memory``, else the stored file), ``"native"`` (the stored file) or ``"fp32"``;
                the files are the dtype's either way.
            max_memory: the memory budget for ``execution="auto"``: bytes or a size like ``"1.5GB"`` (default
                2.5 GB).

        Returns:
            A ``CausalLM`` on the loaded session, with ``config.json`` and ``generation_config.json`` (when
            present) applied; loading warnings (e.g. a dtype fallback) are in ``model.warnings``, the load
            times and the execution form (``load_timings["forms"]``) in ``model.load_timings``.

        Raises:
            ValueError: the repo cannot be opened, a file is missing or fails its sha256 check, the dtype,
                device or execution is unknown or not in the repo (the message lists the valid ones), a
                fallback was needed with ``strict=True``, or the session is not a decoder with ``logits`` /
                matching KV outputs.
        """
        from .. import platform
        from ..runtime.forms import check_form_args
        from ..store import ModelRepo

        form_request = check_form_args(execution, max_memory)
        repo = model if isinstance(model, ModelRepo) else await ModelRepo.open(
            model, revision=revision, host=host, progress_callback=progress_callback)
        config = await repo.json("config.json")
        gen = await repo.optional_json("generation_config.json") or {}
        present = [f"present.{i}.{kv}" for i in range(int(config.get("num_hidden_layers", 0) or 0))
                   for kv in ("key", "value")]
        kw = {"dtype": dtype, "device": device, "strict": strict, "progress_callback": progress_callback,
              "keep_on_device": {module: present}, "execution": form_request,
              "config": config}
        if max_bytes is not None:
            kw["max_bytes"] = max_bytes
        # the repo and its config are read while numpy may still be loading (a snapshot boot); the sessions
        # and the model need it
        await platform.packages_ready()
        from ..generation.config import GenerationConfig
        from ..runtime.load import load_sessions
        from .causal_lm import CausalLM

        loaded = await load_sessions(repo, [module], **kw)
        try:
            lm = CausalLM(loaded.sessions[module], config, GenerationConfig.from_dict(gen),
                          dtype=loaded.dtypes.get(module), device=loaded.device, warnings=loaded.warnings)
        except BaseException:
            loaded.dispose()
            raise
        lm.load_timings = dict(loaded.timings)
        if loaded.recovery is not None:  # a fallback (lost WebGPU device) updates device / load_timings / warnings
            loaded.recovery.owners.append(lm)
        return lm

"""The memory plan: before any model file is fetched, the estimated peak of a load against the limits of
the place it runs in (no I/O here).

Estimate (bytes; ``W`` = the plan's file bytes, the weights as stored):

- ``weights``: ``W``. The files are held as buffers (a JS ``Uint8Array`` each in the browser, bytes on
  CPython) until the sessions exist;
- the runtime (the WebAssembly heap in the browser): while a session is created it holds the weights
  copied from those buffers plus the initializers made from them (``CREATE_FACTOR`` x ``W``); once it
  runs, the weights, the KV cache and the activations of a prefill;
- ``kv``: ``2 x layers x kv_heads x head_dim x context x 2 or 4 bytes`` (fp16-activation dtypes: 2);
- ``activations``: one layer's prefill of ``prefill`` tokens (hidden and MLP states, the attention scores
  ``heads x prefill^2``) and one row of logits, in fp32;
- ``overhead``: :data:`RUNTIME_OVERHEAD` (onnxruntime's arena and code, Pyodide and numpy).

``runtime = max(CREATE_FACTOR x W, W + kv + activations) + overhead``; ``total = W + runtime``.

Limits (``memory_limits``): ``max_memory`` when the caller names one (the total); on the wasm device in
the browser the WebAssembly heap's 4 GiB (the runtime part); in the browser ``navigator.deviceMemory``
(GiB, as Chromium reports it: rounded, at most 8) x :data:`DEVICE_MEMORY_SHARE` (the total: one tab
cannot use the whole device); on CPython the physical memory (the total).

``plan_memory(...)`` -> ``MemoryPlan`` (estimate, limits, ``fits``, ``over``: the first limit exceeded);
``MemoryPlanError`` names the estimate, the limit and the dtypes that would fit. ``weights_budget(...)``
is the largest ``W`` every limit allows (``dtype="auto"`` picks within it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .forms import format_bytes

__all__ = ["WASM_HEAP_LIMIT", "DEFAULT_CONTEXT", "DEFAULT_PREFILL", "CREATE_FACTOR", "RUNTIME_OVERHEAD",
           "DEVICE_MEMORY_SHARE", "ModelShape", "Limit", "Estimate", "MemoryPlan", "MemoryPlanError",
           "kv_bytes_per_dtype", "estimate", "memory_limits", "plan_memory", "weights_budget", "fitting_dtypes",
           "check_plan"]

#: WebAssembly (32-bit) memory: onnxruntime-web's heap cannot grow past 4 GiB
WASM_HEAP_LIMIT = 4 * 2**30
#: tokens of KV cache planned for when the caller does not say (at most the model's max_position_embeddings)
DEFAULT_CONTEXT = 2048
#: prompt tokens of one prefill planned for (at most the context)
DEFAULT_PREFILL = 512
#: the runtime's copies of the weights while a session is created (the external data read into the heap,
#: and the initializers built from it)
CREATE_FACTOR = 2
#: onnxruntime's code and arena, Pyodide and numpy
RUNTIME_OVERHEAD = 256 * 2**20
#: the share of ``navigator.deviceMemory`` one tab may plan to use
DEVICE_MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class ModelShape:
    """What the KV cache and activations depend on, from a config.json (0 where it does not say)."""
    layers: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    heads: int = 0
    hidden: int = 0
    intermediate: int = 0
    vocab: int = 0
    max_positions: int = 0

    @classmethod
    def from_config(cls, config: dict | None) -> "ModelShape":
        c = config or {}

        def first(*keys):
            for k in keys:
                v = c.get(k)
                if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                    return v
            return 0
        heads = first("num_attention_heads", "decoder_attention_heads")
        hidden = first("hidden_size", "d_model")
        return cls(layers=first("num_hidden_layers", "decoder_layers"),
                   kv_heads=first("num_key_value_heads") or heads,
                   head_dim=first("head_dim") or (hidden // heads if heads else 0),
                   heads=heads, hidden=hidden,
                   intermediate=first("intermediate_size", "decoder_ffn_dim"),
                   vocab=first("vocab_size"),
                   max_positions=first("max_position_embeddings", "max_target_positions"))


def kv_bytes_per_dtype(dtype: str) -> int:
    """Bytes per KV-cache element for a module of ``dtype``: 2 for the fp16-activation dtypes, else 4."""
    return 2 if dtype.endswith("f16") or dtype == "fp16" else 4


@dataclass(frozen=True)
class Estimate:
    """The parts of a load's estimated peak (bytes); ``runtime`` and ``total`` as in the module docstring."""
    weights: int
    kv: int
    activations: int
    overhead: int
    context: int
    prefill: int

    @property
    def runtime(self) -> int:
        return max(CREATE_FACTOR * self.weights, self.weights + self.kv + self.activations) + self.overhead

    @property
    def total(self) -> int:
        return self.weights + self.runtime

    def as_dict(self) -> dict:
        return {"weights": self.weights, "kv": self.kv, "activations": self.activations,
                "overhead": self.overhead, "context": self.context, "prefill": self.prefill,
                "runtime": self.runtime, "total": self.total}


def estimate(weights: int, shape: ModelShape, *, kv_element_bytes: int = 4, context: int | None = None,
             prefill: int | None = None) -> Estimate:
    """The estimate for ``weights`` file bytes of a model of ``shape`` with ``context`` tokens of KV cache
    (default :data:`DEFAULT_CONTEXT`) and a prefill of ``prefill`` tokens (default :data:`DEFAULT_PREFILL`),
    both at most the model's positions."""
    for name, v in (("context", context), ("prefill", prefill)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"{name} must be a positive number of tokens, got {v!r}")
    ctx = context or DEFAULT_CONTEXT
    if shape.max_positions:
        ctx = min(ctx, shape.max_positions)
    pre = min(prefill or DEFAULT_PREFILL, ctx)
    kv = 2 * shape.layers * shape.kv_heads * shape.head_dim * ctx * kv_element_bytes
    acts = 4 * (pre * (4 * shape.hidden + 3 * shape.intermediate) + shape.heads * pre * pre + shape.vocab)
    return Estimate(int(weights), kv, acts, RUNTIME_OVERHEAD, ctx, pre)


@dataclass(frozen=True)
class Limit:
    """A limit of ``bytes`` on the estimate's ``part`` ("total" or "runtime"), named ``name``."""
    name: str
    bytes: int
    part: str = "total"

    def allows(self, est: Estimate) -> bool:
        return getattr(est, self.part) <= self.bytes

    def describe(self) -> str:
        return f"{self.name} {format_bytes(self.bytes)}"


def memory_limits(*, backend: str, device: str, max_memory: int | None = None,
                  device_memory: int | None = None) -> list[Limit]:
    """The limits a load on ``device`` of ``backend`` ("onnxruntime-web" in the browser, "onnxruntime" on
    CPython) must respect: ``max_memory`` (bytes, when the caller named one), the WebAssembly heap (browser,
    wasm), and ``device_memory`` (bytes: ``navigator.deviceMemory`` in the browser, the physical memory on
    CPython; None: unknown)."""
    out = []
    if max_memory is not None:
        out.append(Limit("max_memory", int(max_memory)))
    browser = backend != "onnxruntime"
    if browser and device == "wasm":
        out.append(Limit("the WebAssembly heap limit (wasm)", WASM_HEAP_LIMIT, "runtime"))
    if device_memory:
        if browser:
            out.append(Limit(f"{DEVICE_MEMORY_SHARE:g} x navigator.deviceMemory "
                             f"({device_memory / 2**30:g} GiB)", int(device_memory * DEVICE_MEMORY_SHARE)))
        else:
            out.append(Limit("the physical memory", int(device_memory)))
    return out


@dataclass
class MemoryPlan:
    """A load's estimate against its limits; ``over`` is the first limit it exceeds (None: it fits);
    ``fitting`` lists the dtypes whose load would fit (filled by the caller that knows the repo)."""
    estimate: Estimate
    limits: list
    fitting: list = field(default_factory=list)

    @property
    def over(self) -> Limit | None:
        return next((lim for lim in self.limits if not lim.allows(self.estimate)), None)

    @property
    def fits(self) -> bool:
        return self.over is None

    def as_dict(self) -> dict:
        return {**self.estimate.as_dict(), "limits": {lim.name: lim.bytes for lim in self.limits},
                "fits": self.fits}


class MemoryPlanError(MemoryError):
    """A load the memory plan refuses: ``estimate`` (bytes), ``limit`` (bytes), ``limit_name`` and
    ``fitting`` (the dtypes that would fit) name why and what would work."""

    def __init__(self, what: str, plan: MemoryPlan):
        lim = plan.over
        est = plan.estimate
        self.estimate = getattr(est, lim.part)
        self.limit = lim.bytes
        self.limit_name = lim.name
        self.fitting = list(plan.fitting)
        part = "the load's estimated peak" if lim.part == "total" else "the runtime's estimated peak"
        fit = (f"dtypes that would fit: {', '.join(self.fitting)} (or dtype='auto')" if self.fitting
               else "no dtype of this repo fits")
        super().__init__(
            f"{what}: {part} {format_bytes(self.estimate)} (weights {format_bytes(est.weights)}, "
            f"KV cache {format_bytes(est.kv)} for {est.context} tokens, activations "
            f"{format_bytes(est.activations)}, overhead {format_bytes(est.overhead)}) is over {lim.describe()}; "
            f"{fit}")


def plan_memory(weights: int, shape: ModelShape, limits: list[Limit], *, kv_element_bytes: int = 4,
                context: int | None = None, prefill: int | None = None) -> MemoryPlan:
    return MemoryPlan(estimate(weights, shape, kv_element_bytes=kv_element_bytes, context=context,
                               prefill=prefill), list(limits))


def weights_budget(shape: ModelShape, limits: list[Limit], *, kv_element_bytes: int = 4,
                   context: int | None = None, prefill: int | None = None) -> int:
    """The largest file bytes every limit allows (0 when none does): the estimate grows with the weights,
    so a bisection finds it."""
    def ok(w):
        return plan_memory(w, shape, limits, kv_element_bytes=kv_element_bytes, context=context,
                           prefill=prefill).fits
    if not ok(0):
        return 0
    lo, hi = 0, 1 << 40
    if ok(hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def _planned(manifest, plan, shape, limits, context, prefill) -> MemoryPlan:
    kv_el = max((kv_bytes_per_dtype(d) for d in plan.dtypes.values()), default=4)
    return plan_memory(plan.bytes, shape, limits, kv_element_bytes=kv_el, context=context, prefill=prefill)


def fitting_dtypes(manifest, modules, shape: ModelShape, limits: list[Limit], *, context=None,
                   prefill=None) -> list[str]:
    """The dtypes every one of ``modules`` has in ``manifest`` whose load would fit ``limits``, largest first."""
    have = [set(manifest.modules[m]) for m in modules]
    common = [d for d in manifest.modules[modules[0]] if all(d in h for h in have)]
    sized = []
    for d in common:
        w = sum(manifest.variant(m, d)["bytes"] for m in modules)
        if plan_memory(w, shape, limits, kv_element_bytes=kv_bytes_per_dtype(d), context=context,
                       prefill=prefill).fits:
            sized.append((w, d))
    return [d for _, d in sorted(sized, reverse=True)]


def check_plan(manifest, plan, shape: ModelShape, limits: list[Limit], *, auto: bool, reselect,
               context=None, prefill=None):
    """``(plan, MemoryPlan)`` for the dtype ``plan`` (``runtime.plan.Plan``) when its load fits ``limits``.
    Otherwise, when ``auto`` (the caller asked for ``dtype="auto"``), ``reselect(max_bytes)`` plans again
    within the weights every limit allows and that plan is returned (its warning says why); else, or when
    nothing fits, ``MemoryPlanError``."""
    mp = _planned(manifest, plan, shape, limits, context, prefill)
    if mp.fits:
        return plan, mp
    mp.fitting = fitting_dtypes(manifest, list(plan.dtypes), shape, limits, context=context, prefill=prefill)
    what = f"{manifest.repo}: loading {', '.join(f'{m} {d}' for m, d in plan.dtypes.items())}"
    if auto:
        budget = weights_budget(shape, limits, kv_element_bytes=4, context=context, prefill=prefill)
        if budget > 0:
            try:
                smaller = reselect(budget)
            except ValueError:
                smaller = None
            if smaller is not None:
                mp2 = _planned(manifest, smaller, shape, limits, context, prefill)
                if mp2.fits:
                    lim = mp.over
                    smaller.warnings.append(
                        f"dtype auto: {', '.join(f'{m} {plan.dtypes[m]} -> {d}' for m, d in smaller.dtypes.items())}: "
                        f"the estimated peak of {', '.join(plan.dtypes.values())} "
                        f"{format_bytes(getattr(mp.estimate, lim.part))} is over {lim.describe()}")
                    return smaller, mp2
    raise MemoryPlanError(what, mp)

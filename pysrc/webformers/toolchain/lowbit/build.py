"""The converter's low-bit variants: q2 / q2f16 / q1 / q1f16 (:data:`.variant.RECIPES`) and the per-layer bit
budget ``qmix``, from the torch model the fp32 graph was exported from.

How the layer weights are made (the report's ``method``):

- ``rtn``: round to nearest on fitted grids (``calibrate=False``);
- ``calibrated``: sequential GPTQ on calibration windows of :func:`.corpus.calibration_text` (the default);
- ``qat``: ``qat_steps`` > 0 — quantization-aware training distilled from the fp32 model, starting from the
  calibrated (or rounded) weights;
- ``budget``: ``qmix`` — bits per layer (1/2/4/8, and for the tied table) chosen by :func:`.budget.choose_bits`
  from measured sensitivities so the file stays within ``budget`` x the fp32 file's bytes, then calibrated.

One set of weights serves a width's fp32 and fp16 forms (q2 and q2f16 share GPTQ / QAT).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np

from . import budget as _budget
from .variant import RECIPES, build_variant, by_initializer, recipe, rtn_weights

#: the low-bit dtypes the converter builds from the torch model
LOWBIT_DTYPES = ("q2", "q2f16", "q1", "q1f16", "qmix")
BUDGET_DTYPE = "qmix"
BUDGET_WIDTHS = (1, 2, 4, 8)
#: graph bytes a quantized matmul adds beyond its initializers (node protos, names), reserved from a budget
NODE_OVERHEAD = 2048


@dataclass
class LowbitOptions:
    """How the converter makes low-bit weights (see the module doc)."""

    calibrate: bool = True
    qat_steps: int = 0
    budget: float | None = None                 # bytes of ``qmix`` relative to the fp32 file
    calib_windows: int = 16
    calib_window: int = 256
    #: sequential GPTQ (each layer calibrated on the quantized earlier layers' outputs, one pass per bit width)
    #: or one pass: the full-precision inputs' Hessians, shared by every width (cheaper)
    calib_sequential: bool = True
    qat_lr: float = 1e-4
    qat_grid_lr: float = 1e-3
    qat_window: int = 128
    qat_windows: int = 256
    qat_batch: int = 4
    qat_checkpoint_dir: str | None = None       # resumable QAT: one checkpoint file per width there
    sensitivity_windows: int = 4
    sensitivity_window: int = 128
    #: ``qmix`` chooses one width per decoder layer, measured with the layer's Linears lowered together (7x fewer
    #: sensitivity runs than one per Linear)
    sensitivity_per_layer: bool = False
    seed: int = 0

    def key(self) -> dict:
        """The options as JSON (for a build cache key and the report); ``sensitivity_per_layer`` only when on, so
        builds without it keep their keys and reports."""
        d = dict(self.__dict__)
        d.pop("qat_checkpoint_dir")
        if not d["sensitivity_per_layer"]:
            d.pop("sensitivity_per_layer")
        return d


@dataclass
class LowbitBuilder:
    """Builds the low-bit variants of one conversion; ``info`` collects what the report says about each."""

    model: object                  # the torch *ForCausalLM (fp32, eval) the graph was exported from
    tokenizer: object
    fp32: object                   # the fp32 onnx.ModelProto
    fp32_bytes: int                # bytes of the fp32 file
    options: LowbitOptions = field(default_factory=LowbitOptions)
    log: object = print
    info: dict = field(default_factory=dict)
    _weights: dict = field(default_factory=dict)
    _mapping: dict | None = None
    _calib: np.ndarray | None = None
    _hessians: dict | None = None

    def mapping(self) -> dict:
        if self._mapping is None:
            from .mapping import linear_initializers

            self._mapping = linear_initializers(self.model, self.fp32)
        return self._mapping

    def calibration_ids(self) -> np.ndarray:
        if self._calib is None:
            from .corpus import calibration_ids

            o = self.options
            self._calib = calibration_ids(self.tokenizer, o.calib_windows, o.calib_window)
        return self._calib

    def method(self) -> str:
        return "qat" if self.options.qat_steps > 0 else ("calibrated" if self.options.calibrate else "rtn")

    def weights(self, bits: int) -> tuple[dict, dict]:
        """({initializer: QuantizedWeight} for every layer MatMul at ``bits``, how they were made), once per width."""
        if bits in self._weights:
            return self._weights[bits]
        o, t = self.options, time.monotonic()
        detail: dict = {"method": self.method()}
        if not o.calibrate and o.qat_steps <= 0:
            w = rtn_weights(self.fp32, bits)
        else:
            init = None
            if o.calibrate:
                init = self._gptq(bits)
                detail["calibration"] = {"windows": o.calib_windows, "window": o.calib_window,
                                         "sequential": o.calib_sequential,
                                         "gptq_seconds": round(time.monotonic() - t, 2)}
            if o.qat_steps > 0:
                w, detail["qat"] = self._qat(bits, init)
            else:
                w = by_initializer(init, self.mapping())
        detail["seconds"] = round(time.monotonic() - t, 2)
        self._weights[bits] = (w, detail)
        return self._weights[bits]

    def _gptq(self, bits) -> dict:
        """{Linear name: QuantizedWeight} by GPTQ at ``bits`` (a width or a per-Linear plan)."""
        from .calibrate import collect_hessians, gptq_model

        if self.options.calib_sequential:
            return gptq_model(self.model, bits, ids=self.calibration_ids(), log=self.log)
        if self._hessians is None:
            self._hessians = collect_hessians(self.model, ids=self.calibration_ids())
        return gptq_model(self.model, bits, hessians=self._hessians, log=self.log)

    def _qat(self, bits: int, init):
        from pathlib import Path

        from .qat import qat

        o, t = self.options, time.monotonic()
        table_bits = RECIPES["q1" if bits == 1 else "q2"][1]
        ckpt = None
        if o.qat_checkpoint_dir:
            ckpt = Path(o.qat_checkpoint_dir) / f"qat_{bits}bit.pt"
        student = copy.deepcopy(self.model)
        try:
            run = qat(student, bits, o.qat_steps, tokenizer=self.tokenizer, init=init, table_bits=table_bits,
                      lr=o.qat_lr, grid_lr=o.qat_grid_lr, batch=o.qat_batch, window=o.qat_window,
                      windows=o.qat_windows, seed=o.seed, checkpoint=ckpt, log=_progress(self.log, o.qat_steps))
        finally:
            del student
        detail = {"steps": o.qat_steps, "lr": o.qat_lr, "grid_lr": o.qat_grid_lr, "batch": o.qat_batch,
                  "window": o.qat_window, "seed": o.seed, "resumed_from": run.resumed_from,
                  "losses": [round(x, 5) for x in run.losses], "seconds": round(time.monotonic() - t, 2)}
        return by_initializer(run.weights, self.mapping()), detail

    def variant(self, dtype: str):
        """The ModelProto of ``dtype`` (one of :data:`LOWBIT_DTYPES`); records ``info[dtype]``."""
        if dtype == BUDGET_DTYPE:
            return self._budget_variant()
        bits, table_bits, act = recipe(dtype)
        w, detail = self.weights(bits)
        self.info[dtype] = {**detail, "layer_bits": bits, "table_bits": table_bits}
        return build_variant(self.fp32, w, table_bits=table_bits, act=act)

    # ------------------------------------------------------------------ the per-layer budget

    def budget_bytes(self) -> tuple[int, dict, dict]:
        """(bytes the plan's weights may take, {Linear: (K, N)}, sizes) for ``options.budget`` x fp32 bytes:
        the fp32 file minus its quantizable weights and table (norms, graph) stays, and each quantized matmul
        reserves :data:`NODE_OVERHEAD`."""
        from .mapping import lm_head_weight, matmul_weights

        f = self.options.budget
        if f is None or not 0 < f < 1:
            raise ValueError(f"budget must be a fraction of the fp32 bytes in (0, 1), got {f!r}")
        inv = {v: k for k, v in self.mapping().items()}
        shapes = {inv[i]: s for i, s in matmul_weights(self.fp32).items() if i in inv}
        table = next(t for t in self.fp32.graph.initializer if t.name == lm_head_weight(self.fp32))
        v, k = int(table.dims[0]), int(table.dims[1])
        float_bytes = 4 * (sum(a * b for a, b in shapes.values()) + v * k)
        kept = self.fp32_bytes - float_bytes
        limit = int(f * self.fp32_bytes) - kept - NODE_OVERHEAD * (len(shapes) + 2)
        sizes = _budget.plan_sizes(shapes, BUDGET_WIDTHS, table_shape=(v, k), table_widths=BUDGET_WIDTHS)
        smallest = sum(min(s.values()) for s in sizes.values())
        if limit < smallest:
            need = (smallest + kept + NODE_OVERHEAD * (len(shapes) + 2)) / self.fp32_bytes
            raise ValueError(f"budget {f} x fp32 bytes is below the smallest plan (every weight at 1 bit): "
                             f"use --budget {need:.3f} or more")
        return limit, shapes, sizes

    def _budget_variant(self):
        o, t = self.options, time.monotonic()
        limit, shapes, sizes = self.budget_bytes()
        sens = _budget.measure_sensitivity(self.model, BUDGET_WIDTHS, tokenizer=self.tokenizer,
                                           ids=self.calibration_ids()[:o.sensitivity_windows, :o.sensitivity_window],
                                           table=True, per_layer=o.sensitivity_per_layer, log=self.log)
        t_sens = time.monotonic() - t
        if o.sensitivity_per_layer:
            plan = _budget.expand_plan(_budget.choose_bits(sens, _budget.layer_sizes(sizes), limit), sizes)
        else:
            plan = _budget.choose_bits(sens, sizes, limit)
        table_bits = plan.pop(_budget.TABLE)
        if o.calibrate:
            w = by_initializer(self._gptq(plan), self.mapping())
        else:
            mp = self.mapping()
            w = rtn_weights(self.fp32, {mp[n]: b for n, b in plan.items()})
        counts = {str(b): sum(1 for x in plan.values() if x == b) for b in sorted(set(plan.values()))}
        self.info[BUDGET_DTYPE] = {
            "method": "budget", "budget": o.budget, "budget_bytes": int(o.budget * self.fp32_bytes),
            "plan_bytes": int(sum(sizes[n][b] for n, b in plan.items()) + sizes[_budget.TABLE][table_bits]),
            "table_bits": table_bits, "layer_bits": counts, "plan": plan,
            "calibrated": o.calibrate, "sensitivity_seconds": round(t_sens, 2),
            "seconds": round(time.monotonic() - t, 2)}
        if o.sensitivity_per_layer:
            self.info[BUDGET_DTYPE]["sensitivity"] = {"unit": "layer", "windows": o.sensitivity_windows,
                                                      "window": o.sensitivity_window}
        return build_variant(self.fp32, w, table_bits=table_bits, act=np.float32)


def _progress(log, steps: int):
    """QAT's per-step lines as a progress bar: one log line per ~10% (and the last step)."""
    every = max(1, steps // 10)
    t0 = time.monotonic()

    def line(msg: str):
        try:
            done = int(msg.split()[2].split("/")[0])
        except (IndexError, ValueError):
            log(msg)
            return
        if done % every == 0 or done == steps:
            bar = "#" * (20 * done // max(steps, 1))
            log(f"qat [{bar:<20}] {msg[4:]} ({time.monotonic() - t0:.0f} s)")
    return line

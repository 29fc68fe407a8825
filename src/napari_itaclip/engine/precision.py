"""Precision modes (docs/method.md §9.6): what "fp32", "fp16", "fp16-cast" and "bf16" do.

- "fp32": float32 everywhere, and truly so: `exact_fp32` turns off TF32 (cuDNN convolutions,
  cuBLAS and oneDNN matrix products) for the duration of a run.
- "fp16" / "bf16": float32 weights under autocast (matrix products and convolutions in half
  precision; LayerNorm, softmax and the residual stream in float32).
- "fp16-cast": the authors' GPU setting, OpenAI's `clip.load` on CUDA: Conv, Linear and
  attention weights and the projections cast to float16, LayerNorm computed in float32 and
  cast back, everything else (residual stream, attention softmax) in float16.

torch is imported inside the functions: importing the engine imports no torch.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext

PRECISIONS = ("auto", "fp32", "fp16", "fp16-cast", "bf16")
# Modes that cast the model's weights, and the dtype they cast to.
CAST_DTYPES = {"fp16-cast": "float16"}
# Modes refused on the CPU: its float16 kernels are few and slow.
NOT_ON_CPU = ("fp16", "fp16-cast")


def resolve_precision(precision, device) -> str:
    """`"auto"` is fp16 autocast on CUDA (the paper's setting) and fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision in NOT_ON_CPU and device.type == "cpu":
        raise ValueError(
            f"precision {precision!r} is not supported on the CPU; use 'fp32' or 'bf16'"
        )
    return precision


def autocast(device, precision: str):
    """The autocast context for `precision` (a no-op for fp32 and for cast weights)."""
    import torch

    if precision == "fp32" or precision in CAST_DTYPES:
        return nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def cast_model(model, precision: str) -> None:
    """Cast an open_clip CLIP in place for a cast mode (nothing for the others), as open_clip's
    own `precision="fp16"` builds it and OpenAI's `clip.load` on CUDA loads it: weights by
    `convert_weights_to_lp`, every LayerNorm computing in float32 (`LayerNormFp32`)."""
    if precision not in CAST_DTYPES:
        return
    import torch
    from open_clip.model import convert_weights_to_lp
    from open_clip.transformer import LayerNorm, LayerNormFp32

    convert_weights_to_lp(model, getattr(torch, CAST_DTYPES[precision]))
    for module in model.modules():
        if type(module) in (torch.nn.LayerNorm, LayerNorm):
            # Same parameters, a forward that upcasts: OpenAI's LayerNorm.
            module.__class__ = LayerNormFp32


# exact_fp32 is re-entrant across threads: the first run in saves the process's settings,
# the last run out restores them.
_EXACT_LOCK = threading.Lock()
_exact_runs = 0
_saved_settings = None


def _legacy_switches():
    """(getter, setter) of torch's float32 switches that a host application may have set."""
    import torch

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    return {
        "cudnn": (lambda: cudnn.allow_tf32, lambda value: setattr(cudnn, "allow_tf32", value)),
        "matmul": (lambda: matmul.allow_tf32, lambda value: setattr(matmul, "allow_tf32", value)),
        "float32_matmul": (torch.get_float32_matmul_precision, torch.set_float32_matmul_precision),
    }


def _fp32_precision_backends() -> list:
    """The backends of torch's newer per-backend `fp32_precision` settings (torch >= 2.9)."""
    import torch

    backends = torch.backends
    candidates = [backends, backends.cuda.matmul, backends.cudnn, backends.mkldnn]
    for parent in (backends.cudnn, backends.mkldnn):
        candidates += [getattr(parent, name, None) for name in ("conv", "rnn", "matmul")]
    return [b for b in candidates if b is not None and hasattr(b, "fp32_precision")]


def _float32_settings():
    # torch refuses to read a legacy switch once the newer API set its backend: only the
    # readable ones are saved (and restored).
    legacy = {}
    for name, (get, _) in _legacy_switches().items():
        try:
            legacy[name] = get()
        except RuntimeError:
            continue
    return legacy, [(b, b.fp32_precision) for b in _fp32_precision_backends()]


def _restore(settings) -> None:
    legacy, per_backend = settings
    switches = _legacy_switches()
    for name, value in legacy.items():
        switches[name][1](value)
    # After the legacy switches (which write these too); only what differs, since writing
    # one marks its backend as set through the newer API.
    for backend, value in per_backend:
        if backend.fp32_precision != value:
            backend.fp32_precision = value


@contextmanager
def exact_fp32(precision: str):
    """Within the block, with precision "fp32", float32 products are float32: no TF32 in cuDNN
    convolutions or cuBLAS products (cuDNN allows it by default on Ampere and later) and
    `torch.get_float32_matmul_precision()` is "highest" (a host may have set "high", which also
    lets oneDNN on the CPU round to bf16). The caller's settings come back afterwards, also
    when the block raises. Other precisions: nothing changes."""
    global _exact_runs, _saved_settings
    if precision != "fp32":
        yield
        return
    import torch

    with _EXACT_LOCK:
        if _exact_runs == 0:
            _saved_settings = _float32_settings()
        _exact_runs += 1
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        with _EXACT_LOCK:
            _exact_runs -= 1
            if _exact_runs == 0:
                _restore(_saved_settings)
                _saved_settings = None

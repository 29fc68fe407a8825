"""The targets `bench_engine.py` checks its results against (issue 13, docs/performance.md)."""

from __future__ import annotations

PAPER_TOTAL_S = 0.1  # paper preset, 500x375, text cached; off the CPU
SPEEDUP_VS_NAIVE = {"cpu": 1.2, "other": 20.0}  # encoder stage, batched against naive
FP32_MAX_ABS_DIFF = 1e-4  # device fp32 against CPU fp32, probabilities
FP16_LABEL_AGREEMENT = 0.99  # half-precision labels against fp32 labels, same device


def check(value, target: str, met: bool) -> dict:
    return {"value": value, "target": target, "met": bool(met)}


def targets(scenarios: dict, device: str) -> dict:
    """Each target the results allow checking: value, target and whether it is met."""
    checks = {}
    on_cpu = device == "cpu"
    segment = scenarios.get("segment", {})
    if "timings_s" in segment and not on_cpu:
        total = segment["timings_s"]["total"]
        checks["paper_preset_total_s"] = check(total, f"< {PAPER_TOTAL_S}", total < PAPER_TOTAL_S)
    if "speedup_vs_naive_encoder" in segment:
        goal = SPEEDUP_VS_NAIVE["cpu" if on_cpu else "other"]
        ratio = segment["speedup_vs_naive_encoder"]
        checks["speedup_vs_naive_encoder"] = check(ratio, f">= {goal}", ratio >= goal)
    precision = scenarios.get("precision", {})
    if "fp32_max_abs_diff_vs_cpu" in precision:
        diff = precision["fp32_max_abs_diff_vs_cpu"]
        checks["fp32_vs_cpu"] = check(diff, f"<= {FP32_MAX_ABS_DIFF}", diff <= FP32_MAX_ABS_DIFF)
    for half in ("fp16", "fp16-cast", "bf16"):
        agreement = precision.get(f"{half}_label_agreement_vs_fp32")
        if agreement is not None:
            target = f">= {FP16_LABEL_AGREEMENT}"
            checks[f"{half}_labels"] = check(agreement, target, agreement >= FP16_LABEL_AGREEMENT)
    for preset, figures in scenarios.get("throughput", {}).items():
        if isinstance(figures, dict) and "images_per_s" in figures:
            checks[f"throughput_{preset}_images_per_s"] = figures["images_per_s"]
    peaks = [
        figures.get("peak_cuda_mb", 0)
        for figures in scenarios.values()
        if isinstance(figures, dict)
    ]
    if any(peaks):
        checks["peak_cuda_mb"] = max(peaks)
    return checks

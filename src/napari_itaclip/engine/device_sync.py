"""Waiting for asynchronous devices: CUDA and MPS queue kernels and return at once.

Timings, progress and copies to the host must follow what the device has finished, not what
the host has queued; on the CPU everything is finished when the call returns.
"""

from __future__ import annotations

import torch


def synchronize(device: torch.device) -> None:
    """Wait until `device` has finished the work queued on it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def completion_marker(device: torch.device):
    """An event recorded after the work queued so far on `device` (`.synchronize()` waits
    for it, `.query()` tells whether it is done), or None where that work is already done
    when the call returns (the CPU)."""
    if device.type == "cuda":
        event = torch.cuda.Event()
        event.record()
        return event
    if device.type == "mps":
        event = torch.mps.event.Event()
        event.record()
        return event
    return None

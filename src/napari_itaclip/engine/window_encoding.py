"""The encoder stage: an image's sliding windows through the encoder, in memory-bounded chunks.

A chunk holds up to `batch_size` encoder images (windows x views). On device out-of-memory
the chunk is halved and retried, for the rest of that run only. On a multi-core CPU each
chunk is split across worker threads, one torch thread each (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial

import torch

from .device_sync import completion_marker
from .encoder import encode_dense
from .precision import autocast
from .windows import Window, make_views, patch_features

# Allocation failures that CUDA, cuBLAS and cuDNN report as plain RuntimeErrors.
OUT_OF_MEMORY_MESSAGES = (
    "out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED",
)


def is_out_of_memory(error: RuntimeError) -> bool:
    """Whether `error` says the device ran out of memory (and nothing else went wrong)."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or any(
        message in str(error) for message in OUT_OF_MEMORY_MESSAGES
    )


def encode_windows(
    visual,
    normalised: torch.Tensor,
    windows: list[Window],
    views: tuple[int, ...],
    sink: Callable[[int, int, torch.Tensor], None],
    *,
    precision: str,
    batch_size: int,
    threads: int,
    report: Callable[[int], None],
    checkpoint: Callable[[], None],
) -> None:
    """`windows` of the (3, h, w) resized image, each in `views` (windows.make_views), through
    the encoder in chunks of at most `batch_size` images.

    sink(start, stop, features) gets the (V, k, N, D) L2-normalised patch features of
    windows start:stop; report(windows done) once the device has finished a chunk;
    checkpoint() before every chunk (it cancels by raising). threads: CPU worker threads
    (below 2, or on other devices, the chunk is encoded directly).
    """
    device = normalised.device
    # Every run starts from the configured batch size, so one memory spike slows one run.
    windows_per_chunk = max(1, batch_size // len(views))
    encode_images = partial(_encode_images, visual, precision)
    done = 0
    # On an asynchronous device a chunk is reported when the next one is queued and the
    # device has finished it: the bar follows the device, and the device never waits.
    unreported = None
    with _cpu_data_parallel(encode_images, device, threads) as encode:
        while done < len(windows):
            checkpoint()
            chunk = windows[done : done + windows_per_chunk]
            crops = torch.stack([normalised[:, win.y0 : win.y1, win.x0 : win.x1] for win in chunk])
            features = _encode_chunk(encode, crops, views)
            if features is None:  # out of memory: retry with half as many windows
                if len(chunk) == 1:
                    crop = max(crops.shape[-2:])
                    raise MemoryError(out_of_memory_message(len(views), crop, precision, device))
                windows_per_chunk = len(chunk) // 2
                continue
            sink(done, done + len(chunk), features)
            done += len(chunk)
            if unreported is not None:
                _report_finished(*unreported, report)
            unreported = (completion_marker(device), done)
    if unreported is not None:
        _report_finished(*unreported, report)


def _report_finished(marker, done: int, report: Callable[[int], None]) -> None:
    if marker is not None:
        marker.synchronize()
    report(done)


def _encode_images(visual, precision: str, images: torch.Tensor) -> torch.Tensor:
    # Inference and autocast modes are per thread, so every worker thread enters them. The
    # images take the weights' dtype, as OpenAI's encode_image does: float16 for a cast
    # model, unchanged otherwise.
    with torch.inference_mode(), autocast(images.device, precision):
        return encode_dense(visual, images.to(visual.conv1.weight.dtype))


def _one_torch_thread() -> None:
    """Encoder pool initialiser: this worker computes with one torch thread."""
    # A thread takes the process-wide count on its first torch call; make that call first, or
    # it would later replace the 1 with whatever another thread has set since.
    torch.get_num_threads()
    torch.set_num_threads(1)


@contextmanager
def _cpu_data_parallel(encode_images, device: torch.device, threads: int):
    """Yield the function that encodes a batch of images.

    On a multi-core CPU a batch is split across the cores, one torch thread each: the
    encoder's per-image matrices and element-wise steps scale better that way than with
    every operation split across threads (see docs/performance.md). Images are
    independent, so the result is the same. Other devices encode directly.
    """
    if device.type != "cpu" or threads < 2:
        yield encode_images
        return
    try:
        with ThreadPoolExecutor(
            threads, thread_name_prefix="itaclip-encoder", initializer=_one_torch_thread
        ) as pool:

            def encode(images: torch.Tensor) -> torch.Tensor:
                parts = images.tensor_split(min(threads, len(images)))
                return torch.cat(list(pool.map(encode_images, parts)))

            yield encode
    finally:
        # The workers' set_num_threads(1) also set the count that threads starting later
        # begin with; give back the caller's, which itself never changed.
        torch.set_num_threads(torch.get_num_threads())


def _encode_chunk(encode, crops: torch.Tensor, views: tuple[int, ...]):
    """(V, k, N, D) patch features of a chunk of crops, or None when the device ran out of
    memory."""
    try:
        return patch_features(encode(make_views(crops, views)), len(views))
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
    # Only outside the handler is the traceback gone, and with it the failed chunk's
    # tensors, so only now can their cached memory be given back.
    torch.cuda.empty_cache()
    return None


def out_of_memory_message(n_views: int, crop: int, precision: str, device: torch.device) -> str:
    """What could still help when even one crop x crop window (in `n_views` views) does not
    fit."""
    fixes = ["free GPU memory (other programs or models on it)"]
    if precision == "fp32":
        fixes.append("precision='fp16'")
    if n_views > 1:
        fixes.append(f"image_engineering=False (1 image per window instead of {n_views})")
    fixes.append(f"a smaller crop (now {crop})")
    if device.type != "cpu":
        fixes.append("device='cpu'")
    return (
        "out of GPU memory even with one window per chunk; try "
        + ", ".join(fixes[:-1])
        + f" or {fixes[-1]}"
    )

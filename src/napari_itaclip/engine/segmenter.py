"""`ITACLIP`: owns the model and the text cache, and composes the stages in order.

image -> uint8 RGB -> resize (short side S) -> normalise -> sliding windows x views through
the modified encoder, in memory-bounded chunks -> stitched logits -> per band of output rows:
bilinear upsampling to the original size, PAMR, query softmax, variant max -> area threshold
(a second pass, needing global counts) -> labels -> closing.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from . import image as image_stage
from .classes import ClassList
from .encoder import check_supported, encode_dense, pack_linear_weights, patch_size
from .models import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    autocast,
    load_clip,
    resolve_device,
    resolve_precision,
)
from .pamr import halo, pamr_affinity, pamr_iterate
from .postprocess import (
    argmax_counts,
    class_probabilities,
    close_labels,
    label_dtype,
    labels_from_probabilities,
    surviving_classes,
)
from .presets import Preset
from .request import Request, prepare
from .resample import upsample_rows
from .result import Cancelled, SegmentationResult, package_version
from .text import (
    TextFeatureCache,
    cache_root,
    fuse_aux_text,
    query_features,
)
from .windows import N_VIEWS, crop_views, sliding_windows, stitch_window, views_to_grid_logits

Progress = Callable[[int, int, str], None]

# Working memory for one band of the refinement stage; bands are as tall as this allows.
DEFAULT_BAND_MEMORY_MB = 1536
# Queries iterated together by PAMR inside a band.
PAMR_QUERY_CHUNK = 8
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


def _one_torch_thread() -> None:
    """Encoder pool initialiser: this worker computes with one torch thread."""
    # A thread takes the process-wide count on its first torch call; make that call first, or
    # it would later replace the 1 with whatever another thread has set since.
    torch.get_num_threads()
    torch.set_num_threads(1)


class ITACLIP:
    """Training-free open-vocabulary segmentation with CLIP (ITACLIP, CVPRW 2025).

    The model loads once and stays on its device; text features are cached in memory and on
    disk. `segment` is the one entry point used by the napari widget, the notebook API and the
    command line.

    model, pretrained: an open_clip model name and pretrained tag, or `pretrained` a local
        weights file (OpenAI .pt archive or state dict). OpenAI weights get QuickGELU.
    device: "auto" (cuda, then mps, then cpu), "cpu", "cuda", "cuda:N" or "mps".
    precision: "auto" (fp16 autocast on CUDA, fp32 elsewhere), "fp32", "fp16" or "bf16".
    batch_size: encoder images per chunk (default 128 on CUDA, 16 elsewhere). On GPU
        out-of-memory the chunk is halved for the rest of that run; every run starts again
        from batch_size.
    cache_dir: text-feature cache folder (default $NAPARI_ITACLIP_CACHE or the user cache);
        `False` keeps features in memory only.

    Threads: `segment` calls on one segmenter take turns (a second caller waits for the first
    run to end), since runs share the model and the text cache; separate segmenters run side
    by side. On a multi-core CPU the encoder splits each chunk across as many worker threads
    as `torch.get_num_threads()` gave when the segmenter was built, one torch thread each; the
    calling thread's own torch thread count is never changed.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        pretrained=DEFAULT_PRETRAINED,
        device="auto",
        precision="auto",
        *,
        quick_gelu: bool | None = None,
        batch_size: int | None = None,
        cache_dir=None,
        band_memory_mb: int = DEFAULT_BAND_MEMORY_MB,
    ):
        resolved = resolve_device(device)
        precision = resolve_precision(precision, resolved)
        clip, tokenizer, identity = load_clip(model, pretrained, quick_gelu)
        self._setup(
            clip, tokenizer, identity, resolved, precision, batch_size, cache_dir, band_memory_mb
        )

    @classmethod
    def from_open_clip(
        cls,
        model,
        tokenizer=None,
        device="auto",
        precision="auto",
        *,
        batch_size: int | None = None,
        cache_dir=None,
        band_memory_mb: int = DEFAULT_BAND_MEMORY_MB,
    ) -> ITACLIP:
        """Wrap an already-built open_clip CLIP (its weights are used as they are)."""
        import open_clip

        resolved = resolve_device(device)
        precision = resolve_precision(precision, resolved)
        if tokenizer is None:
            tokenizer = open_clip.tokenizer.SimpleTokenizer(
                context_length=int(getattr(model, "context_length", 77))
            )
        self = cls.__new__(cls)
        identity = f"open_clip:{type(model).__name__}"
        self._setup(
            model, tokenizer, identity, resolved, precision, batch_size, cache_dir, band_memory_mb
        )
        return self

    def _setup(
        self, clip, tokenizer, identity, device, precision, batch_size, cache_dir, band_memory_mb
    ):
        if not hasattr(clip, "visual"):
            raise TypeError(f"expected an open_clip CLIP model, got {type(clip).__name__}")
        check_supported(clip.visual)
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model = clip.to(device).eval()
        if device.type == "cpu":
            pack_linear_weights(self.model.visual)
        self.tokenizer = tokenizer
        self.model_identity = identity
        self.device = device
        self.precision = precision
        self.batch_size = batch_size or (128 if device.type == "cuda" else 16)
        self.band_memory_mb = band_memory_mb
        # Taken once: a thread whose first torch call falls while another run's encoder
        # workers start reads 1.
        self._encoder_threads = torch.get_num_threads()
        # Re-entrant so that a progress or cancel callback may itself run a segmentation.
        self._run_lock = threading.RLock()
        self._cache_dir = cache_dir
        self._text_cache: TextFeatureCache | None = None

    # ------------------------------------------------------------------ text
    @property
    def text_cache(self) -> TextFeatureCache:
        if self._text_cache is None:
            use_disk = self._cache_dir is not False
            root = None if self._cache_dir in (None, False) else self._cache_dir
            from pathlib import Path

            self._text_cache = TextFeatureCache.for_model(
                self.model,
                self.precision,
                self.device,
                Path(root) if root else cache_root(),
                use_disk,
            )
        return self._text_cache

    def text_features(
        self,
        class_list: ClassList,
        aux_texts: list[str] | None,
        c_def: float,
        progress: Progress | None = None,
        checkpoint: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """(queries, D) query features, fused with the auxiliary texts when given."""
        amp = autocast(self.device, self.precision)
        args = (self.model, self.tokenizer, self.text_cache)
        names = query_features(*args, class_list.queries, self.device, amp, progress, checkpoint)
        if not aux_texts or c_def == 0:
            return names
        aux = query_features(*args, aux_texts, self.device, amp, progress, checkpoint)
        return fuse_aux_text(names, aux, class_list.query_class, class_list.background, c_def)

    # --------------------------------------------------------------- segment
    def segment(
        self,
        image,
        classes=None,
        *,
        request: Request | None = None,
        progress: Progress | None = None,
        cancel: Callable[[], bool] | None = None,
        **options,
    ) -> SegmentationResult:
        """Segment `image` into the classes of a request.

        image: numpy (H, W), (H, W, 3) or (H, W, 4); see `image.to_rgb_uint8` for dtypes.
        request: a `Request` from `prepare` (it may also be given as `classes`). Without one,
            `classes` and `options` (preset, aux_text, probability_downsample,
            probability_budget_mb and any `PARAMETERS` name) are passed to `prepare` first.
        progress: called as progress(done, total, stage) per text batch, encoder chunk and band.
        cancel: polled between text batches, encoder chunks, bands and PAMR steps; returning
            True raises `Cancelled`.
        """
        start = time.perf_counter()
        if isinstance(classes, Request):
            classes, request = None, classes
        if request is None:
            if classes is None:
                raise TypeError("segment() needs classes (or a request from prepare())")
            request = prepare(classes, **options)
        elif classes is not None or options:
            raise TypeError("give segment() either a request or classes and options, not both")
        params = request.params
        rgb = image_stage.to_rgb_uint8(image)
        image_stage.check_image_size(*rgb.shape[:2], params, max(patch_size(self.model.visual)))
        factor = request.probability_factor(*rgb.shape[:2])
        report = progress or (lambda done, total, stage: None)

        def checkpoint():
            if cancel is not None and cancel():
                raise Cancelled("segmentation cancelled")

        checkpoint()
        timings: dict[str, float] = {}
        with self._run_lock, torch.inference_mode():
            with self._timed(timings, "text"):
                text = self.text_features(
                    request.class_list, request.aux_texts, params.c_def, report, checkpoint
                )
            with self._timed(timings, "resize"):
                resized = image_stage.resize_short_side(
                    rgb, params.short_side, params.max_long_side
                )
                normalised = image_stage.normalise(resized)[0].to(self.device)
            with self._timed(timings, "encoder"):
                logits = self.window_logits(normalised, text, params, report, checkpoint)
            with self._timed(timings, "refine"):
                labels, probabilities = self.refine(
                    normalised,
                    logits,
                    rgb.shape[:2],
                    request.class_list,
                    params,
                    factor,
                    report,
                    checkpoint,
                )
        if params.closing:
            with self._timed(timings, "closing"):
                labels = close_labels(labels)
        timings["total"] = time.perf_counter() - start
        return SegmentationResult(
            labels=labels,
            probabilities=probabilities,
            class_names=request.class_names,
            background=request.class_list.background,
            parameters=self.run_record(request, factor, rgb.shape[:2], resized.shape[:2]),
            timings=timings,
            probability_factor=factor,
        )

    def run_record(self, request: Request, factor: int, image_shape, resized_shape) -> dict:
        """Everything a result was made with (JSON-ready): the one place it is built."""
        return {
            **request.record(),
            "probability_downsample": factor,
            "probability_budget_mb": request.record_budget(),
            "model": self.model_identity,
            "device": str(self.device),
            "precision": self.precision,
            "image_shape": [int(s) for s in image_shape],
            "resized_shape": [int(s) for s in resized_shape],
            "napari_itaclip_version": package_version(),
        }

    @contextmanager
    def _timed(self, timings: dict[str, float], stage: str):
        """Add a stage's wall time to `timings`; on CUDA, after the device has finished it
        (kernels run asynchronously, so without the sync the time lands in a later stage)."""
        tick = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - tick

    # --------------------------------------------------------------- encoder
    def window_logits(
        self,
        normalised: torch.Tensor,
        text: torch.Tensor,
        params: Preset,
        report: Progress,
        checkpoint: Callable[[], None],
    ) -> torch.Tensor:
        """(Q, h, w) stitched, count-averaged window logits at the resized size."""
        _, h, w = normalised.shape
        windows = sliding_windows(h, w, params.crop, params.stride)
        views = N_VIEWS if params.image_engineering else 1
        # Every run starts from the configured batch size, so one memory spike slows one run.
        windows_per_chunk = max(1, self.batch_size // views)
        canvas = torch.zeros((text.shape[0], h, w), device=self.device)
        count = torch.zeros((h, w), device=self.device)
        done = 0
        with self._cpu_data_parallel() as encode:
            while done < len(windows):
                checkpoint()
                chunk = windows[done : done + windows_per_chunk]
                crops = torch.stack(
                    [normalised[:, win.y0 : win.y1, win.x0 : win.x1] for win in chunk]
                )
                grid_logits = self._encode_windows(encode, crops, text, params)
                if grid_logits is None:  # out of memory: retry with half as many windows
                    if len(chunk) == 1:
                        raise MemoryError(self._out_of_memory_message(params))
                    windows_per_chunk = len(chunk) // 2
                    continue
                for window, crop_logits in zip(chunk, grid_logits, strict=True):
                    stitch_window(canvas, count, crop_logits, window)
                done += len(chunk)
                report(done, len(windows), "encoder")
        return canvas / count

    def _encode_images(self, images: torch.Tensor) -> torch.Tensor:
        # Inference and autocast modes are per thread, so every worker thread enters them.
        with torch.inference_mode(), autocast(self.device, self.precision):
            return encode_dense(self.model.visual, images)

    @contextmanager
    def _cpu_data_parallel(self):
        """Yield the function that encodes a batch of images.

        On a multi-core CPU a batch is split across the cores, one torch thread each: the
        encoder's per-image matrices and element-wise steps scale better that way than with
        every operation split across threads (see docs/performance.md). Images are
        independent, so the result is the same. Other devices encode directly.
        """
        threads = self._encoder_threads
        if self.device.type != "cpu" or threads < 2:
            yield self._encode_images
            return
        try:
            with ThreadPoolExecutor(
                threads, thread_name_prefix="itaclip-encoder", initializer=_one_torch_thread
            ) as pool:

                def encode(images: torch.Tensor) -> torch.Tensor:
                    parts = images.tensor_split(min(threads, len(images)))
                    return torch.cat(list(pool.map(self._encode_images, parts)))

                yield encode
        finally:
            # The workers' set_num_threads(1) also set the count that threads starting later
            # begin with; give back the caller's, which itself never changed.
            torch.set_num_threads(torch.get_num_threads())

    def _encode_windows(self, encode, crops, text, params: Preset):
        """Grid logits of a chunk of windows, or None when the device ran out of memory."""
        grid = tuple(
            s // p for s, p in zip(crops.shape[-2:], patch_size(self.model.visual), strict=True)
        )
        try:
            tokens = encode(crop_views(crops, params.image_engineering))
            return views_to_grid_logits(tokens, text, grid, params.image_engineering, params.c_img)
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
        # Only outside the handler is the traceback gone, and with it the failed chunk's
        # tensors, so only now can their cached memory be given back.
        torch.cuda.empty_cache()
        return None

    def _out_of_memory_message(self, params: Preset) -> str:
        """What could still help when even one window does not fit."""
        fixes = ["free GPU memory (other programs or models on it)"]
        if self.precision == "fp32":
            fixes.append("precision='fp16'")
        if params.image_engineering:
            fixes.append("image_engineering=False (1 image per window instead of 5)")
        fixes.append(f"a smaller crop (now {params.crop})")
        if self.device.type != "cpu":
            fixes.append("device='cpu'")
        return (
            "out of GPU memory even with one window per chunk; try "
            + ", ".join(fixes[:-1])
            + f" or {fixes[-1]}"
        )

    # ---------------------------------------------------------------- refine
    def band_rows(self, n_queries: int, width: int, margin: int, factor: int) -> int:
        """Output rows per band so that one band's working set fits band_memory_mb.

        A band holds the refined logits and probabilities of its own rows for all queries,
        and, over the band plus its halo, the image, the affinities and one chunk of
        PAMR_QUERY_CHUNK queries being iterated.
        """
        per_core_row = 2 * n_queries
        per_halo_row = 25 + 3 * min(n_queries, PAMR_QUERY_CHUNK) if margin else 0
        budget_rows = self.band_memory_mb * 2**20 // (4 * width)
        rows = (budget_rows - per_halo_row * 2 * margin) // (per_core_row + per_halo_row)
        rows = max(rows, 64, margin // 2)
        return max(factor, rows // factor * factor)

    def refine(
        self,
        normalised: torch.Tensor,
        logits: torch.Tensor,
        size: tuple[int, int],
        class_list: ClassList,
        params: Preset,
        factor: int,
        report: Progress,
        checkpoint: Callable[[], None],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Labels (H, W) and class probabilities (C, H/f, W/f) at the original size."""
        height, width = size
        n_classes = len(class_list)
        query_class = torch.tensor(class_list.query_class, device=self.device)
        margin = halo(params.pamr_steps, params.pamr_dilations)
        rows = self.band_rows(logits.shape[0], width, margin, factor)
        bands = [(y, min(y + rows, height)) for y in range(0, height, rows)]
        out_h, out_w = math.ceil(height / factor), math.ceil(width / factor)
        probabilities = np.empty((n_classes, out_h, out_w), np.float32)
        labels = np.empty((height, width), label_dtype(n_classes))

        def band_probabilities(y0: int, y1: int) -> torch.Tensor:
            if not params.pamr_steps:
                band = upsample_rows(logits, size, y0, y1)
                return class_probabilities(band, query_class, n_classes, params.logit_scale)
            # PAMR over the band plus its halo; queries are independent given the affinities,
            # so they are iterated a chunk at a time and only the band's own rows are kept.
            # A band can take tens of seconds, so cancel is polled before every PAMR step.
            e0, e1 = max(0, y0 - margin), min(height, y1 + margin)
            affinity = pamr_affinity(upsample_rows(normalised, size, e0, e1), params.pamr_dilations)
            band = torch.empty((logits.shape[0], y1 - y0, width), device=self.device)
            for q0 in range(0, logits.shape[0], PAMR_QUERY_CHUNK):
                chunk = upsample_rows(logits[q0 : q0 + PAMR_QUERY_CHUNK], size, e0, e1)
                chunk = pamr_iterate(
                    chunk, affinity, params.pamr_dilations, params.pamr_steps, checkpoint
                )
                band[q0 : q0 + PAMR_QUERY_CHUNK] = chunk[:, y0 - e0 : y1 - e0]
            return class_probabilities(band, query_class, n_classes, params.logit_scale)

        two_pass = params.area_thd is not None
        stored = factor == 1  # full-size probabilities are kept, so pass 2 needs no recompute
        total = len(bands) * (2 if two_pass else 1)
        done = 0
        keep = None
        if two_pass:
            counts = torch.zeros(n_classes, dtype=torch.long)
            for y0, y1 in bands:
                checkpoint()
                p = band_probabilities(y0, y1)
                counts += argmax_counts(p)
                if stored:
                    probabilities[:, y0:y1] = p.cpu().numpy()
                done += 1
                report(done, total, "refine")
            keep_np = surviving_classes(counts, params.area_thd, class_list.background).numpy()
            keep = torch.from_numpy(keep_np).to(self.device)
        for y0, y1 in bands:
            checkpoint()
            if two_pass and stored:
                probabilities[~keep_np, y0:y1] = 0
                p = torch.from_numpy(probabilities[:, y0:y1]).to(self.device)
            else:
                p = band_probabilities(y0, y1)
                if keep is not None:
                    p[~keep] = 0
                if stored:
                    probabilities[:, y0:y1] = p.cpu().numpy()
            if not stored:
                pooled = F.avg_pool2d(p[None], factor, ceil_mode=True)[0]
                probabilities[:, y0 // factor : y0 // factor + pooled.shape[1]] = (
                    pooled.cpu().numpy()
                )
            labels[y0:y1] = labels_from_probabilities(p, params.prob_thd).cpu().numpy()
            done += 1
            report(done, total, "refine")
        return labels, probabilities

"""ITACLIP.segment end to end: presets, outputs, progress, cancel, errors, loading."""

import copy
import json
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_itaclip import ITACLIP, Cancelled, SegmentationResult
from napari_itaclip.engine.presets import PRESETS
from napari_itaclip.engine.refine import band_rows

SMALL = {"short_side": 64, "stride": 56}
CLASSES = ["background, sky", "red thing, red blob", "blue thing"]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_end_to_end(segmenter, rgb_image, preset):
    background = PRESETS[preset].background
    result = segmenter.segment(rgb_image, CLASSES, preset=preset, **SMALL)
    assert isinstance(result, SegmentationResult)
    assert result.labels.shape == rgb_image.shape[:2] and result.labels.dtype == np.uint8
    assert result.probabilities.shape == (3, *rgb_image.shape[:2])
    assert result.probabilities.dtype == np.float32
    assert result.probabilities.min() >= 0 and result.probabilities.max() <= 1
    assert result.labels.max() < 3
    assert result.class_names == ["background", "red thing", "blue thing"]
    assert result.background == background
    params = json.loads(json.dumps(result.parameters))
    assert params["short_side"] == 64 and params["logit_scale"] == PRESETS[preset].logit_scale
    assert params["classes"].splitlines()[1] == "red thing, red blob"
    assert {"text", "encoder", "refine", "total"} <= set(result.timings)


def test_labels_follow_probabilities_without_closing_or_thresholds(segmenter, rgb_image):
    result = segmenter.segment(rgb_image, CLASSES, preset="coco_stuff", closing=False, **SMALL)
    np.testing.assert_array_equal(result.labels, result.probabilities.argmax(0))


def test_grey_uint16_and_rgba_inputs(segmenter):
    grey = (np.arange(40 * 50).reshape(40, 50) * 20).astype(np.uint16)
    assert segmenter.segment(grey, CLASSES, preset="fast", **SMALL).labels.shape == (40, 50)
    rgba = np.zeros((30, 20, 4), np.uint8)
    assert segmenter.segment(rgba, CLASSES, preset="fast", **SMALL).labels.shape == (30, 20)


def test_aux_text_changes_non_background_only(segmenter, rgb_image):
    plain = segmenter.segment(rgb_image, CLASSES, preset="voc21", pamr_steps=0, **SMALL)
    aux = "red thing >=something red\nblue thing >=something blue"
    fused = segmenter.segment(
        rgb_image, CLASSES, preset="voc21", aux_text=aux, pamr_steps=0, **SMALL
    )
    assert not np.allclose(plain.probabilities, fused.probabilities)
    assert fused.parameters["aux_text"] == aux
    same = segmenter.segment(
        rgb_image, CLASSES, preset="voc21", aux_text=aux, c_def=0, pamr_steps=0, **SMALL
    )
    np.testing.assert_allclose(same.probabilities, plain.probabilities, atol=1e-6)


def test_progress_per_chunk_and_band_and_cancel(segmenter, rgb_image):
    windows = {"short_side": 64, "crop": 32, "stride": 16}  # 15 windows x 5 views: 5 chunks
    calls = []
    segmenter.segment(
        rgb_image, CLASSES, preset="voc21", progress=lambda *a: calls.append(a), **windows
    )
    encoder = [c for c in calls if c[2] == "encoder"]
    refine = [c for c in calls if c[2] == "refine"]
    assert encoder[-1][0] == encoder[-1][1] == 15 and len(encoder) == 5
    assert refine[-1][0] == refine[-1][1] == 2  # area threshold: two passes over one band

    seen = []

    def cancel_after_first_chunk():
        return any(c[2] == "encoder" for c in seen)

    with pytest.raises(Cancelled):
        segmenter.segment(
            rgb_image,
            CLASSES,
            preset="voc21",
            progress=lambda *a: seen.append(a),
            cancel=cancel_after_first_chunk,
            **windows,
        )
    assert [c for c in seen if c[2] == "encoder"] == [encoder[0]]


def test_small_bands_equal_one_band(tiny_clip, rgb_image):
    image = np.repeat(rgb_image, 4, axis=0)  # 240 rows: several 64-row bands with a 160-row halo
    one = ITACLIP.from_open_clip(tiny_clip, device="cpu", cache_dir=False)
    banded = ITACLIP.from_open_clip(tiny_clip, device="cpu", cache_dir=False, band_memory_mb=1)
    assert band_rows(80, image.shape[1], 160, 1, banded.band_memory_mb) < image.shape[0]
    a = one.segment(image, "voc21", preset="voc21", **SMALL)
    b = banded.segment(image, "voc21", preset="voc21", **SMALL)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
    np.testing.assert_array_equal(a.labels, b.labels)


@pytest.mark.parametrize("factor", [1, 3, 4])
def test_band_working_set_fits_the_budget(factor):
    n_queries, width, margin, budget_mb = 40, 1000, 160, 256
    rows = band_rows(n_queries, width, margin, factor, budget_mb)
    assert rows % factor == 0 and rows > 64
    halo_floats = (rows + 2 * margin) * (25 + 3 * 8)  # image, affinities, one query chunk
    assert (rows * 2 * n_queries + halo_floats) * 4 * width <= budget_mb * 2**20
    taller = rows + factor
    assert (taller * 2 * n_queries + (taller + 2 * margin) * 49) * 4 * width > budget_mb * 2**20
    # a budget too small for any band still gives bands of at least 64 rows
    assert band_rows(n_queries, width, margin, factor, 1) >= 64


def test_downsampled_probabilities_are_block_means(segmenter, rgb_image):
    full = segmenter.segment(rgb_image[:59], CLASSES, preset="voc21", **SMALL)
    small = segmenter.segment(
        rgb_image[:59], CLASSES, preset="voc21", probability_downsample=4, **SMALL
    )
    assert small.probability_factor == 4 and small.probabilities.shape == (3, 15, 20)
    np.testing.assert_array_equal(small.labels, full.labels)
    np.testing.assert_allclose(
        small.probabilities[:, 1, 2], full.probabilities[:, 4:8, 8:12].mean((1, 2)), atol=1e-5
    )
    np.testing.assert_allclose(
        small.probabilities[:, 14, 0], full.probabilities[:, 56:59, 0:4].mean((1, 2)), atol=1e-5
    )


def test_more_than_256_classes_gives_uint16(segmenter, rgb_image):
    classes = [f"thing number {i}" for i in range(300)]
    result = segmenter.segment(rgb_image[:20, :20], classes, preset="fast", short_side=32)
    assert result.labels.dtype == np.uint16 and result.probabilities.shape[0] == 300


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"preset": "nope"}, ValueError, "unknown preset 'nope'"),
        ({"strid": 3}, ValueError, "unknown parameter"),
        ({"stride": 300}, ValueError, r"stride \(300\) must not be larger than crop"),
        ({"prob_thd": -0.1}, ValueError, "prob_thd"),
        ({"area_thd": -1}, ValueError, "area_thd"),
        ({"pamr_steps": -1}, ValueError, "pamr_steps"),
        ({"probability_downsample": 0}, ValueError, "probability_downsample"),
        ({"aux_text": "blue thing >=x"}, ValueError, "no line for 1 class"),
    ],
)
def test_bad_parameters(segmenter, rgb_image, kwargs, error, message):
    with pytest.raises(error, match=message):
        segmenter.segment(rgb_image, CLASSES, **kwargs)


@pytest.mark.parametrize(
    ("image", "classes", "message"),
    [
        (np.zeros((0, 4, 3), np.uint8), CLASSES, "empty"),
        (np.full((4, 4), np.nan), CLASSES, "NaN"),
        (np.zeros((4, 4, 2), np.uint8), CLASSES, "channels"),
        (np.zeros((8, 8, 3), np.uint8), "", "empty"),
        (np.zeros((8, 8, 3), np.uint8), ["a", "a"], "duplicate"),
    ],
)
def test_bad_inputs(segmenter, image, classes, message):
    with pytest.raises(ValueError, match=message):
        segmenter.segment(image, classes, preset="fast")


def test_device_and_precision_errors(tiny_clip):
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            ITACLIP.from_open_clip(tiny_clip, device="cuda")
    with pytest.raises(ValueError, match="unknown device|unsupported device"):
        ITACLIP.from_open_clip(tiny_clip, device="tpu")
    with pytest.raises(ValueError, match="precision"):
        ITACLIP.from_open_clip(tiny_clip, device="cpu", precision="fp8")
    with pytest.raises(TypeError, match="open_clip CLIP"):
        ITACLIP.from_open_clip(torch.nn.Linear(2, 2), device="cpu")


def test_openai_layout_file_loads_with_quickgelu_and_openai_rounding(
    tiny_clip, tiny_weights, rgb_image
):
    from open_clip.transformer import QuickGELU

    loaded = ITACLIP.from_pretrained(pretrained=str(tiny_weights), device="cpu", cache_dir=False)
    assert isinstance(loaded.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    # OpenAI's loader stores linear weights in fp16 first: the same weights rounded that way
    w = loaded.model.visual.transformer.resblocks[0].attn.in_proj_weight
    w0 = tiny_clip.visual.transformer.resblocks[0].attn.in_proj_weight
    torch.testing.assert_close(w, w0.half().float(), atol=0, rtol=0)
    result = loaded.segment(rgb_image, CLASSES, preset="fast", **SMALL)
    assert result.parameters["model"].startswith("file:")


def test_weights_file_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        ITACLIP.from_pretrained(pretrained=str(tmp_path / "missing.pt"), device="cpu")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read weights file"):
        ITACLIP.from_pretrained(pretrained=str(junk), device="cpu")


def test_offline_without_weights_says_how_to_fix(monkeypatch):
    from napari_itaclip.engine import models

    monkeypatch.setattr(models, "weights_cached", lambda *a: False)
    monkeypatch.setattr(models, "_reachable", lambda host, timeout=3.0: False)
    with pytest.raises(models.WeightsUnavailableError, match="NAPARI_ITACLIP_WEIGHTS") as info:
        ITACLIP.from_pretrained(device="cpu")
    assert "pretrained=" in str(info.value)


def test_weights_env_variable_replaces_default(monkeypatch, tiny_weights):
    monkeypatch.setenv("NAPARI_ITACLIP_WEIGHTS", str(tiny_weights))
    assert ITACLIP.from_pretrained(device="cpu", cache_dir=False).model_identity.startswith("file:")


# ------------------------------------------------------------- construction
def test_constructor_takes_built_parts(tiny_clip, rgb_image):
    import open_clip

    tokenizer = open_clip.tokenizer.SimpleTokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seg = ITACLIP(tiny_clip, tokenizer, "tiny/v1", device="cpu", cache_dir=False)
    assert seg.tokenizer is tokenizer and seg.device == torch.device("cpu")
    assert seg.segment(rgb_image, CLASSES, preset="fast", **SMALL).parameters["model"] == "tiny/v1"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda clip: ITACLIP(clip), "from_open_clip"),
        (lambda clip: ITACLIP(clip, object(), "x", quick_gelu=True), "quick_gelu"),
        (lambda clip: ITACLIP.from_open_clip("ViT-B-16"), "from_pretrained"),
    ],
)
def test_constructor_misuse_says_which_factory(tiny_clip, make, message):
    with pytest.raises(TypeError, match=message):
        make(tiny_clip)


@pytest.mark.parametrize(
    ("call", "identity", "precision"),
    [
        (lambda path: ITACLIP(pretrained=path, device="cpu", cache_dir=False), "file:", "fp32"),
        (lambda path: ITACLIP("ViT-B-16", path, "cpu", "bf16", cache_dir=False), "file:", "bf16"),
        (lambda path: ITACLIP("ViT-B-16", path, precision="bf16"), "file:", "bf16"),
    ],
)
def test_deprecated_loader_call_warns_and_still_loads(tiny_weights, call, identity, precision):
    with pytest.warns(DeprecationWarning, match=r"ITACLIP\.from_pretrained"):
        seg = call(str(tiny_weights))
    assert seg.model_identity.startswith(identity) and seg.precision == precision
    assert seg.device == torch.device("cpu")


def test_deprecated_call_without_arguments_loads_the_default(monkeypatch, tiny_weights):
    monkeypatch.setenv("NAPARI_ITACLIP_WEIGHTS", str(tiny_weights))
    with pytest.warns(DeprecationWarning, match="from_pretrained"):
        assert ITACLIP(device="cpu").model_identity.startswith("file:")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer"),
        ({"band_memory_mb": 0}, "band_memory_mb must be a positive number"),
        ({"band_memory_mb": "1536"}, "band_memory_mb must be a positive number"),
        ({"precision": "fp8"}, "unknown precision"),
    ],
)
def test_bad_settings_fail_before_weights_load(monkeypatch, settings, message):
    from napari_itaclip.engine import segmenter as segmenter_module

    def load_clip(*args):
        raise AssertionError("settings must be checked before the weights load")

    monkeypatch.setattr(segmenter_module, "load_clip", load_clip)
    with pytest.raises(ValueError, match=message):
        ITACLIP.from_pretrained(device="cpu", **settings)


@pytest.fixture
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_cpu_segmenter_packs_image_tower_weights_and_leaves_text_tower(tiny_clip):
    model = copy.deepcopy(tiny_clip)
    text_before = model.transformer.resblocks[0].mlp.c_fc.weight.clone()
    ITACLIP.from_open_clip(model, device="cpu", cache_dir=False)
    block = model.visual.transformer.resblocks[0]
    for weight in (block.attn.in_proj_weight, block.mlp.c_fc.weight, block.attn.out_proj.weight):
        assert weight.t().is_contiguous() and not weight.is_contiguous()
    text_weight = model.transformer.resblocks[0].mlp.c_fc.weight
    assert text_weight.is_contiguous()
    torch.testing.assert_close(text_weight, text_before, atol=0, rtol=0)


def test_cpu_batches_split_across_cores_give_the_same_result(tiny_clip, rgb_image):
    windows = {"short_side": 64, "crop": 32, "stride": 16}
    threads = torch.get_num_threads()
    try:
        # the encoder's pool size is the thread count when the segmenter is built
        torch.set_num_threads(1)
        one_core = ITACLIP.from_open_clip(tiny_clip, device="cpu", cache_dir=False)
        torch.set_num_threads(3)
        three_cores = ITACLIP.from_open_clip(tiny_clip, device="cpu", cache_dir=False)
        torch.set_num_threads(2)
        single = one_core.segment(rgb_image, CLASSES, preset="voc21", **windows)
        split = three_cores.segment(rgb_image, CLASSES, preset="voc21", **windows)
        assert torch.get_num_threads() == 2  # the caller's own count is never changed
    finally:
        torch.set_num_threads(threads)
    # Matrix-product blocking depends on the batch size, so the last bits may differ.
    np.testing.assert_allclose(split.probabilities, single.probabilities, atol=1e-5)
    np.testing.assert_array_equal(split.labels, single.labels)


def test_out_of_memory_halves_the_chunk_and_goes_on(
    tiny_clip, rgb_image, monkeypatch, one_torch_thread
):
    from napari_itaclip.engine import window_encoding as encoding_module

    seg = ITACLIP.from_open_clip(
        tiny_clip, device="cpu", cache_dir=False, batch_size=20, image_cache_mb=0
    )
    windows = {"short_side": 64, "crop": 32, "stride": 16}
    expected = seg.segment(rgb_image, CLASSES, preset="voc21", **windows)
    real = encoding_module.encode_dense
    sizes = []

    def encode_or_fail(visual, images):
        sizes.append(len(images))
        if len(images) > 10:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(visual, images)

    monkeypatch.setattr(encoding_module, "encode_dense", encode_or_fail)
    result = seg.segment(rgb_image, CLASSES, preset="voc21", **windows)
    assert sizes[0] == 20 and max(sizes[1:]) <= 10
    np.testing.assert_allclose(result.probabilities, expected.probabilities, atol=1e-5)
    np.testing.assert_array_equal(result.labels, expected.labels)

    # one spike does not slow later runs: each run starts from the configured batch size
    assert seg.batch_size == 20
    sizes.clear()
    monkeypatch.setattr(
        encoding_module, "encode_dense", lambda v, im: sizes.append(len(im)) or real(v, im)
    )
    seg.segment(rgb_image, CLASSES, preset="voc21", **windows)
    assert sizes[0] == 20

    monkeypatch.setattr(
        encoding_module,
        "encode_dense",
        lambda *a: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError()),
    )
    with pytest.raises(MemoryError, match="out of GPU memory"):
        seg.segment(rgb_image, CLASSES, preset="voc21", **windows)


def fail_first_calls(monkeypatch, error: BaseException, failures: int) -> list[int]:
    """Make the encoder raise `error` on its first `failures` calls; returns the batch sizes."""
    from napari_itaclip.engine import window_encoding as encoding_module

    real = encoding_module.encode_dense
    sizes = []

    def encode_or_fail(visual, images):
        sizes.append(len(images))
        if len(sizes) <= failures:
            raise error
        return real(visual, images)

    monkeypatch.setattr(encoding_module, "encode_dense", encode_or_fail)
    return sizes


@pytest.mark.parametrize(
    "message",
    [
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
        "cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED",
        "CUDA error: out of memory",
    ],
)
def test_library_allocation_failures_count_as_out_of_memory(
    tiny_clip, rgb_image, monkeypatch, one_torch_thread, message
):
    seg = ITACLIP.from_open_clip(
        tiny_clip, device="cpu", cache_dir=False, batch_size=20, image_cache_mb=0
    )
    windows = {"short_side": 64, "crop": 32, "stride": 16}
    expected = seg.segment(rgb_image, CLASSES, preset="voc21", **windows)
    sizes = fail_first_calls(monkeypatch, RuntimeError(message), failures=1)
    result = seg.segment(rgb_image, CLASSES, preset="voc21", **windows)
    assert sizes[:2] == [20, 10]
    np.testing.assert_allclose(result.probabilities, expected.probabilities, atol=1e-5)
    np.testing.assert_array_equal(result.labels, expected.labels)


def test_other_runtime_errors_are_not_taken_for_out_of_memory(
    tiny_clip, rgb_image, monkeypatch, one_torch_thread
):
    seg = ITACLIP.from_open_clip(
        tiny_clip, device="cpu", cache_dir=False, batch_size=20, image_cache_mb=0
    )
    sizes = fail_first_calls(monkeypatch, RuntimeError("CUDA error: illegal memory access"), 1)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        seg.segment(rgb_image, CLASSES, preset="voc21", short_side=64, crop=32, stride=16)
    assert sizes == [20]


def test_gpu_cache_is_freed_after_the_failed_chunk_is_released(
    tiny_clip, rgb_image, monkeypatch, one_torch_thread
):
    """empty_cache cannot return memory that the exception's traceback still holds."""
    seg = ITACLIP.from_open_clip(
        tiny_clip, device="cpu", cache_dir=False, batch_size=20, image_cache_mb=0
    )
    fail_first_calls(monkeypatch, torch.cuda.OutOfMemoryError("simulated"), failures=2)
    exceptions_seen = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: exceptions_seen.append(sys.exc_info()))
    seg.segment(rgb_image, CLASSES, preset="voc21", short_side=64, crop=32, stride=16)
    assert exceptions_seen == [(None, None, None)] * 2


@pytest.mark.parametrize(("precision", "suggests_fp16"), [("fp32", True), ("bf16", False)])
def test_out_of_memory_message_suggests_only_what_helps(
    tiny_clip, rgb_image, monkeypatch, precision, suggests_fp16
):
    seg = ITACLIP.from_open_clip(
        tiny_clip, device="cpu", precision=precision, cache_dir=False, batch_size=5
    )
    fail_first_calls(monkeypatch, torch.cuda.OutOfMemoryError("simulated"), failures=10**6)
    with pytest.raises(MemoryError, match="out of GPU memory") as info:
        seg.segment(rgb_image, CLASSES, preset="voc21", short_side=64, crop=32, stride=16)
    message = str(info.value)
    assert ("precision='fp16'" in message) == suggests_fp16
    assert "crop" in message and "image_engineering=False" in message
    assert "device='cpu'" not in message  # already on the CPU


# ------------------------------------------------------------- threads and cancel
WINDOWS_5_CHUNKS = {"short_side": 64, "crop": 32, "stride": 16}  # 15 windows x 5 views


def test_concurrent_runs_on_one_segmenter_equal_sequential_runs(tiny_clip, rgb_image, monkeypatch):
    """A second run, started in a new thread while the first is in its encoder stage, gets the
    sequential result, its chunks still split across the cores, and the thread count that new
    threads start with is unchanged afterwards."""
    from napari_itaclip.engine import window_encoding as encoding_module

    threads = torch.get_num_threads()
    seg = ITACLIP.from_open_clip(tiny_clip, device="cpu", cache_dir=False, image_cache_mb=0)
    images = [rgb_image, np.ascontiguousarray(rgb_image[::-1, ::-1])]
    expected = [seg.segment(im, CLASSES, preset="voc21", **WINDOWS_5_CHUNKS) for im in images]

    real = encoding_module.encode_dense
    sizes = []
    monkeypatch.setattr(
        encoding_module, "encode_dense", lambda v, im: sizes.append(len(im)) or real(v, im)
    )
    first_in_encoder = threading.Event()
    results = [None, None]

    def run(index, progress=None):
        results[index] = seg.segment(
            images[index], CLASSES, preset="voc21", progress=progress, **WINDOWS_5_CHUNKS
        )

    first = threading.Thread(
        target=run,
        args=(0, lambda done, total, stage: stage == "encoder" and first_in_encoder.set()),
    )
    first.start()
    assert first_in_encoder.wait(30)
    second = threading.Thread(target=run, args=(1,))
    second.start()
    first.join(60)
    second.join(60)

    for result, reference in zip(results, expected, strict=True):
        np.testing.assert_array_equal(result.labels, reference.labels)
        np.testing.assert_allclose(result.probabilities, reference.probabilities, atol=1e-6)
    assert max(sizes) == -(-15 // threads)  # every 15-image chunk split across the cores
    assert torch.get_num_threads() == threads
    in_new_thread = []
    reader = threading.Thread(target=lambda: in_new_thread.append(torch.get_num_threads()))
    reader.start()
    reader.join()
    assert in_new_thread == [threads]


SLOW_S = 0.3  # added to every text batch, encoder call and PAMR step


@pytest.mark.parametrize("stage", ["text", "encoder", "refine"])
def test_cancel_answers_within_two_seconds_in_every_stage(tiny_clip, rgb_image, monkeypatch, stage):
    from napari_itaclip.engine import pamr as pamr_module
    from napari_itaclip.engine import text as text_module
    from napari_itaclip.engine import window_encoding as encoding_module

    def slowed(function):
        def slow(*args, **kwargs):
            time.sleep(SLOW_S)
            return function(*args, **kwargs)

        return slow

    monkeypatch.setattr(text_module, "encode_tokens", slowed(text_module.encode_tokens))
    monkeypatch.setattr(encoding_module, "encode_dense", slowed(encoding_module.encode_dense))
    monkeypatch.setattr(pamr_module, "F", SimpleNamespace(pad=slowed(pamr_module.F.pad)))
    seg = ITACLIP.from_open_clip(tiny_clip, device="cpu", cache_dir=False)
    reached, cancelled = threading.Event(), threading.Event()

    def progress(done, total, reported):
        # refine reports only after a band; the encoder's last chunk means refine begins
        if reported == stage or (stage == "refine" and reported == "encoder" and done == total):
            reached.set()

    def run():
        with pytest.raises(Cancelled):
            seg.segment(
                rgb_image,
                CLASSES,
                preset="voc21",
                progress=progress,
                cancel=cancelled.is_set,
                **WINDOWS_5_CHUNKS,
            )
        return time.perf_counter()

    with ThreadPoolExecutor(1) as pool:
        answered = pool.submit(run)
        assert reached.wait(30)
        time.sleep(0.1)  # inside the stage's work
        cancelled.set()
        flagged = time.perf_counter()
        assert answered.result(timeout=60) - flagged < 2


# ----------------------------------------------------------------- thin images
@pytest.mark.parametrize("preset", list(PRESETS))
def test_smallest_thin_image_runs_through_every_preset(segmenter, preset):
    # a 1000-pixel long side is resized to 2048, so 8 pixels become 16: one 16-pixel patch
    for shape in ((8, 1000, 3), (1000, 8, 3)):
        result = segmenter.segment(np.zeros(shape, np.uint8), ["a", "b"], preset=preset)
        assert result.labels.shape == shape[:2]
        assert sorted(result.parameters["resized_shape"]) == [16, 2048]


@pytest.mark.parametrize("preset", ["fast", "voc21"])
def test_thinner_images_fail_before_any_model_work(segmenter, monkeypatch, preset):
    def model_work(*args, **kwargs):
        raise AssertionError("the size check must come before text and encoder work")

    monkeypatch.setattr(segmenter, "text_features", model_work)
    monkeypatch.setattr(segmenter, "window_logits", model_work)
    for shape in ((1, 1000, 3), (7, 1000, 3), (1000, 7, 3)):
        with pytest.raises(ValueError, match=r"at least 8 pixels"):
            segmenter.segment(np.zeros(shape, np.uint8), ["a", "b"], preset=preset)


# ------------------------------------------------------- probability budget
def test_probability_downsample_auto_follows_the_budget(segmenter, rgb_image):
    default = segmenter.segment(rgb_image, CLASSES, preset="fast", **SMALL)
    assert default.probability_factor == 1 and default.probabilities.shape == (3, 60, 80)
    assert default.parameters["probability_downsample"] == 1
    # 0.004 MiB = 4194 bytes: 3 x 15 x 20 x 4 = 3600 fits (f = 4), 3 x 20 x 27 x 4 does not
    auto = segmenter.segment(
        rgb_image, CLASSES, preset="fast", probability_budget_mb=0.004, **SMALL
    )
    explicit = segmenter.segment(
        rgb_image, CLASSES, preset="fast", probability_downsample=4, **SMALL
    )
    assert auto.probability_factor == 4 and auto.probabilities.shape == (3, 15, 20)
    assert auto.parameters["probability_downsample"] == 4
    assert auto.parameters["probability_budget_mb"] == 0.004
    assert explicit.parameters["probability_budget_mb"] is None
    np.testing.assert_array_equal(auto.probabilities, explicit.probabilities)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"probability_downsample": "big"}, "probability_downsample"),
        ({"probability_downsample": 2.0}, "probability_downsample"),
        ({"probability_budget_mb": 0}, "probability_budget_mb"),
        ({"probability_budget_mb": "1"}, "probability_budget_mb"),
        ({"probability_downsample": 2, "probability_budget_mb": 1}, "only applies"),
    ],
)
def test_bad_probability_options(segmenter, rgb_image, kwargs, message):
    with pytest.raises(ValueError, match=message):
        segmenter.segment(rgb_image, CLASSES, preset="fast", **kwargs)

"""The accelerator path, checked on the CPU (issue 13): exact fp32, the authors' fp16 cast,
progress and timings that follow the device, and refinement without hidden transfers."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import build_tiny_clip
from napari_itaclip import ITACLIP
from napari_itaclip.engine import PRECISIONS, precision, refine, resample, window_encoding
from napari_itaclip.engine import segmenter as segmenter_module
from napari_itaclip.engine.classes import parse_class_list
from napari_itaclip.engine.encoder import encode_dense, pack_linear_weights
from napari_itaclip.engine.image import normalise
from napari_itaclip.engine.postprocess import labels_from_probabilities
from napari_itaclip.engine.presets import resolve_preset
from napari_itaclip.engine.text import text_cache_key
from napari_itaclip.engine.windows import blur_view, blur_weights, sliding_windows

SMALL = {"short_side": 64, "stride": 56}
CLASSES = ["background, sky", "red thing, red blob", "blue thing"]


def float32_switches():
    return (
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
        torch.get_float32_matmul_precision(),
    )


@pytest.fixture
def host_settings():
    """A host application that allows TF32 everywhere; its settings are put back after."""
    saved = precision._float32_settings()
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    yield (True, True, "high")
    precision._restore(saved)


EXACT = (False, False, "highest")


def test_exact_fp32_sets_the_switches_inside_and_restores_them(host_settings):
    with precision.exact_fp32("fp32"):
        assert float32_switches() == EXACT
        with precision.exact_fp32("fp32"):  # a second run in: still exact
            assert float32_switches() == EXACT
        assert float32_switches() == EXACT  # until the last run is out
    assert float32_switches() == host_settings
    with precision.exact_fp32("fp16"):
        assert float32_switches() == host_settings  # other precisions change nothing


def test_exact_fp32_restores_when_the_block_raises(host_settings):
    with pytest.raises(RuntimeError, match="boom"), precision.exact_fp32("fp32"):
        raise RuntimeError("boom")
    assert float32_switches() == host_settings


def readable_switches():
    """The legacy switches as torch reads them, "refused" where torch refuses (once the newer
    per-backend API set them)."""
    read = []
    for get in (
        lambda: torch.backends.cudnn.allow_tf32,
        lambda: torch.backends.cuda.matmul.allow_tf32,
        torch.get_float32_matmul_precision,
    ):
        try:
            read.append(get())
        except RuntimeError:
            read.append("refused")
    return read


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="torch < 2.9")
@pytest.mark.parametrize("setting", ["tf32", "ieee"])
def test_exact_fp32_restores_settings_made_with_the_newer_api(host_settings, setting):
    precision._restore(({}, [(b, "none") for b in precision._fp32_precision_backends()]))
    torch.backends.cuda.matmul.fp32_precision = setting
    torch.backends.cudnn.conv.fp32_precision = setting
    before = [b.fp32_precision for b in precision._fp32_precision_backends()]
    legacy_before = readable_switches()
    with precision.exact_fp32("fp32"):
        assert float32_switches() == EXACT
    assert [b.fp32_precision for b in precision._fp32_precision_backends()] == before
    after = readable_switches()
    readable = [i for i, value in enumerate(legacy_before) if value != "refused"]
    assert [after[i] for i in readable] == [legacy_before[i] for i in readable]


def test_a_fp32_run_computes_exactly_and_gives_the_settings_back(
    tiny_clip, rgb_image, host_settings
):
    seg = ITACLIP.from_open_clip(tiny_clip, device="cpu", precision="fp32", cache_dir=False)
    during = []
    seg.segment(rgb_image, CLASSES, progress=lambda *_: during.append(float32_switches()), **SMALL)
    assert during and set(during) == {EXACT}
    assert float32_switches() == host_settings

    def fail(*_):
        raise RuntimeError("a callback failed")

    with pytest.raises(RuntimeError, match="a callback failed"):
        seg.segment(rgb_image, CLASSES, progress=fail, **SMALL)
    assert float32_switches() == host_settings


# ------------------------------------------------------------------ fp16-cast


def test_fp16_cast_is_offered_and_refused_on_the_cpu(tiny_clip):
    assert "fp16-cast" in PRECISIONS
    with pytest.raises(ValueError, match="'fp16-cast' is not supported on the CPU"):
        ITACLIP.from_open_clip(tiny_clip, device="cpu", precision="fp16-cast")
    cuda = torch.device("cuda")
    assert precision.resolve_precision("fp16-cast", cuda) == "fp16-cast"
    assert precision.resolve_precision("auto", cuda) == "fp16"  # autocast stays the default
    assert text_cache_key(tiny_clip, "fp16-cast", cuda) != text_cache_key(tiny_clip, "fp16", cuda)


@pytest.fixture
def cast_on_cpu(monkeypatch):
    """fp16-cast allowed on the CPU (torch's CPU float16 kernels are slow but exist)."""
    monkeypatch.setattr(precision, "NOT_ON_CPU", ("fp16",))


def openai_fp16(model):
    """The same weights as open_clip's OpenAI loader builds them at fp16 (what OpenAI's
    clip.load gives on CUDA): LayerNormFp32, convert_weights_to_fp16."""
    from open_clip.model import build_model_from_openai_state_dict

    state = {k: v for k, v in model.state_dict().items() if k != "attn_mask"}
    reference = build_model_from_openai_state_dict(state, cast_dtype=torch.float16)
    pack_linear_weights(reference.visual)  # as the segmenter stores them on the CPU
    return reference


def test_fp16_cast_model_is_open_clips_fp16_model(cast_on_cpu):
    reference = openai_fp16(build_tiny_clip())
    seg = ITACLIP.from_open_clip(build_tiny_clip(), device="cpu", precision="fp16-cast")
    visual = seg.model.visual
    assert visual.conv1.weight.dtype == visual.proj.dtype == torch.float16
    assert visual.transformer.resblocks[0].attn.in_proj_weight.dtype == torch.float16
    assert visual.ln_post.weight.dtype == torch.float32  # LayerNorm weights stay fp32 ...
    assert type(visual.ln_post) is type(reference.visual.ln_post)  # ... and compute in fp32
    images = torch.randn(2, 3, 224, 224).half()
    with torch.inference_mode():
        # the residual stream is fp16 throughout, as in the authors' run
        assert encode_dense(visual, images).dtype == torch.float16
        torch.testing.assert_close(
            encode_dense(visual, images), encode_dense(reference.visual, images), rtol=0, atol=0
        )
        tokens = seg.tokenizer(["a photo of a cat"])
        torch.testing.assert_close(
            seg.model.encode_text(tokens), reference.encode_text(tokens), rtol=0, atol=0
        )


def test_fp16_cast_segments_without_autocast_and_keeps_fp16_features(
    cast_on_cpu, rgb_image, monkeypatch
):
    fp32 = ITACLIP.from_open_clip(build_tiny_clip(), device="cpu", cache_dir=False)
    cast = ITACLIP.from_open_clip(
        build_tiny_clip(), device="cpu", precision="fp16-cast", cache_dir=False
    )
    assert precision.autocast(cast.device, "fp16-cast").__class__.__name__ == "nullcontext"
    seen = []
    encode = window_encoding.encode_dense
    monkeypatch.setattr(
        window_encoding, "encode_dense", lambda v, x: seen.append(x.dtype) or encode(v, x)
    )
    exact = fp32.segment(rgb_image, CLASSES, **SMALL)
    half = cast.segment(rgb_image, CLASSES, **SMALL)
    assert set(seen) == {torch.float32, torch.float16}  # the cast model gets fp16 inputs
    assert half.parameters["precision"] == "fp16-cast"
    assert next(iter(cast.image_cache._entries.values())).groups.dtype == torch.float16
    assert cast.image_fingerprint == fp32.image_fingerprint  # banks are shared
    assert (half.labels == exact.labels).mean() >= 0.95
    np.testing.assert_allclose(half.probabilities, exact.probabilities, atol=0.05)


# --------------------------------------------------------- progress and timings


class FakeEvent:
    """A device event: logs when it is waited for."""

    def __init__(self, log, name):
        self.log, self.name, self.done = log, name, False

    def synchronize(self):
        self.log.append(("wait", self.name))
        self.done = True

    def query(self):
        return self.done


def test_encoder_chunk_is_reported_once_the_device_finished_it(tiny_clip, monkeypatch):
    log = []
    markers = iter(range(100))
    monkeypatch.setattr(
        window_encoding, "completion_marker", lambda device: FakeEvent(log, next(markers))
    )
    normalised = torch.randn(3, 64, 160)
    windows = sliding_windows(64, 160, 64, 32)  # 4 windows
    window_encoding.encode_windows(
        tiny_clip.visual,
        normalised,
        windows,
        (0,),
        lambda start, stop, features: log.append(("chunk", stop)),
        precision="fp32",
        batch_size=2,
        threads=1,
        report=lambda done: log.append(("report", done)),
        checkpoint=lambda: None,
    )
    # chunk 2 is queued before chunk 1 is waited for (the device never idles), and no chunk
    # is reported before its wait
    assert log == [
        ("chunk", 2),
        ("chunk", 4),
        ("wait", 0),
        ("report", 2),
        ("wait", 1),
        ("report", 4),
    ]


def test_every_timed_stage_waits_for_the_device(tiny_clip, rgb_image, monkeypatch):
    seg = ITACLIP.from_open_clip(tiny_clip, device="cpu", cache_dir=False)
    waits = []
    monkeypatch.setattr(segmenter_module, "synchronize", lambda device: waits.append(device))
    examples = np.full(rgb_image.shape[:2], -1)
    examples[5:10, 5:30] = 1
    result = seg.segment(rgb_image, CLASSES, examples=examples, preset="voc21", **SMALL)
    stages = set(result.timings) - {"total"}
    assert {"text", "resize", "encoder", "examples", "logits", "refine", "closing"} <= stages
    assert len(waits) == len(stages)


# ------------------------------------------------------------------- refine


def test_resample_indices_are_built_once_per_shape():
    resample.axis_index.cache_clear()
    x = torch.randn(2, 7, 9)
    for start, stop in [(0, 10), (10, 31), (0, 31)]:
        resample.upsample_rows(x, (31, 50), start, stop)
    assert resample.axis_index.cache_info().misses == 2  # the rows axis and the columns axis


def test_blur_weights_are_built_once_per_device_and_dtype():
    blur_weights.cache_clear()
    crops = torch.randn(2, 3, 32, 32)
    first = blur_view(crops)
    torch.testing.assert_close(blur_view(crops), first, rtol=0, atol=0)
    assert blur_weights.cache_info().misses == 1 and blur_weights.cache_info().hits == 1


def test_labels_leave_the_device_in_the_smallest_dtype():
    p = torch.rand(21, 8, 9)
    labels = labels_from_probabilities(p, 0.06)
    assert labels.dtype == torch.uint8
    expected = torch.where(p.max(0).values < 0.06, 0, p.argmax(0))
    torch.testing.assert_close(labels.long(), expected, rtol=0, atol=0)
    assert labels_from_probabilities(torch.rand(300, 4, 4), 0.0).dtype == torch.int32


def test_accelerators_iterate_all_queries_at_once_when_bands_stay_as_few():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    paper = ((375, 500), 160, 1, 1536)  # voc21 on 500x375: one band either way
    assert refine.pamr_query_chunk(80, *paper, cpu) == refine.PAMR_QUERY_CHUNK
    assert refine.pamr_query_chunk(80, *paper, cuda) == 80
    large = ((3000, 4000), 160, 1, 1536)  # all 80 at once would need 38 bands, not 8
    chunk = refine.pamr_query_chunk(80, *large, cuda)
    assert refine.PAMR_QUERY_CHUNK < chunk < 80

    def n_bands(query_chunk):
        rows = refine.band_rows(80, 4000, 160, 1, 1536, query_chunk)
        return -(-3000 // rows)

    assert n_bands(chunk) == n_bands(refine.PAMR_QUERY_CHUNK) < n_bands(2 * chunk)


def refine_inputs(rgb_image, classes="voc21"):
    class_list = parse_class_list(classes, background=True)
    params = resolve_preset("voc21", {**SMALL, "area_thd": 0.2})
    normalised = normalise(rgb_image)[0]
    torch.manual_seed(0)
    logits = torch.randn(len(class_list.queries), 20, 26)
    logits = F.interpolate(logits[None], size=normalised.shape[-2:], mode="bilinear")[0]
    return normalised, logits, class_list, params


def run_refine(rgb_image, **options):
    normalised, logits, class_list, params = refine_inputs(rgb_image)
    return refine.refine(
        normalised,
        logits,
        rgb_image.shape[:2],
        class_list,
        params,
        1,
        report=lambda *a: None,
        checkpoint=lambda: None,
        **options,
    )


def test_accelerator_refine_paths_give_identical_outputs(rgb_image, monkeypatch):
    image = np.repeat(rgb_image, 4, axis=0)  # 240 rows: 3 bands of 80 at band_memory_mb=1
    labels, probabilities = run_refine(image, band_memory_mb=1)
    assert 0 < len(np.unique(labels)) < 21  # the area threshold removed classes
    uploads = []
    from_numpy = torch.from_numpy
    monkeypatch.setattr(
        refine.torch, "from_numpy", lambda a: uploads.append(a.shape) or from_numpy(a)
    )
    # all queries at once, probabilities kept on the "device" for the second pass, copies
    # through staging buffers landed only after their device event
    log = []
    monkeypatch.setattr(refine, "pamr_query_chunk", lambda n, *args: n)
    monkeypatch.setattr(refine, "keeps_on_device", lambda *args: True)
    monkeypatch.setattr(refine, "completion_marker", lambda device: FakeEvent(log, len(log)))
    monkeypatch.setattr(refine, "staging_buffer", lambda t: torch.empty_like(t))
    original = refine.HostCopies.__init__
    monkeypatch.setattr(refine.HostCopies, "__init__", lambda self, staged: original(self, True))
    again_labels, again_probabilities = run_refine(image, band_memory_mb=1)
    np.testing.assert_array_equal(again_labels, labels)
    np.testing.assert_array_equal(again_probabilities, probabilities)
    # of the 21 classes only the keep mask goes to the device; no band of probabilities
    assert [shape for shape in uploads if shape[0] == 21] == [(21,)]
    assert log and all(kind == "wait" for kind, _ in log)

"""Model loading branches that every user hits first: devices, precisions, pretrained tags,
where cached weights are found, and failures when nothing can be downloaded (no network)."""

from __future__ import annotations

import pytest
import torch

from napari_itaclip.engine import models


@pytest.mark.parametrize(
    ("device", "error", "message"),
    [
        ("tpu", ValueError, "unknown device 'tpu'"),
        ("meta", ValueError, "unsupported device 'meta'"),
        (3, TypeError, "device must be a string"),
    ],
)
def test_bad_devices_are_named(device, error, message):
    with pytest.raises(error, match=message):
        models.resolve_device(device)


def test_absent_accelerators_are_refused_not_replaced(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert models.available_devices() == ["cpu"]
    assert models.resolve_device("auto") == torch.device("cpu")
    assert models.resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        models.resolve_device("cuda")
    with pytest.raises(ValueError, match="MPS is not available"):
        models.resolve_device("mps")


def test_cuda_index_beyond_the_devices_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert models.available_devices()[0] == "cuda"
    with pytest.raises(ValueError, match="only 1 CUDA device"):
        models.resolve_device("cuda:1")


def test_precision_auto_follows_the_device():
    assert models.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert models.resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert models.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ValueError, match="unknown precision"):
        models.resolve_precision("fp8", torch.device("cpu"))
    with pytest.raises(ValueError, match="not supported on the CPU"):
        models.resolve_precision("fp16", torch.device("cpu"))


def test_unknown_model_and_tag_are_named_before_any_download():
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Q-99'"):
        models.load_clip("ViT-Q-99", "openai")
    with pytest.raises(ValueError, match="unknown pretrained tag 'nope'.*openai"):
        models.load_clip("ViT-B-16", "nope")


def test_offline_fails_fast_with_the_fix(monkeypatch):
    monkeypatch.setattr(models, "weights_cached", lambda *args: False)
    monkeypatch.setattr(models, "_reachable", lambda host, timeout=3.0: False)
    with pytest.raises(models.WeightsUnavailableError) as error:
        models.load_clip("ViT-B-16", "openai")
    text = str(error.value)
    assert "is not reachable" in text and models.WEIGHTS_ENV in text


def test_a_failed_download_becomes_weights_unavailable(monkeypatch):
    import open_clip

    def refuse(*args, **kwargs):
        raise OSError("connection reset")

    monkeypatch.setattr(models, "weights_cached", lambda *args: False)
    monkeypatch.setattr(models, "_reachable", lambda host, timeout=3.0: True)
    monkeypatch.setattr(open_clip, "create_model", refuse)
    with pytest.raises(models.WeightsUnavailableError, match="connection reset"):
        models.load_clip("ViT-B-16", "openai")


@pytest.mark.parametrize("key", list(models.KNOWN_WEIGHT_SOURCES))
def test_known_weight_sources_are_open_clips_own_record(key):
    assert models.KNOWN_WEIGHT_SOURCES[key] == models.WeightSource.from_open_clip(*key)


@pytest.mark.parametrize("lookup", ["known table", "open_clip's record"])
@pytest.mark.parametrize("planted", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
def test_cached_weights_are_found_where_open_clip_keeps_them(
    lookup, planted, weight_caches, monkeypatch
):
    if lookup == "open_clip's record":
        monkeypatch.setattr(models, "KNOWN_WEIGHT_SOURCES", {})
    assert models.cached_weights_path("ViT-B-16", "openai") is None
    path = weight_caches("timm/vit_base_patch16_clip_224.openai", planted)
    assert models.cached_weights_path("ViT-B-16", "openai") == str(path)
    assert models.weights_cached("ViT-B-16", "openai")


def test_an_url_archive_counts_only_where_open_clip_reads_it(weight_caches, monkeypatch, tmp_path):
    """open_clip downloads from the Hugging Face hub whenever a model has a hub source, so an
    archive in its URL download folder (~/.cache/clip) is cached weights only without one."""
    archive = tmp_path / "home" / ".cache" / "clip" / "ViT-B-16.pt"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"weights")
    assert models.cached_weights_path("ViT-B-16", "openai") is None  # the hub would be asked
    archive_only = models.WeightSource(url="https://openaipublic.azureedge.net/clip/ViT-B-16.pt")
    monkeypatch.setitem(models.KNOWN_WEIGHT_SOURCES, ("ViT-B-16", "openai"), archive_only)
    assert models.cached_weights_path("ViT-B-16", "openai") == str(archive)


def test_download_host_is_the_hub_else_the_url_host(monkeypatch):
    assert models._download_host("ViT-B-16", "openai") == "huggingface.co"
    archive_only = models.WeightSource(url="https://openaipublic.azureedge.net/clip/ViT-B-16.pt")
    monkeypatch.setitem(models.KNOWN_WEIGHT_SOURCES, ("ViT-B-16", "openai"), archive_only)
    assert models._download_host("ViT-B-16", "openai") == "openaipublic.azureedge.net"

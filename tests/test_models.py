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


def test_cached_weights_are_found_in_the_hub_cache(monkeypatch, tmp_path):
    import huggingface_hub

    cached = tmp_path / "open_clip_model.safetensors"
    cached.write_bytes(b"")
    asked = []

    def lookup(repo, name):
        asked.append((repo, name))
        return str(cached) if name.endswith(".safetensors") else None

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lookup)
    assert models.cached_weights_path("ViT-B-16", "openai") == str(cached)
    assert models.weights_cached("ViT-B-16", "openai")
    assert asked and all("/" in repo for repo, _ in asked)


def test_nothing_cached_means_none(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: None)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/clip archive either
    assert models.cached_weights_path("ViT-B-16", "openai") is None
    assert models._download_host("ViT-B-16", "openai")

"""Shared fixtures: tiny random open_clip models (no network), images and class lists."""

from __future__ import annotations

import numpy as np
import pytest


def build_tiny_clip(seed: int = 0):
    """A random CLIP with the real tokenizer's vocabulary and a 12-block ViT/16.

    Head widths are 64 so that OpenAI's loader infers the same architecture back from a saved
    state dict (it derives heads as width // 64).
    """
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg=open_clip.CLIPVisionCfg(
            layers=12, width=128, head_width=64, patch_size=16, image_size=224
        ),
        text_cfg=open_clip.CLIPTextCfg(
            context_length=77, vocab_size=49408, width=64, heads=1, layers=2
        ),
        quick_gelu=True,
    )
    # Random init leaves some tensors at constants (zeros/ones); give every tensor variety so a
    # bug in any of them shows.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ln" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.02 * torch.randn_like(param))
    return model.eval()


@pytest.fixture(scope="session")
def tiny_clip():
    return build_tiny_clip()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory, tiny_clip):
    """The tiny model saved as an OpenAI-layout state dict (as `torch.save(state_dict)`)."""
    import torch

    path = tmp_path_factory.mktemp("weights") / "tiny-openai.pt"
    state = {k: v for k, v in tiny_clip.state_dict().items() if k != "attn_mask"}
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def segmenter(tiny_clip, tmp_path_factory):
    from napari_itaclip import ITACLIP

    # No kept image features: tests sharing this segmenter each see their own encoder pass.
    return ITACLIP.from_open_clip(
        tiny_clip, device="cpu", cache_dir=tmp_path_factory.mktemp("text-cache"), image_cache_mb=0
    )


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Never write to the user's real cache folder."""
    monkeypatch.setenv("NAPARI_ITACLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NAPARI_ITACLIP_WEIGHTS", raising=False)


@pytest.fixture
def rgb_image():
    rng = np.random.default_rng(0)
    image = np.zeros((60, 80, 3), np.uint8)
    image[:, :40] = (200, 40, 40)
    image[:, 40:] = (30, 60, 220)
    return np.clip(image + rng.integers(0, 30, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def weight_caches(tmp_path, monkeypatch):
    """Empty Hugging Face hub cache and home folder (open_clip's ~/.cache/clip) under tmp_path,
    for this process and its subprocesses; returns plant(repo, filename), which puts a file in
    the hub cache where a download would, and returns its path."""
    from huggingface_hub import constants

    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))  # read once, at import
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    revision = "0" * 40

    def plant(repo: str, filename: str):
        folder = hub / f"models--{repo.replace('/', '--')}"
        path = folder / "snapshots" / revision / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / "main").write_text(revision)
        return path

    return plant

"""Text features (METHOD.md 3): templates, exact truncation, fusion, caching."""

from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_itaclip.engine import text as text_stage
from napari_itaclip.engine.text import (
    TextFeatureCache,
    encode_tokens,
    fuse_aux_text,
    query_features,
    template_ensemble,
    templates,
    text_tower_fingerprint,
)


@pytest.fixture(scope="module")
def tokenizer():
    import open_clip

    return open_clip.tokenizer.SimpleTokenizer()


def test_eighty_openai_templates():
    assert len(templates()) == 80
    assert templates()[0]("cat") == "a bad photo of a cat."


def test_truncated_encoding_equals_full_length(tiny_clip, tokenizer):
    prompts = ["a photo of a cat.", "a very long description " * 5 + "of a dog.", "x"]
    tokens = tokenizer(prompts)
    with torch.no_grad():
        full = tiny_clip.encode_text(tokens)
        truncated = encode_tokens(tiny_clip, tokens)
    torch.testing.assert_close(truncated, full, atol=1e-5, rtol=1e-5)


def test_template_ensemble_is_normalised_mean_of_normalised_prompts(tiny_clip, tokenizer):
    with torch.no_grad():
        got = template_ensemble(
            tiny_clip, tokenizer, ["cat", "red car"], "cpu", nullcontext(), batch_size=37
        )
        for i, query in enumerate(["cat", "red car"]):
            feats = F.normalize(
                tiny_clip.encode_text(tokenizer([t(query) for t in templates()])), dim=-1
            )
            expected = F.normalize(feats.mean(0), dim=-1)
            torch.testing.assert_close(got[i], expected, atol=1e-5, rtol=1e-5)


def test_fusion_not_renormalised_and_never_for_background():
    names = F.normalize(torch.randn(4, 6), dim=-1)
    aux = F.normalize(torch.randn(2, 6), dim=-1)
    # queries: background word, class 1 (two variants), class 2
    fused = fuse_aux_text(names, aux, [0, 1, 1, 2], background=True, c_def=0.2)
    torch.testing.assert_close(fused[0], names[0])
    torch.testing.assert_close(fused[1], 0.8 * names[1] + 0.2 * aux[0])
    torch.testing.assert_close(fused[2], 0.8 * names[2] + 0.2 * aux[0])
    torch.testing.assert_close(fused[3], 0.8 * names[3] + 0.2 * aux[1])
    assert abs(float(fused[1].norm()) - 1) > 1e-4
    no_bg = fuse_aux_text(names[:2], aux, [0, 1], background=False, c_def=0.5)
    torch.testing.assert_close(no_bg[0], 0.5 * names[0] + 0.5 * aux[0])


def test_cache_memory_and_disk(tiny_clip, tokenizer, tmp_path, monkeypatch):
    key = text_tower_fingerprint(tiny_clip)
    cache = TextFeatureCache(key, tmp_path)
    with torch.no_grad():
        first = query_features(
            tiny_clip, tokenizer, cache, ["cat", "dog", "cat"], "cpu", nullcontext()
        )
    assert first.shape == (3, 32)
    torch.testing.assert_close(first[0], first[2])
    assert len(list((tmp_path / "text" / key).glob("*.npy"))) == 2

    def no_encoding(*args, **kwargs):
        raise AssertionError("cached queries must not be encoded again")

    monkeypatch.setattr(text_stage, "template_ensemble", no_encoding)
    fresh = TextFeatureCache(key, tmp_path)  # a new process: only the disk cache
    again = query_features(tiny_clip, tokenizer, fresh, ["dog", "cat"], "cpu", nullcontext())
    torch.testing.assert_close(again, first[[1, 0]])


def test_fingerprint_tracks_text_weights_only(tiny_clip):
    import copy

    base = text_tower_fingerprint(tiny_clip)
    other = copy.deepcopy(tiny_clip)
    with torch.no_grad():
        other.visual.proj.add_(1)
    assert text_tower_fingerprint(other) == base
    with torch.no_grad():
        other.text_projection.add_(1e-3)
    assert text_tower_fingerprint(other) != base


def test_unwritable_cache_folder_only_costs_recomputation(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = TextFeatureCache("k", blocker)
    cache.put("cat", np.ones(3, np.float32))
    assert cache.get("cat") is not None and cache.folder is None

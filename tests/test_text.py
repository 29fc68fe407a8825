"""Text features (docs/method.md §3): templates, exact truncation, fusion, caching."""

from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_itaclip.engine import text as text_stage
from napari_itaclip.engine import text_cache_usage
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


# ------------------------------------------------------------- damaged and concurrent cache
def cached_cat(tiny_clip, tokenizer, root):
    """A disk cache holding the feature of "cat"; returns (cache, its file, the feature)."""
    cache = TextFeatureCache.for_model(tiny_clip, "fp32", "cpu", root)
    feature = query_features(tiny_clip, tokenizer, cache, ["cat"], "cpu", nullcontext())[0]
    return cache, cache._path("cat"), feature


def npy_bytes(array) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


DAMAGED = {
    "empty": lambda good: b"",
    "truncated": lambda good: good[: len(good) - 40],
    "not npy": lambda good: b"garbage" * 30,
    "2-D": lambda good: npy_bytes(np.ones((2, 16), np.float32)),
    "wrong width": lambda good: npy_bytes(np.ones(31, np.float32)),
    "float64": lambda good: npy_bytes(np.ones(32, np.float64)),
    "NaN": lambda good: npy_bytes(np.full(32, np.nan, np.float32)),
    "inf": lambda good: npy_bytes(np.full(32, np.inf, np.float32)),
    "pickled objects": lambda good: npy_bytes(np.array([{"a": 1}], dtype=object)),
}


@pytest.mark.parametrize("damage", DAMAGED, ids=list(DAMAGED))
def test_damaged_entry_is_discarded_and_recomputed(tiny_clip, tokenizer, tmp_path, damage):
    _, path, feature = cached_cat(tiny_clip, tokenizer, tmp_path)
    path.write_bytes(DAMAGED[damage](path.read_bytes()))
    fresh = TextFeatureCache.for_model(tiny_clip, "fp32", "cpu", tmp_path)  # a later run
    assert fresh.get("cat") is None
    assert not path.exists()
    again = query_features(tiny_clip, tokenizer, fresh, ["cat"], "cpu", nullcontext())[0]
    torch.testing.assert_close(again, feature)
    stored = np.load(path)
    assert stored.dtype == np.float32 and stored.shape == (32,)


def test_orphaned_temporaries_are_removed_when_the_folder_is_opened(tiny_clip, tokenizer, tmp_path):
    import os
    import time

    cache, path, _ = cached_cat(tiny_clip, tokenizer, tmp_path)
    orphan = path.with_name("dead-writer.tmp")
    orphan.write_bytes(b"half a file")
    two_hours_ago = time.time() - 7200
    os.utime(orphan, (two_hours_ago, two_hours_ago))
    in_progress = path.with_name("live-writer.tmp")  # another process writing right now
    in_progress.write_bytes(b"being written")
    TextFeatureCache(cache.model_key, tmp_path)
    assert not orphan.exists()
    assert in_progress.exists() and path.exists()


def test_writes_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    import os

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync")
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    TextFeatureCache("k", tmp_path).put("cat", np.ones(4, np.float32))
    assert events == ["fsync", "rename"]


def test_threads_writing_one_query_use_separate_temporaries(tmp_path, monkeypatch):
    import threading

    real_save = np.save
    both_writing = threading.Barrier(2, timeout=10)
    names = []

    def save_when_both_write(fh, value):
        names.append(fh.name)
        both_writing.wait()  # both temporaries are open at once
        real_save(fh, value)

    monkeypatch.setattr(np, "save", save_when_both_write)
    caches = [TextFeatureCache("k", tmp_path) for _ in range(2)]
    values = [np.full(8, i, np.float32) for i in range(2)]
    threads = [
        threading.Thread(target=cache.put, args=("cat", value))
        for cache, value in zip(caches, values, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(names)) == 2
    folder = tmp_path / "text" / "k"
    assert [p.suffix for p in folder.iterdir()] == [".npy"]  # no temporary left behind
    assert any(np.array_equal(np.load(caches[0]._path("cat")), v) for v in values)


def test_cache_key_tracks_templates_device_precision_and_format(tiny_clip, monkeypatch):
    key = text_stage.text_cache_key(tiny_clip, "fp32", "cpu")
    assert key == text_stage.text_cache_key(tiny_clip, "fp32", torch.device("cpu"))
    assert text_stage.text_cache_key(tiny_clip, "fp16", "cpu") != key
    assert text_stage.text_cache_key(tiny_clip, "fp32", "cuda") != key
    assert text_stage.text_cache_key(tiny_clip, "fp32", "mps") != key
    assert text_stage.text_cache_key(tiny_clip, "fp32", "cuda:1") == text_stage.text_cache_key(
        tiny_clip, "fp32", "cuda:0"
    )
    all_templates = templates()
    # Same set name and count, one template's wording changed.
    edited = [*all_templates[:-1], lambda c: f"a photo of the {c}!"]
    monkeypatch.setattr(text_stage, "templates", lambda: edited)
    assert text_stage.text_cache_key(tiny_clip, "fp32", "cpu") != key
    monkeypatch.setattr(text_stage, "templates", lambda: all_templates)
    monkeypatch.setattr(text_stage, "CACHE_FORMAT", text_stage.CACHE_FORMAT + 1)
    assert text_stage.text_cache_key(tiny_clip, "fp32", "cpu") != key


def test_cache_width_is_the_models_feature_width(tiny_clip):
    assert text_stage.text_feature_width(tiny_clip) == 32
    assert TextFeatureCache.for_model(tiny_clip, "fp32", "cpu", use_disk=False).width == 32


def test_cache_usage_counts_entries_and_all_bytes(tmp_path):
    assert text_cache_usage(tmp_path) == (0, 0)
    cache = TextFeatureCache("k", tmp_path)
    cache.put("cat", np.ones(8, np.float32))
    cache.put("dog", np.ones(8, np.float32))
    (tmp_path / "text" / "k" / "crashed.tmp").write_bytes(b"x" * 10)
    entry = cache._path("cat").stat().st_size
    assert text_cache_usage(tmp_path) == (2, 2 * entry + 10)


def test_prime_holds_valid_features_and_skips_bad_ones(tmp_path):
    cache = TextFeatureCache("key", tmp_path, use_disk=False)
    cache.width = 4
    good = np.ones(4, np.float32)
    cache.prime({"cat": good, "dog": np.ones(3, np.float32), "cow": np.full(4, np.nan, np.float32)})
    assert cache.get("cat") is good
    assert cache.get("dog") is None and cache.get("cow") is None

"""Modified image encoder (docs/method.md §2)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from napari_itaclip.engine.encoder import (
    INTERMEDIATE_BLOCKS,
    check_supported,
    encode_dense,
    pack_linear_weights,
    positional_embedding,
    qkv,
    self_self_attention,
    transformer_block,
)


def test_csa_is_two_softmaxes_added_so_rows_sum_to_two():
    q, k = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8)
    csa = self_self_attention(q, k)
    s = 8**-0.5
    expected = (q @ q.transpose(-1, -2) * s).softmax(-1) + (k @ k.transpose(-1, -2) * s).softmax(-1)
    torch.testing.assert_close(csa, expected)
    torch.testing.assert_close(csa.sum(-1), torch.full((2, 3, 10), 2.0))


def test_intermediate_blocks_are_7_8_10_one_based():
    assert tuple(i + 1 for i in INTERMEDIATE_BLOCKS) == (7, 8, 10)


def test_transformer_block_equals_open_clip_block_and_returns_csa_on_request(tiny_clip):
    block = tiny_clip.visual.transformer.resblocks[6]
    x = torch.randn(2, 197, 128)
    with torch.no_grad():
        out, csa = transformer_block(block, x, with_csa=True)
        torch.testing.assert_close(out, block(x), atol=1e-5, rtol=1e-5)
        q, k, _ = qkv(block, x)
        torch.testing.assert_close(csa, self_self_attention(q, k))
        plain, none = transformer_block(block, x)
        assert none is None
        torch.testing.assert_close(plain, out)


def test_transformer_block_uses_the_blocks_own_activation_when_not_quickgelu(tiny_clip):
    block = copy.deepcopy(tiny_clip.visual.transformer.resblocks[0])
    block.mlp.gelu = torch.nn.GELU()
    x = torch.randn(1, 197, 128)
    with torch.no_grad():
        torch.testing.assert_close(transformer_block(block, x)[0], block(x), atol=1e-5, rtol=1e-5)


def test_packed_weights_keep_values_shapes_and_results(tiny_clip):
    visual = copy.deepcopy(tiny_clip.visual)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        before = encode_dense(visual, images)
        state = {k: v.clone() for k, v in visual.state_dict().items()}
        pack_linear_weights(visual)
        fc = visual.transformer.resblocks[0].mlp.c_fc.weight
        assert fc.shape == (512, 128) and fc.t().is_contiguous()
        assert visual.transformer.resblocks[0].attn.in_proj_weight.t().is_contiguous()
        for name, value in visual.state_dict().items():
            torch.testing.assert_close(value, state[name], atol=0, rtol=0)
        torch.testing.assert_close(encode_dense(visual, images), before, atol=1e-5, rtol=1e-5)


def test_positional_embedding_kept_for_model_grid_and_resized_otherwise(tiny_clip):
    visual = tiny_clip.visual
    assert positional_embedding(visual, 14, 14) is visual.positional_embedding
    pos = positional_embedding(visual, 10, 14)
    assert pos.shape == (1 + 140, 128)
    torch.testing.assert_close(pos[0], visual.positional_embedding[0])  # CLS position kept
    grid = visual.positional_embedding[1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, scale_factor=(10.1 / 14, 14.1 / 14), mode="bicubic")
    torch.testing.assert_close(pos[1:], expected.permute(0, 2, 3, 1).reshape(140, -1))


def reference_last_block(visual, images):
    """docs/method.md §2 written out step by step (sequence of blocks, explicit fusion)."""
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], 1)
    x = visual.ln_pre(x + visual.positional_embedding)
    maps = []
    blocks = visual.transformer.resblocks
    for i, block in enumerate(blocks[:-1]):
        if i + 1 in (7, 8, 10):
            q, k, _ = qkv(block, x)
            maps.append(self_self_attention(q, k))
        x = block(x)
    q, k, v = qkv(blocks[-1], x)
    a = 0.5 * self_self_attention(q, k) + 0.5 * torch.stack(maps).mean(0)
    x = x + blocks[-1].attn.out_proj((a @ v).transpose(1, 2).reshape(x.shape))
    return visual.ln_post(x) @ visual.proj


def test_encode_dense_follows_the_method(tiny_clip):
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = encode_dense(tiny_clip.visual, images)
        assert out.shape == (2, 197, 32)
        torch.testing.assert_close(
            out, reference_last_block(tiny_clip.visual, images), atol=1e-5, rtol=1e-4
        )


def test_last_block_mlp_is_dropped_and_earlier_mlps_are_not(tiny_clip):
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        base = encode_dense(tiny_clip.visual, images)
        changed = copy.deepcopy(tiny_clip.visual)
        changed.transformer.resblocks[-1].mlp.c_fc.weight.mul_(3)
        torch.testing.assert_close(encode_dense(changed, images), base)
        changed.transformer.resblocks[0].mlp.c_fc.weight.mul_(3)
        assert (encode_dense(changed, images) - base).abs().max() > 1e-3


def test_batching_changes_nothing_and_small_crops_work(tiny_clip):
    images = torch.randn(3, 3, 160, 224)
    with torch.no_grad():
        batched = encode_dense(tiny_clip.visual, images)
        single = torch.cat([encode_dense(tiny_clip.visual, im[None]) for im in images])
    assert batched.shape == (3, 1 + 10 * 14, 32)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_unsupported_models_are_refused(tiny_clip):
    shallow = copy.deepcopy(tiny_clip.visual)
    shallow.transformer.resblocks = shallow.transformer.resblocks[:10]
    with pytest.raises(ValueError, match="at least 11 blocks"):
        check_supported(shallow)
    with pytest.raises(ValueError, match="VisionTransformer"):
        check_supported(torch.nn.Linear(2, 2))
    custom = copy.deepcopy(tiny_clip.visual)
    del custom.transformer.resblocks[3].mlp.c_proj
    with pytest.raises(ValueError, match="without mlp.c_proj"):
        check_supported(custom)

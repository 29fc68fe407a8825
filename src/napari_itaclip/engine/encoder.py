"""The modified CLIP image encoder (docs/method.md §2): dense tokens with CSA fusion.

Blocks 1..L-1 run unchanged. The self-self attention maps (CSA) of the inputs of blocks 7, 8
and 10 (1-based) are averaged into A_mid; the last block uses
A = 0.5 * CSA(ln_1(x)) + 0.5 * A_mid as its attention, keeps its residual and drops its MLP.
All tokens go through ln_post and the projection.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# 0-based indices of the blocks whose input attention is fused into the last block.
INTERMEDIATE_BLOCKS = (6, 7, 9)


def check_supported(visual) -> None:
    """Raise ValueError unless `visual` is an open_clip ViT this encoder can run."""
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None or not hasattr(visual, "conv1") or not hasattr(visual, "class_embedding"):
        raise ValueError(
            "ITACLIP needs an open_clip VisionTransformer image tower (ViT-B-16 and friends); "
            f"got {type(visual).__name__}"
        )
    if len(blocks) <= max(INTERMEDIATE_BLOCKS) + 1:
        raise ValueError(
            f"ITACLIP fuses blocks 7, 8 and 10 into the last block, so the image tower needs at "
            f"least {max(INTERMEDIATE_BLOCKS) + 2} blocks; this one has {len(blocks)}"
        )
    parts = ("ln_1", "ls_1", "ln_2", "ls_2", "mlp.c_fc", "mlp.gelu", "mlp.c_proj")
    for block in blocks:
        missing = [p for p in parts if _get_path(block, p) is None]
        if missing or not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
            raise ValueError(
                "ITACLIP needs open_clip's standard ResidualAttentionBlock (nn.MultiheadAttention "
                f"and an MLP); got {type(block).__name__}"
                + (f" without {', '.join(missing)}" if missing else "")
            )


def _get_path(module, path: str):
    for name in path.split("."):
        module = getattr(module, name, None)
    return module


def patch_size(visual) -> tuple[int, int]:
    size = visual.conv1.kernel_size
    return (size, size) if isinstance(size, int) else tuple(size)


def positional_embedding(visual, grid_h: int, grid_w: int) -> torch.Tensor:
    """The (1 + gh * gw, width) positional embedding for a (gh, gw) patch grid.

    Used unchanged when the token count matches the model's grid; otherwise the patch part is
    resized bicubically with the DINO-style scale factor ((g + 0.1) / n) as the reference does
    (passing scale_factor, not size, so the sampling positions match it).
    """
    pos = visual.positional_embedding
    n_model = pos.shape[0] - 1
    if grid_h * grid_w == n_model:
        return pos
    side = int(math.sqrt(n_model))
    patch_pos = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(
        patch_pos,
        scale_factor=((grid_h + 0.1) / side, (grid_w + 0.1) / side),
        mode="bicubic",
        align_corners=False,
    )
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid_h * grid_w, -1)
    return torch.cat([pos[:1], patch_pos], dim=0)


def _heads(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    batch, tokens, width = t.shape
    return t.reshape(batch, tokens, n_heads, width // n_heads).transpose(1, 2)


def qkv(block, x: torch.Tensor):
    """Per-head q, k, v (B, heads, N, head_dim) of `block`'s attention on ln_1(x)."""
    attn = block.attn
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    return _heads(q, attn.num_heads), _heads(k, attn.num_heads), _heads(v, attn.num_heads)


def self_self_attention(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """CSA = softmax(q q^T s) + softmax(k k^T s): the two softmaxes added, so rows sum to 2."""
    scale = q.shape[-1] ** -0.5
    return (q @ q.transpose(-1, -2) * scale).softmax(-1) + (
        k @ k.transpose(-1, -2) * scale
    ).softmax(-1)


def mlp(block, x: torch.Tensor) -> torch.Tensor:
    """The block's MLP; QuickGELU (OpenAI weights) is applied in place, with the same
    arithmetic as open_clip's module and one full-size temporary fewer."""
    hidden = block.mlp.c_fc(x)
    activation = block.mlp.gelu
    if type(activation).__name__ == "QuickGELU":
        hidden.mul_(torch.sigmoid(hidden * 1.702))
    else:
        hidden = activation(hidden)
    return block.mlp.c_proj(hidden)


def transformer_block(block, x: torch.Tensor, with_csa: bool = False):
    """One unchanged block forward (B, N, D) -> (B, N, D), and the CSA map of its input
    when `with_csa`.

    Same maths as open_clip's block, written out so that q, k, v are computed once and
    shared by the CSA map and the ordinary attention, which runs through
    scaled_dot_product_attention (a fused kernel on every device).
    """
    q, k, v = qkv(block, x)
    csa = self_self_attention(q, k) if with_csa else None
    attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(x.shape)
    x = x + block.ls_1(block.attn.out_proj(attended))
    return x + block.ls_2(mlp(block, block.ln_2(x))), csa


def pack_linear_weights(visual) -> None:
    """Store the image tower's linear weights transposed in memory; values, shapes and
    results are unchanged.

    F.linear then multiplies by a contiguous (in, out) matrix, for which MKL's CPU kernels
    run faster than for nn.Linear's (out, in) layout (docs/performance.md). For CPU only.
    """
    for module in visual.modules():
        names = ["in_proj_weight"] if isinstance(module, nn.MultiheadAttention) else []
        names += ["weight"] if isinstance(module, nn.Linear) else []
        for name in names:
            weight = getattr(module, name)
            if weight is not None and weight.is_contiguous():
                weight.data = weight.data.t().contiguous().t()


def encode_dense(visual, images: torch.Tensor) -> torch.Tensor:
    """All output tokens (B, 1 + gh * gw, D) of the modified encoder, CLS first."""
    x = visual.conv1(images)
    grid_h, grid_w = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + positional_embedding(visual, grid_h, grid_w).to(x.dtype)
    x = visual.ln_pre(x)

    blocks = visual.transformer.resblocks
    mid = None
    for index, block in enumerate(blocks[:-1]):
        x, csa = transformer_block(block, x, with_csa=index in INTERMEDIATE_BLOCKS)
        if csa is not None:
            mid = csa if mid is None else mid + csa
    mid = mid / len(INTERMEDIATE_BLOCKS)

    last = blocks[-1]
    q, k, v = qkv(last, x)
    fused = 0.5 * self_self_attention(q, k) + 0.5 * mid
    out = (fused.to(v.dtype) @ v).transpose(1, 2).reshape(x.shape)
    x = x + last.ls_1(last.attn.out_proj(out))

    x = visual.ln_post(x)
    return x @ visual.proj if visual.proj is not None else x

"""Text features (docs/method.md §3): 80-template ensembles, exact truncation, caching.

The text tower is causal and pools at the end-of-text token, so the tokens after it never
change the feature: each batch of prompts is encoded only up to its longest real prompt
(prompts sorted by length), which is exact and several times cheaper than 77 tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .cache_folders import text_cache_folder

# Part of every cache key: bump it when what an entry holds or how it is computed changes.
CACHE_FORMAT = 2
# Temporary files older than this were left by a process that died while writing.
ORPHAN_AGE_S = 3600


def templates():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return OPENAI_IMAGENET_TEMPLATES


def text_tower_fingerprint(model) -> str:
    """A hash of every text-tower tensor: two models share cached features only if equal."""
    return weights_fingerprint(
        model, lambda name: not name.startswith("visual.") and name != "logit_scale"
    )


def weights_fingerprint(model, included: Callable[[str], bool]) -> str:
    """A hash of the names and values of the model's tensors whose names are `included`."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        if not included(name):
            continue
        digest.update(name.encode())
        # The raw bytes through the buffer protocol: no copy, and hashlib releases the GIL,
        # so a GUI thread stays responsive while a worker hashes.
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _supports_truncation(model) -> bool:
    return getattr(model, "text_pool_type", None) in ("argmax", "eos") and all(
        hasattr(model, name)
        for name in (
            "token_embedding",
            "positional_embedding",
            "transformer",
            "ln_final",
            "attn_mask",
        )
    )


def pooled_positions(model, tokens: torch.Tensor) -> torch.Tensor:
    """Index of the token each prompt's feature is read from (its end-of-text token)."""
    if getattr(model, "text_pool_type", "argmax") == "eos":
        return (tokens == model.text_eos_id).int().argmax(-1)
    return tokens.argmax(-1)  # OpenAI CLIP: the end-of-text token has the highest id


def encode_tokens(model, tokens: torch.Tensor) -> torch.Tensor:
    """Text features of (N, context) tokens, computed only up to the longest real prompt."""
    if not _supports_truncation(model):
        return model.encode_text(tokens)
    from open_clip.transformer import text_global_pool

    length = int(pooled_positions(model, tokens).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(
        cast_dtype
    )
    mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
    x = model.ln_final(model.transformer(x, attn_mask=mask))
    x = text_global_pool(
        x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None)
    )
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def template_ensemble(
    model,
    tokenizer,
    queries: list[str],
    device,
    autocast,
    batch_size=256,
    progress=None,
    checkpoint=None,
) -> torch.Tensor:
    """(len(queries), D) features: each query in the 80 templates, encoded, L2-normalised,
    averaged and L2-normalised again."""
    temps = templates()
    prompts = [template(q) for q in queries for template in temps]
    tokens = tokenizer(prompts)
    # Batches of similar length truncate best.
    order = torch.argsort(pooled_positions(model, tokens), stable=True)
    features = None
    done = 0
    for start in range(0, len(prompts), batch_size):
        if checkpoint is not None:
            checkpoint()
        index = order[start : start + batch_size]
        with torch.no_grad(), autocast:
            batch = encode_tokens(model, tokens[index].to(device)).float()
        if features is None:
            features = torch.empty(len(prompts), batch.shape[-1], device=device)
        features[index.to(device)] = F.normalize(batch, dim=-1)
        done += len(index)
        if progress is not None:
            progress(done, len(prompts), "text")
    per_query = features.view(len(queries), len(temps), -1).mean(1)
    return F.normalize(per_query, dim=-1)


def templates_digest() -> str:
    """A hash of the template texts themselves (not the set's name): edited templates in a
    newer open_clip give different features."""
    texts = "\n".join(template("{}") for template in templates())
    return hashlib.blake2b(texts.encode(), digest_size=8).hexdigest()


def text_cache_key(model, precision: str, device) -> str:
    """What cached features depend on: format, text weights, templates, precision and device
    type (fp16 on CUDA rounds differently from the CPU)."""
    device_type = torch.device(device).type
    return (
        f"v{CACHE_FORMAT}-{text_tower_fingerprint(model)}-{templates_digest()}"
        f"-{precision}-{device_type}"
    )


def text_feature_width(model) -> int:
    """D, the width of the model's text features, measured on a one-token prompt (any text
    tower, at the cost of one token's pass when truncation applies)."""
    context = int(getattr(model, "context_length", 77))
    tokens = torch.zeros(1, context, dtype=torch.long, device=next(model.parameters()).device)
    with torch.no_grad():
        return int(encode_tokens(model, tokens).shape[-1])


class TextFeatureCache:
    """Query features in memory and on disk, keyed by `text_cache_key` and query.

    One .npy per query. Writes are atomic and durable (a uniquely named temporary file,
    fsynced, then renamed); an entry that does not read back as finite float32 of shape
    (width,) is deleted and recomputed, so a damaged file never blocks later runs.
    """

    def __init__(
        self,
        model_key: str,
        root: Path | None = None,
        use_disk: bool = True,
        width: int | None = None,
    ):
        self.model_key = model_key
        self.width = width
        self.memory: dict[str, np.ndarray] = {}
        self.folder = text_cache_folder(root) / model_key if use_disk else None
        if self.folder is not None:
            self._remove_orphans()

    @classmethod
    def for_model(cls, model, precision: str, device, root: Path | None = None, use_disk=True):
        """The cache of `model`'s text features at `precision` on `device`."""
        key = text_cache_key(model, precision, device)
        return cls(key, root, use_disk, width=text_feature_width(model))

    def _path(self, query: str) -> Path:
        return self.folder / f"{hashlib.sha1(query.encode()).hexdigest()}.npy"

    def _remove_orphans(self) -> None:
        cutoff = time.time() - ORPHAN_AGE_S
        for tmp in self.folder.glob("*.tmp"):
            with contextlib.suppress(OSError):  # another process removed it first
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()

    def _valid(self, value: np.ndarray) -> bool:
        return (
            value.ndim == 1
            and value.dtype == np.float32
            and value.size > 0
            and (self.width is None or value.shape[0] == self.width)
            and bool(np.isfinite(value).all())
        )

    def get(self, query: str):
        if query in self.memory:
            return self.memory[query]
        if self.folder is None:
            return None
        path = self._path(query)
        try:
            with open(path, "rb") as fh:
                value = np.lib.format.read_array(fh, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):
            value = None
        if value is None or not self._valid(value):
            # Truncated by a crash, or written by something else: recompute it.
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            return None
        self.memory[query] = value
        return value

    def prime(self, features: dict[str, np.ndarray]) -> None:
        """Hold features computed elsewhere (e.g. shipped to a cluster worker) in memory,
        checked like entries read from disk; invalid ones are left to be recomputed."""
        self.memory.update({q: v for q, v in features.items() if self._valid(np.asarray(v))})

    def put(self, query: str, value: np.ndarray) -> None:
        self.memory[query] = value
        if self.folder is None:
            return
        tmp = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self._path(query)
            # A random name per writer: threads and processes writing the same query never
            # share a temporary file.
            with tempfile.NamedTemporaryFile(
                dir=self.folder, prefix=f"{path.stem}.", suffix=".tmp", delete=False
            ) as fh:
                tmp = fh.name
                np.save(fh, value)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            # A read-only or full cache folder only costs recomputation next time.
            self.folder = None


def query_features(
    model,
    tokenizer,
    cache: TextFeatureCache,
    queries: list[str],
    device,
    autocast,
    progress=None,
    checkpoint=None,
) -> torch.Tensor:
    """Template-ensembled features of `queries`, computing only those not cached."""
    unique = list(dict.fromkeys(queries))
    missing = [q for q in unique if cache.get(q) is None]
    if missing:
        computed = template_ensemble(
            model, tokenizer, missing, device, autocast, progress=progress, checkpoint=checkpoint
        )
        for query, feature in zip(missing, computed.cpu().numpy(), strict=False):
            cache.put(query, feature)
    elif progress is not None:
        progress(1, 1, "text")
    return torch.from_numpy(np.stack([cache.get(q) for q in queries])).to(device)


def fuse_aux_text(
    name_features: torch.Tensor,
    aux_features: torch.Tensor,
    query_class: list[int],
    background: bool,
    c_def: float,
) -> torch.Tensor:
    """(1 - c_def) * f_name + c_def * f_aux per query, not re-normalised.

    `aux_features[j]` belongs to non-background class j (class j + 1 with background); every
    variant of a class gets its class's aux feature; background queries are left unchanged.
    """
    fused = name_features.clone()
    first = 1 if background else 0
    for q, cls in enumerate(query_class):
        if cls >= first:
            fused[q] = (1 - c_def) * name_features[q] + c_def * aux_features[cls - first]
    return fused

"""Model loading: open_clip names and pretrained tags, local weight files, device, precision."""

from __future__ import annotations

import os
import pickle
import re
import threading
import warnings
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .precision import PRECISIONS, autocast, resolve_precision  # noqa: F401 - their old home

WEIGHTS_ENV = "NAPARI_ITACLIP_WEIGHTS"
DEFAULT_MODEL = "ViT-B-16"
DEFAULT_PRETRAINED = "openai"


# progress(done_bytes, total_bytes, "download") while pretrained weights download.
DownloadProgress = Callable[[int, int, str], None]
# open_clip's download functions are module attributes: one load at a time may wrap them.
_DOWNLOAD_HOOK_LOCK = threading.Lock()


class WeightsUnavailableError(RuntimeError):
    """The pretrained weights are neither cached nor downloadable."""


def available_devices() -> list[str]:
    """Devices present on this machine, best first ("cuda", "mps", "cpu")."""
    import torch

    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return [*devices, "cpu"]


def resolve_device(device="auto"):
    """`"auto"` picks cuda, then mps, then cpu; an explicit device must be present."""
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(
            f"device must be a string such as 'auto', 'cpu', 'cuda', 'mps'; got {device!r}"
        )
    if device == "auto":
        return torch.device(available_devices()[0])
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but no CUDA GPU is available here")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif resolved.type == "mps":
        if "mps" not in available_devices():
            raise ValueError("device 'mps' was asked for but Apple MPS is not available here")
    elif resolved.type != "cpu":
        raise ValueError(f"unsupported device {device!r}; use 'auto', 'cpu', 'cuda' or 'mps'")
    return resolved


def _is_local_file(pretrained) -> bool:
    return isinstance(pretrained, os.PathLike) or (
        isinstance(pretrained, str) and (os.sep in pretrained or os.path.isfile(pretrained))
    )


def _missing_weights_message(model: str, pretrained: str, exc: BaseException) -> str:
    return (
        f"could not load the pretrained weights {model!r} / {pretrained!r}: they are not in the "
        f"open_clip cache and downloading them failed ({type(exc).__name__}: {exc}). Fix: on a "
        'machine with internet access run `python -c "import open_clip; '
        f"open_clip.create_model('{model}', pretrained='{pretrained}')\"` and copy the downloaded "
        "file here (for OpenAI weights the ViT-B-16.pt archive), then pass "
        "pretrained='/path/to/file' (CLI: --pretrained FILE) or set the environment variable "
        f"{WEIGHTS_ENV}=/path/to/file."
    )


def _download_host(model: str, pretrained: str) -> str | None:
    from urllib.parse import urlparse

    source = weight_source(model, pretrained)
    if source.hub_repo:
        return "huggingface.co"
    return urlparse(source.url or "").hostname


def _reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to host:443 opens: fails fast offline instead of after the
    download client's minute of retries."""
    import socket

    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class WeightSource:
    """Where open_clip gets pretrained weights: a local file, or the files it tries in a
    Hugging Face hub repository (in its order: safetensors first), or a URL archive that
    it keeps under ~/.cache/clip."""

    file: str | None = None
    hub_repo: str | None = None
    hub_files: tuple[str, ...] = ()
    url: str | None = None

    @classmethod
    def from_open_clip(cls, model: str, pretrained: str) -> WeightSource:
        """open_clip's own record of these weights (importing open_clip takes seconds)."""
        import open_clip
        from open_clip.pretrained import HF_WEIGHTS_NAME, _get_safe_alternatives

        cfg = open_clip.get_pretrained_cfg(model, pretrained)
        hub_repo, hub_files = None, ()
        if cfg.get("hf_hub"):
            hub_repo, filename = os.path.split(cfg["hf_hub"])
            filename = filename or HF_WEIGHTS_NAME
            hub_files = (*_get_safe_alternatives(filename), filename)
        return cls(cfg.get("file"), hub_repo, hub_files, cfg.get("url"))


# open_clip's record of the default weights, so that `napari-itaclip info` says whether they
# are cached without importing open_clip; tests/test_models.py checks every entry against
# `WeightSource.from_open_clip`.
KNOWN_WEIGHT_SOURCES = {
    (DEFAULT_MODEL, DEFAULT_PRETRAINED): WeightSource(
        hub_repo="timm/vit_base_patch16_clip_224.openai",
        hub_files=("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
        url="https://openaipublic.azureedge.net/clip/models/"
        "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    ),
}


def weight_source(model: str, pretrained: str) -> WeightSource:
    known = KNOWN_WEIGHT_SOURCES.get((model, pretrained))
    return known if known is not None else WeightSource.from_open_clip(model, pretrained)


def cached_weights_path(
    model: str = DEFAULT_MODEL, pretrained: str = DEFAULT_PRETRAINED
) -> str | None:
    """The file open_clip would load these pretrained weights from without downloading, if any."""
    source = weight_source(model, pretrained)
    if source.file:
        return source.file if os.path.isfile(source.file) else None
    if source.hub_repo:
        from huggingface_hub import try_to_load_from_cache

        for name in source.hub_files:
            cached = try_to_load_from_cache(source.hub_repo, name)
            if isinstance(cached, str):
                return cached
    elif source.url:
        # open_clip's download folder for archives; with a hub source it is never read.
        archive = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(source.url)
        if archive.is_file():
            return str(archive)
    return None


def weights_cached(model: str = DEFAULT_MODEL, pretrained: str = DEFAULT_PRETRAINED) -> bool:
    """Whether open_clip would load these pretrained weights without downloading."""
    return cached_weights_path(model, pretrained) is not None


@contextmanager
def _reporting_downloads(progress: DownloadProgress | None):
    """Within the block, open_clip's downloads (Hugging Face hub or URL, both drawn with tqdm)
    call progress(done_bytes, total_bytes, "download") as bytes arrive."""
    if progress is None:
        yield
        return
    from functools import partial

    from huggingface_hub.utils import tqdm as hub_tqdm
    from open_clip import pretrained as open_clip_pretrained

    class ReportingTqdm(hub_tqdm):
        """A silent bar (hub_tqdm takes the hub's extra `name` argument) that reports bytes."""

        def __init__(self, *args, total=None, initial=0, **kwargs):
            super().__init__(*args, total=total, initial=initial, **{**kwargs, "disable": True})
            self.done_bytes, self.total_bytes = int(initial or 0), int(total or 0)
            progress(self.done_bytes, self.total_bytes, "download")

        def update(self, n=1):
            self.done_bytes += int(n or 0)
            progress(self.done_bytes, self.total_bytes, "download")

    with _DOWNLOAD_HOOK_LOCK:
        hub_download = open_clip_pretrained.hf_hub_download
        url_tqdm = open_clip_pretrained.tqdm
        open_clip_pretrained.hf_hub_download = partial(hub_download, tqdm_class=ReportingTqdm)
        open_clip_pretrained.tqdm = ReportingTqdm
        try:
            yield
        finally:
            open_clip_pretrained.hf_hub_download = hub_download
            open_clip_pretrained.tqdm = url_tqdm


def load_clip(
    model: str = DEFAULT_MODEL,
    pretrained=DEFAULT_PRETRAINED,
    quick_gelu=None,
    *,
    progress: DownloadProgress | None = None,
):
    """Build an open_clip CLIP (fp32, CPU, eval mode) and its tokenizer.

    `pretrained` is an open_clip tag ("openai", "laion2b_s34b_b88k", ...) or a local file: an
    OpenAI `.pt` archive (TorchScript) or a state dict in OpenAI/open_clip layout (`torch.save`
    file of tensors, or `.safetensors`); no code stored in a file ever runs. A local file
    is read like OpenAI's loader does (architecture inferred from the tensors, QuickGELU);
    if it does not fit that layout it is loaded into `model`'s open_clip architecture.
    `quick_gelu=None` follows the pretrained tag's own record (True for OpenAI weights).
    progress: called as progress(done_bytes, total_bytes, "download") while weights that are
    not cached yet download (never for local files or cached weights).
    Returns (model, tokenizer, identity) where identity names the weights for cache keys.
    """
    import open_clip

    env = os.environ.get(WEIGHTS_ENV)
    if env and model == DEFAULT_MODEL and pretrained == DEFAULT_PRETRAINED:
        pretrained = env
    if pretrained is not None and _is_local_file(pretrained):
        return _load_local_file(model, Path(pretrained), quick_gelu)
    if model not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model!r} (see open_clip.list_models())")
    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained is not None and pretrained not in tags:
        raise ValueError(
            f"unknown pretrained tag {pretrained!r} for {model!r}; known: {', '.join(tags) or 'none'}"
            " (or give a local weights file)"
        )
    if quick_gelu is None and pretrained is not None:
        quick_gelu = bool(open_clip.get_pretrained_cfg(model, pretrained).get("quick_gelu", False))
    if pretrained is not None and not weights_cached(model, pretrained):
        host = _download_host(model, pretrained)
        if host and not _reachable(host):
            raise WeightsUnavailableError(
                _missing_weights_message(model, pretrained, OSError(f"{host} is not reachable"))
            )
    try:
        with _reporting_downloads(progress):
            clip = open_clip.create_model(
                model,
                pretrained=pretrained,
                device="cpu",
                precision="fp32",
                force_quick_gelu=bool(quick_gelu),
            )
    except (OSError, RuntimeError, ValueError) as exc:
        if isinstance(exc, RuntimeError) and "size mismatch" in str(exc):
            raise
        raise WeightsUnavailableError(_missing_weights_message(model, pretrained, exc)) from exc
    tokenizer = open_clip.get_tokenizer(model)
    return clip.eval(), tokenizer, f"{model}/{pretrained}/qg{int(bool(quick_gelu))}"


def _zip_records(path: Path) -> list[str]:
    """The record names of a zip file; none for anything else (including a damaged zip)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _is_torchscript_archive(path: Path) -> bool:
    """Whether `path` is a TorchScript archive: a zip with compiled code and constants records
    (the records torch itself checks), as OpenAI's `.pt` files are."""
    return any(name.endswith("/constants.pkl") or "/code/" in name for name in _zip_records(path))


def _is_pickle(path: Path) -> bool:
    """Whether `path` is a torch.save file: a zip with a pickle record, or a bare pickle."""
    if any(name.endswith("data.pkl") for name in _zip_records(path)):
        return True
    with open(path, "rb") as fh:
        return fh.read(1) == pickle.PROTO


def _code_risk_message(path: Path, exc: Exception) -> str:
    culprit = re.search(r"(?:GLOBAL|class) ([\w.]+)", str(exc))
    names = f" ({culprit.group(1)})" if culprit else ""
    return (
        f"refusing weights file {path}: besides tensors it holds Python objects{names}, and "
        "unpickling them could run code stored in the file. If you trust its source, convert it "
        "once in a Python session: `obj = torch.load(path, weights_only=False)`, take the "
        "model's weights (`model.state_dict()` or the checkpoint's state-dict entry) and save "
        "them with `safetensors.torch.save_file(state_dict, 'weights.safetensors')` or "
        "`torch.save(state_dict, 'weights.pt')`; then load that file."
    )


def _read_weights(path: Path) -> dict:
    """The tensors of a local weights file, read without running any code stored in it.

    TorchScript archives go through `torch.jit.load` (their code is TorchScript, never Python);
    `.safetensors` hold only tensors; anything else is a pickle read with `weights_only=True`,
    passed explicitly because torch's default differs between versions and
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD only overrides it where it is not passed.
    """
    import torch

    if _is_torchscript_archive(path):
        with warnings.catch_warnings():
            # torch warns that TorchScript loading is deprecated; OpenAI archives are TorchScript.
            warnings.simplefilter("ignore", FutureWarning)
            try:
                return torch.jit.load(str(path), map_location="cpu").state_dict()
            except RuntimeError as exc:
                raise ValueError(f"cannot read TorchScript archive {path}: {exc}") from None
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as exc:
            raise ValueError(f"cannot read weights file {path}: {exc}") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if _is_pickle(path):
            raise ValueError(_code_risk_message(path, exc)) from None
        raise ValueError(
            f"cannot read weights file {path}: not a torch, TorchScript or safetensors file"
        ) from None
    except Exception as exc:
        raise ValueError(f"cannot read weights file {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict (found {type(state).__name__})")
    return state


def _load_local_file(model: str, path: Path, quick_gelu):
    import open_clip
    from open_clip.model import build_model_from_openai_state_dict

    if not path.is_file():
        raise ValueError(f"weights file not found: {path}")
    # The causal mask is rebuilt by the model; TorchScript archives keep a copy of it.
    state = {
        k.removeprefix("module."): v for k, v in _read_weights(path).items() if k != "attn_mask"
    }
    try:
        # As open_clip's OpenAI loader (which falls back to an unsafe torch.load, so it is not
        # called): architecture from the tensors, QuickGELU, weights rounded through fp16.
        clip = build_model_from_openai_state_dict(dict(state), cast_dtype=None).float()
    except Exception as openai_error:
        try:
            clip = open_clip.create_model(
                model, pretrained=None, device="cpu", force_quick_gelu=bool(quick_gelu)
            )
            clip.load_state_dict(state)
        except Exception as exc:
            raise ValueError(
                f"{path} is neither an OpenAI-layout CLIP ({openai_error}) nor a state dict of "
                f"open_clip model {model!r} ({exc})"
            ) from None
    context_length = int(getattr(clip, "context_length", 77))
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    stat = path.stat()
    return clip.eval(), tokenizer, f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def deprecated_loader_arguments(
    model=DEFAULT_MODEL,
    pretrained=DEFAULT_PRETRAINED,
    device="auto",
    precision="auto",
    *,
    quick_gelu=None,
) -> tuple:
    """The loading arguments of 0.1's `ITACLIP(...)`, bound by Python itself."""
    return model, pretrained, device, precision, quick_gelu


def _is_positive(value, kind) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool) and value > 0


def run_settings(device, precision, batch_size, band_memory_mb) -> tuple:
    """(torch.device, precision): resolved, every setting checked (before weights load)."""
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    if batch_size is not None and not _is_positive(batch_size, int):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not _is_positive(band_memory_mb, int | float):
        raise ValueError(f"band_memory_mb must be a positive number, got {band_memory_mb!r}")
    return device, precision

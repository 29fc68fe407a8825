"""Local weight files (engine/models.py): read without ever running code stored in them."""

import copy
import os
import warnings

import pytest
import torch

from napari_itaclip.engine.models import load_clip


class WritesMarker:
    """Unpickling this runs `os.mkdir(marker)`: stands in for any code a pickle can run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


class TrainingArgs:
    """A harmless custom class, as training checkpoints often hold: still needs full pickle."""


@pytest.fixture(scope="module")
def reference(tiny_weights):
    """The tiny model as read from its plain state-dict file."""
    return load_clip(pretrained=str(tiny_weights))[0].state_dict()


def assert_same_weights(model, reference):
    state = model.state_dict()
    assert state.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("force_no_weights_only", [None, "1"])
def test_pickle_that_runs_code_is_refused_and_never_run(
    tmp_path, monkeypatch, force_no_weights_only
):
    if force_no_weights_only:
        # Users set this for other libraries' checkpoints; it must not open ours to pickle code.
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", force_no_weights_only)
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"visual.proj": torch.zeros(2, 2), "payload": WritesMarker(marker)}, path)
    with pytest.raises(ValueError, match="could run code"):
        load_clip(pretrained=str(path))
    assert not marker.exists()


def test_env_variable_weights_are_read_safely_too(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save(WritesMarker(marker), path)
    monkeypatch.setenv("NAPARI_ITACLIP_WEIGHTS", str(path))
    with pytest.raises(ValueError):
        load_clip()
    assert not marker.exists()


def test_pickle_needing_file_message_names_the_conversion(tmp_path, tiny_clip):
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": tiny_clip.state_dict(), "args": TrainingArgs()}, path)
    with pytest.raises(ValueError) as info:
        load_clip(pretrained=str(path))
    message = str(info.value)
    assert str(path) in message and "could run code" in message
    assert "state_dict()" in message and "safetensors.torch.save_file" in message


def test_safetensors_file_gives_the_state_dict_files_weights(tmp_path, tiny_clip, reference):
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    state = {k: v.contiguous() for k, v in tiny_clip.state_dict().items() if k != "attn_mask"}
    save_file(state, str(path))
    clip, _, identity = load_clip(pretrained=str(path))
    assert_same_weights(clip, reference)
    assert identity.startswith(f"file:{path.resolve()}")


def test_torchscript_archive_loads_through_jit_only(tmp_path, tiny_clip, reference, monkeypatch):
    from open_clip.transformer import QuickGELU

    path = tmp_path / "tiny-jit.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates TorchScript
        torch.jit.save(torch.jit.script(copy.deepcopy(tiny_clip)), str(path))

    def no_pickle_load(*args, **kwargs):
        raise AssertionError("a TorchScript archive must not reach torch.load")

    monkeypatch.setattr(torch, "load", no_pickle_load)
    clip = load_clip(pretrained=str(path))[0]
    assert_same_weights(clip, reference)  # OpenAI's fp16 rounding, as for the state dict
    assert isinstance(clip.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert next(clip.parameters()).dtype == torch.float32


def test_non_torchscript_file_never_reaches_openai_loader(tiny_weights, monkeypatch, reference):
    import open_clip

    def no_openai_loader(*args, **kwargs):
        raise AssertionError("load_openai_model falls back to an unsafe torch.load")

    monkeypatch.setattr(open_clip, "load_openai_model", no_openai_loader)
    assert_same_weights(load_clip(pretrained=str(tiny_weights))[0], reference)


def test_every_torch_load_passes_weights_only(tiny_weights, monkeypatch):
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    load_clip(pretrained=str(tiny_weights))
    assert calls and all(flag is True for flag in calls)


@pytest.mark.parametrize("name", ["garbage.pt", "garbage.safetensors"])
def test_unreadable_file_is_a_clear_error(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="cannot read weights file"):
        load_clip(pretrained=str(path))

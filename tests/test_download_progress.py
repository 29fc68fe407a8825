"""load_clip(progress=...) / ITACLIP.from_pretrained(progress=...): the weights' download
progress, through open_clip's own download code with a fake transfer (no network), and the
command line's bar that shows it."""

import io
import sys

import numpy as np
import open_clip
import open_clip.pretrained as open_clip_pretrained
import pytest
from huggingface_hub.utils import tqdm as hub_tqdm
from PIL import Image

from napari_itaclip.cli import EXIT_OK, main
from napari_itaclip.cli import progress as cli_progress
from napari_itaclip.engine import ITACLIP, models

TOTAL = 600 * 2**20


@pytest.fixture
def fake_download(monkeypatch, tiny_clip, tmp_path):
    """Weights not cached, host reachable; open_clip's hub download is replaced by one that
    moves TOTAL bytes through the tqdm class it is given, and create_model by one that runs
    open_clip's real `download_pretrained` and returns the tiny model."""
    monkeypatch.setattr(models, "weights_cached", lambda *a: False)
    monkeypatch.setattr(models, "_reachable", lambda host, timeout=3.0: True)
    downloads = []

    def hub_download(repo_id, filename, *, tqdm_class=None, **kwargs):
        # as huggingface_hub does: its own tqdm unless given one, with its `name` argument
        bar = (tqdm_class or hub_tqdm)(total=TOTAL, name="huggingface_hub.http_get", unit="B")
        for _ in range(4):
            bar.update(TOTAL // 4)
        bar.close()
        downloads.append(filename)
        path = tmp_path / filename
        path.write_bytes(b"weights")
        return str(path)

    def create_model(model, pretrained=None, **kwargs):
        open_clip_pretrained.download_pretrained(open_clip.get_pretrained_cfg(model, pretrained))
        return tiny_clip

    monkeypatch.setattr(open_clip_pretrained, "hf_hub_download", hub_download)
    monkeypatch.setattr(open_clip, "create_model", create_model)
    return downloads


def test_download_progress_reports_bytes(fake_download):
    events = []
    models.load_clip("ViT-B-16", "openai", progress=lambda *event: events.append(event))
    assert fake_download  # the download went through open_clip's hub path
    assert events[0] == (0, TOTAL, "download")
    assert events[-1] == (TOTAL, TOTAL, "download")
    assert [done for done, _, _ in events] == sorted(done for done, _, _ in events)


def test_from_pretrained_passes_progress_on(fake_download):
    events = []
    ITACLIP.from_pretrained(progress=lambda *event: events.append(event), device="cpu")
    assert events[-1] == (TOTAL, TOTAL, "download")


def test_without_progress_open_clip_is_left_as_it_is(fake_download):
    before = open_clip_pretrained.hf_hub_download
    models.load_clip("ViT-B-16", "openai")
    assert open_clip_pretrained.hf_hub_download is before


def test_url_downloads_report_too(monkeypatch):
    """OpenAI URLs are fetched by open_clip with its module's tqdm: that one reports too."""
    events = []
    with models._reporting_downloads(lambda *event: events.append(event)):
        bar = open_clip_pretrained.tqdm(total=1000, ncols=80, unit="iB", unit_scale=True)
        bar.update(400)
        bar.update(600)
    assert events == [(0, 1000, "download"), (400, 1000, "download"), (1000, 1000, "download")]
    assert open_clip_pretrained.tqdm.__module__.startswith("tqdm")  # restored


class Terminal(io.StringIO):
    """stderr as a terminal: where the command line draws its bars."""

    def isatty(self):
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_the_command_line_draws_the_download_on_stderr(fake_download, monkeypatch, tmp_path, quiet):
    bars = []

    class RecordedBar(cli_progress.DownloadBar):
        def __call__(self, *event):
            super().__call__(*event)
            bars.append(self.bar)

    monkeypatch.setattr(cli_progress, "DownloadBar", RecordedBar)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    image = tmp_path / "image.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(image)
    command = ["segment", str(image), "--classes", "a; b", "--out", str(tmp_path / "out")]
    assert main([*command, "--device", "cpu", *(["--quiet"] if quiet else [])]) == EXIT_OK
    assert fake_download  # the weights went through open_clip's download
    if quiet:
        assert "downloading weights" not in terminal.getvalue()
    else:
        assert bars[-1].n == bars[-1].total == TOTAL
        assert "downloading weights: 100%" in terminal.getvalue()
        assert "600M/600M" in terminal.getvalue()

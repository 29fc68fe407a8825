"""Views and sliding windows (docs/method.md §4 and §5)."""

import pytest
import torch
import torchvision.transforms.functional as TF

from napari_itaclip.engine.windows import (
    N_VIEWS,
    blur_view,
    crop_views,
    grey_view,
    sliding_windows,
    stitch_window,
    views_to_grid_logits,
    window_starts,
)


@pytest.mark.parametrize(
    ("length", "crop", "stride", "expected"),
    [
        (100, 224, 28, [(0, 100)]),  # shorter than the crop: one smaller window
        (224, 224, 28, [(0, 224)]),
        (250, 224, 28, [(0, 224), (26, 250)]),  # the last window is pulled back inside
        (336, 224, 28, [(0, 224), (28, 252), (56, 280), (84, 308), (112, 336)]),
        (448, 224, 112, [(0, 224), (112, 336), (224, 448)]),
    ],
)
def test_window_grid(length, crop, stride, expected):
    # grids = max(L - crop + stride - 1, 0) // stride + 1; end = min(start + crop, L);
    # start = max(end - crop, 0)
    assert window_starts(length, crop, stride) == expected


def test_windows_cover_every_pixel_in_row_major_order():
    windows = sliding_windows(336, 448, 224, 28)
    assert len(windows) == 5 * 9  # the paper's 500x375 example: 45 windows
    covered = torch.zeros(336, 448)
    for w in windows:
        assert w.y1 - w.y0 == 224 and w.x1 - w.x0 == 224
        covered[w.y0 : w.y1, w.x0 : w.x1] += 1
    assert covered.min() >= 1
    assert [(w.y0, w.x0) for w in windows[:2]] == [(0, 0), (0, 28)]


def test_grey_and_blur_views_match_torchvision():
    crops = torch.randn(2, 3, 32, 40)
    expected_grey = TF.rgb_to_grayscale(crops).expand(-1, 3, -1, -1)
    torch.testing.assert_close(grey_view(crops), expected_grey)
    expected_blur = TF.gaussian_blur(crops, [11, 11], [5.0, 5.0])
    torch.testing.assert_close(blur_view(crops), expected_blur, atol=1e-5, rtol=1e-5)


def test_view_order():
    crops = torch.randn(2, 3, 16, 16)
    views = crop_views(crops, True)
    assert views.shape[0] == 2 * N_VIEWS
    torch.testing.assert_close(views[:2], crops)
    torch.testing.assert_close(views[6:8], crops.flip(-2))
    torch.testing.assert_close(views[8:10], crops.flip(-1))
    assert crop_views(crops, False) is crops


def test_flips_are_undone_and_views_weighted():
    text = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    grid = (4, 5)
    feats = torch.randn(1, 1 + 20, 8)
    spatial = feats[:, 1:].reshape(1, 4, 5, 8)
    vflip = torch.cat([feats[:, :1], spatial.flip(1).reshape(1, 20, 8)], 1)
    hflip = torch.cat([feats[:, :1], spatial.flip(2).reshape(1, 20, 8)], 1)
    other = torch.randn(1, 21, 8)
    tokens = torch.cat([feats, other, other, vflip, hflip])
    out = views_to_grid_logits(tokens, text, grid, True, c_img=0.7)

    def logits(t):
        f = torch.nn.functional.normalize(t[:, 1:], dim=-1)
        return (f @ text.T).transpose(1, 2).reshape(1, 3, *grid)

    norm = torch.nn.functional.normalize
    mean_feat = (norm(feats[:, 1:], dim=-1) + 2 * norm(other[:, 1:], dim=-1)) / 3
    views = (mean_feat @ text.T).transpose(1, 2).reshape(1, 3, *grid)
    # the flipped views were built from the original, so undone they equal its logits
    torch.testing.assert_close(out, 0.7 * views + 0.3 * logits(feats), atol=1e-6, rtol=1e-5)


def test_stitch_averages_overlaps():
    from napari_itaclip.engine.windows import Window

    canvas, count = torch.zeros(1, 4, 6), torch.zeros(4, 6)
    stitch_window(canvas, count, torch.ones(1, 2, 2), Window(0, 4, 0, 4))
    stitch_window(canvas, count, 3 * torch.ones(1, 2, 2), Window(0, 4, 2, 6))
    mean = canvas / count
    assert mean[0, 0, 0] == 1 and mean[0, 0, 3] == 2 and mean[0, 0, 5] == 3

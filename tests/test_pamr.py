"""PAMR (docs/method.md §6) and band-wise upsampling: exactness of the memory-bounded forms."""

import pytest
import torch
import torch.nn.functional as F

from napari_itaclip.engine.pamr import halo, neighbour_offsets, pamr, pamr_affinity, pamr_iterate
from napari_itaclip.engine.resample import upsample_rows


def test_sixteen_neighbours_without_centre():
    offsets = neighbour_offsets((8, 16))
    assert len(offsets) == 16 and (0, 0) not in offsets
    assert {max(abs(dy), abs(dx)) for dy, dx in offsets} == {8, 16}


def affinity_by_definition(image, dilations):
    """a_n = mean_c(-|x - x_n| / (1e-8 + 0.1 * std_c)), std over 18 samples, softmax over n."""
    c, h, w = image.shape
    pad = max(dilations)
    padded = F.pad(image[None], (pad,) * 4, mode="replicate")[0]

    def at(dy, dx):
        return padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]

    samples = torch.stack(
        [at(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    )
    std = samples.std(0)  # unbiased
    aff = torch.stack(
        [
            (-(image - at(dy, dx)).abs() / (1e-8 + 0.1 * std)).mean(0)
            for dy, dx in neighbour_offsets(dilations)
        ]
    )
    return aff.softmax(0)


def test_affinity_matches_definition_and_sums_to_one():
    image = torch.randn(3, 20, 23)
    aff = pamr_affinity(image, (2, 4))
    torch.testing.assert_close(aff, affinity_by_definition(image, (2, 4)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(aff.sum(0), torch.ones(20, 23))


def test_constant_logits_are_a_fixed_point_and_zero_steps_is_identity():
    image, logits = torch.randn(3, 12, 12), torch.full((2, 12, 12), 0.25)
    torch.testing.assert_close(pamr(image, logits, 3, (1, 2)), logits)
    varied = torch.randn(2, 12, 12)
    assert pamr(image, varied, 0, (1, 2)) is varied


def test_one_step_is_the_weighted_sum_of_replicate_padded_neighbours():
    image, logits = torch.randn(3, 9, 11), torch.randn(4, 9, 11)
    aff = pamr_affinity(image, (1, 3))
    padded = F.pad(logits[None], (3,) * 4, mode="replicate")[0]
    expected = sum(
        a * padded[:, 3 + dy : 3 + dy + 9, 3 + dx : 3 + dx + 11]
        for a, (dy, dx) in zip(aff, neighbour_offsets((1, 3)), strict=False)
    )
    torch.testing.assert_close(pamr_iterate(logits, aff, (1, 3), 1), expected)


@pytest.mark.parametrize(("steps", "dilations"), [(10, (8, 16)), (3, (1, 2))])
def test_bands_with_halo_equal_the_whole_image(steps, dilations):
    torch.manual_seed(0)
    image, logits = torch.randn(3, 200, 37), torch.randn(5, 200, 37)
    whole = pamr(image, logits, steps, dilations)
    margin = halo(steps, dilations)
    assert margin == steps * max(dilations)
    for y0, y1 in [(0, 30), (30, 100), (100, 170), (170, 200)]:
        e0, e1 = max(0, y0 - margin), min(200, y1 + margin)
        band = pamr(image[:, e0:e1], logits[:, e0:e1], steps, dilations)[:, y0 - e0 : y1 - e0]
        torch.testing.assert_close(band, whole[:, y0:y1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("src", "dst"),
    [((7, 9), (31, 50)), ((14, 14), (224, 224)), ((5, 6), (5, 6)), ((20, 9), (13, 40))],
)
def test_band_upsampling_equals_interpolate(src, dst):
    x = torch.randn(3, *src)
    expected = F.interpolate(x[None], size=dst, mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(upsample_rows(x, dst, 0, dst[0]), expected, atol=1e-5, rtol=1e-5)
    mid = dst[0] // 2
    torch.testing.assert_close(
        upsample_rows(x, dst, mid, dst[0]), expected[:, mid:], atol=1e-5, rtol=1e-5
    )


def test_iterate_polls_the_checkpoint_before_every_step():
    image, logits = torch.randn(3, 9, 11), torch.randn(2, 9, 11)
    aff = pamr_affinity(image, (1, 2))
    polls = []
    refined = pamr_iterate(logits, aff, (1, 2), 4, checkpoint=lambda: polls.append(1))
    assert len(polls) == 4
    torch.testing.assert_close(refined, pamr_iterate(logits, aff, (1, 2), 4))

    class Stop(Exception):
        pass

    def stop_at_third_step():
        polls.append(1)
        if len(polls) == 3:
            raise Stop

    polls.clear()
    with pytest.raises(Stop):
        pamr_iterate(logits, aff, (1, 2), 4, checkpoint=stop_at_third_step)
    assert len(polls) == 3


def test_all_queries_at_once_equal_chunks_of_queries():
    """An accelerator iterates every query in one call (engine.refine.pamr_query_chunk), the
    CPU 8 at a time: queries are independent, so the results are identical."""
    torch.manual_seed(0)
    image, logits = torch.randn(3, 40, 33), torch.randn(21, 40, 33)
    aff = pamr_affinity(image, (2, 4))
    together = pamr_iterate(logits, aff, (2, 4), 5)
    chunked = torch.cat([pamr_iterate(chunk, aff, (2, 4), 5) for chunk in logits.split(8)])
    torch.testing.assert_close(together, chunked, rtol=0, atol=0)

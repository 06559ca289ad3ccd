import numpy as np
import torch

from otclust.data.augment import AugmentConfig, BatchAugmenter, Normalizer, augment_config_from_dict, default_augment_config, rotate_hue


def make(config, channels=1):
    return BatchAugmenter(config, Normalizer([0.0] * channels, [1.0] * channels))


def test_identity_settings_reproduce_the_input():
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    off = AugmentConfig(crop_scale=(1.0, 1.0), aspect_ratio=(1.0, 1.0), hflip_prob=0.0, brightness=0, contrast=0, saturation=0, grayscale_prob=0, blur_prob=0)
    out = make(off, 3)(images)
    assert torch.allclose(out, images.float() / 255, atol=1e-5)


def test_flip_only_mirrors_every_image():
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    flip = AugmentConfig(crop_scale=(1.0, 1.0), aspect_ratio=(1.0, 1.0), hflip_prob=1.0, brightness=0, contrast=0, saturation=0, grayscale_prob=0, blur_prob=0)
    out = make(flip)(images)
    assert torch.allclose(out, images.float().flip(-1) / 255, atol=1e-5)


def test_views_differ_stay_in_range_and_keep_shape():
    torch.manual_seed(0)
    for channels, size in [(1, (8, 8)), (1, (28, 28)), (3, (32, 32)), (3, (96, 96))]:
        images = torch.randint(0, 256, (8, channels, *size), dtype=torch.uint8)
        augment = make(default_augment_config(channels, size), channels)
        a, b = augment(images), augment(images)
        assert a.shape == images.shape
        assert not torch.allclose(a, b)
        assert a.min() >= 0 and a.max() <= 1  # mean 0, std 1 normaliser: values stay in [0, 1]


def test_output_size_resamples_the_crop_and_keeps_the_default_unchanged():
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    augment = make(default_augment_config(1, (8, 8)))
    # Same random draws: asking for the input size changes nothing.
    same = augment(images, generator=torch.Generator().manual_seed(3), output_size=(8, 8))
    default = augment(images, generator=torch.Generator().manual_seed(3))
    assert torch.equal(same, default)
    small = augment(images, generator=torch.Generator().manual_seed(3), output_size=(4, 4))
    assert small.shape == (6, 1, 4, 4)
    assert small.min() >= 0 and small.max() <= 1
    # Without random changes, a smaller output is the bilinear downsampling of the whole image.
    off = AugmentConfig(crop_scale=(1.0, 1.0), aspect_ratio=(1.0, 1.0), hflip_prob=0.0, brightness=0, contrast=0, saturation=0, grayscale_prob=0, blur_prob=0)
    resized = make(off)(images, output_size=(4, 4))
    expected = torch.nn.functional.interpolate(images.float() / 255, size=(4, 4), mode="bilinear", align_corners=False)
    assert torch.allclose(resized, expected, atol=1e-5)


def test_hue_turn_keeps_luma_and_grey_and_undoes_itself():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 5, 5, dtype=torch.float64)
    x[:, :, 0, 0] = x[:, :1, 0, 0]  # one grey pixel per image
    turn = torch.rand(16, dtype=torch.float64) - 0.5
    turned = rotate_hue(x, turn)
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close((turned * luma).sum(1), (x * luma).sum(1))
    torch.testing.assert_close(turned[:, :, 0, 0], x[:, :, 0, 0])
    torch.testing.assert_close(rotate_hue(turned, -turn), x)
    torch.testing.assert_close(rotate_hue(x, torch.ones(16, dtype=torch.float64)), x)
    assert (turned - x).abs().max() > 0.1  # and it does change colours


def test_hue_turn_moves_the_hsv_hue_by_the_turn_on_average():
    """Checked against Python's colorsys: torchvision turns HSV hue exactly, we turn the YIQ chroma
    plane (luma kept), which moves the HSV hue of saturated colours by the turn on average."""
    import colorsys

    import numpy as np

    torch.manual_seed(1)
    x = 0.2 + 0.6 * torch.rand(400, 3, 1, 1, dtype=torch.float64)
    for turn in (0.05, -0.1, 0.2):
        y = rotate_hue(x, torch.full((400,), turn)).clamp(0, 1)
        shifts = []
        for before, after in zip(x[:, :, 0, 0].numpy(), y[:, :, 0, 0].numpy()):
            hue, saturation, _ = colorsys.rgb_to_hsv(*before)
            if saturation > 0.3:  # the hue of near-grey colours is ill-defined
                shifts.append((colorsys.rgb_to_hsv(*after)[0] - hue + 0.5) % 1 - 0.5)
        shifts = np.array(shifts)
        assert len(shifts) > 200
        assert abs(shifts.mean() - turn) < 0.015 and abs(np.median(shifts) - turn) < 0.015
        assert np.all(np.sign(shifts) == np.sign(turn))


def test_rgb_preset_turns_hue_and_grey_images_have_none():
    assert default_augment_config(3, (32, 32)).hue == 0.1
    assert default_augment_config(1, (28, 28)).hue == 0.0


def test_per_image_standardisation_removes_each_image_brightness_and_contrast():
    torch.manual_seed(0)
    unit = torch.rand(4, 3, 8, 8) * 0.5 + 0.1
    normalizer = Normalizer([0.5] * 3, [0.25] * 3, per_image=True)
    out = normalizer.standardize(unit)
    torch.testing.assert_close(out.mean(dim=(2, 3)), torch.zeros(4, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(1, 2, 3)), torch.ones(4), atol=1e-5, rtol=0)
    # brighter, more contrasted or colour-cast copies of an image look the same to the network
    changed = unit * torch.tensor([1.6, 0.5, 1.2, 1.0]).view(4, 1, 1, 1) + torch.tensor([0.1, 0.0, 0.05]).view(1, 3, 1, 1)
    torch.testing.assert_close(normalizer.standardize(changed), out, atol=1e-4, rtol=0)
    # a flat image is not blown up into noise
    assert normalizer.standardize(torch.full((1, 3, 8, 8), 0.3)).abs().max() < 1e-4


def test_per_image_setting_reaches_training_views_and_prediction():
    from otclust.methods.base import InputSpec
    from otclust.methods.clot import Clot, ClotParams

    spec = InputSpec(n_samples=4, channels=3, image_size=(16, 16), mean=[0.5] * 3, std=[0.25] * 3)
    method = Clot(3, spec, ClotParams(), backbone="small-cnn", augment={"per_image": True})
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    for x in (method.augmenter(images), method.standardize(images)):
        torch.testing.assert_close(x.mean(dim=(2, 3)), torch.zeros(4, 3), atol=1e-5, rtol=0)


def test_sobel_edges_match_scipy_in_float64_and_drop_colour():
    from scipy import ndimage

    from otclust.data.augment import sobel_edges

    x = torch.rand(3, 3, 12, 10, dtype=torch.float64)
    edges = sobel_edges(x)
    luma = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).numpy()
    for n in range(3):
        gx = ndimage.sobel(luma[n], axis=1, mode="nearest") / 8
        gy = ndimage.sobel(luma[n], axis=0, mode="nearest") / 8
        np.testing.assert_allclose(edges[n, 0].numpy(), gx, atol=1e-12)
        np.testing.assert_allclose(edges[n, 1].numpy(), gy, atol=1e-12)
        np.testing.assert_allclose(edges[n, 2].numpy(), np.hypot(gx, gy), atol=1e-12)
    # a patch that differs from its surround in colour but not in luma leaves no edge; one that
    # differs in luma does
    flat = torch.full((2, 3, 8, 8), 0.5)
    flat[0, :, :, :4] += torch.tensor([0.1, -0.299 * 0.1 / 0.587, 0.0]).view(3, 1, 1)
    flat[1, :, :, :4] += 0.1
    magnitude = sobel_edges(flat)[:, 2]
    assert magnitude[0].abs().max() < 1e-6 and magnitude[1].abs().max() > 0.02


def test_edges_are_refused_for_grey_images():
    import pytest

    from otclust.errors import UserError

    with pytest.raises(UserError, match="edges=true needs colour"):
        augment_config_from_dict({"edges": True}, 1, (28, 28))
    assert augment_config_from_dict({"edges": True}, 3, (32, 32)).edges

import torch

from otclust.data.augment import AugmentConfig, BatchAugmenter, Normalizer, default_augment_config


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

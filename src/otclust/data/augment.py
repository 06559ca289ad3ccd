"""Batched, on-device augmentation of uint8 image batches.

Every view is made for the whole batch at once with tensor ops (one affine_grid + grid_sample for
all geometric changes, per-sample factors for photometric ones), so augmentation runs where the
model runs and costs little next to it; per-image PIL transforms would dominate a CPU step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from otclust.errors import UserError


@dataclass
class AugmentConfig:
    """Strength of each random change; 0 (or a range of (1, 1)) switches it off."""

    crop_scale: tuple[float, float] = (0.5, 1.0)  # area fraction kept by the random resized crop
    aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotation_degrees: float = 0.0
    hflip_prob: float = 0.5
    brightness: float = 0.4  # colour jitter strengths, as torchvision's ColorJitter
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.0  # RGB: hue turned by up to this share of a full turn, either way (torchvision's hue, at most 0.5)
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2  # RGB only
    blur_prob: float = 0.0
    noise_std: float = 0.0  # additive Gaussian noise, in units of [0, 1] intensities
    erase_prob: float = 0.0  # random erasing of one rectangle (Cutout), 1/16..1/4 of the image
    per_image: bool = False  # standardise each image by its own mean (per channel) and spread, not the data set's
    edges: bool = False  # RGB: the network sees Sobel edges of the grey image (x, y, magnitude), as DeepCluster's does, standardised per image


AUGMENT_SETTINGS = tuple(field.name for field in fields(AugmentConfig))


def default_augment_config(channels: int, image_size: tuple[int, int]) -> AugmentConfig:
    """Presets that suit the data: SimCLR-like for colour photos, milder for small grayscale images.

    Small grayscale images (digits, Fashion-MNIST) lose their identity under strong crops, and
    colour jitter has nothing to act on; shifts, small rotations, contrast and erasing keep the
    class while changing the pixels.
    """
    if channels == 3:
        # SimCLR's colour distortion at its CIFAR strength (0.4, 0.4, 0.4, hue 0.1): without the hue
        # turn, an image's own colours alone tell it from the others, and colour is learnt instead of form.
        return AugmentConfig(hue=0.1, blur_prob=0.5 if min(image_size) >= 64 else 0.0)
    return AugmentConfig(
        crop_scale=(0.6, 1.0),
        aspect_ratio=(0.8, 1.25),
        rotation_degrees=10.0,
        hflip_prob=0.0 if min(image_size) <= 8 else 0.5,
        brightness=0.4,
        contrast=0.4,
        saturation=0.0,
        jitter_prob=0.8,
        grayscale_prob=0.0,
        noise_std=0.05,
        erase_prob=0.3 if min(image_size) > 8 else 0.0,
    )


def augment_config_from_dict(values: dict | None, channels: int, image_size: tuple[int, int]) -> AugmentConfig:
    config = default_augment_config(channels, image_size)
    for key, value in (values or {}).items():
        if key not in AUGMENT_SETTINGS:
            raise UserError(f"unknown augmentation setting '{key}': use one of {', '.join(AUGMENT_SETTINGS)}")
        setattr(config, key, _checked_value(key, value, getattr(config, key)))
    if config.edges and channels != 3:
        raise UserError("--augment edges=true needs colour (RGB) images")
    return config


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _checked_value(key: str, value, default):
    """``value`` for setting ``key`` in the type of its default, or a UserError saying what is expected."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UserError(f"augmentation setting '{key}' is true or false, got {value!r}: e.g. --augment {key}=true")
        return value
    if isinstance(default, tuple):
        if not (isinstance(value, (list, tuple)) and len(value) == len(default) and all(_is_number(v) for v in value)):
            raise UserError(f"augmentation setting '{key}' is a pair of numbers, got {value!r}: e.g. --augment {key}=[{default[0]},{default[1]}]")
        return tuple(float(v) for v in value)
    if not _is_number(value) or value < 0:
        raise UserError(f"augmentation setting '{key}' is a number of at least 0, got {value!r}: e.g. --augment {key}={default}")
    if key.endswith("_prob") and value > 1:
        raise UserError(f"augmentation setting '{key}' is a probability, from 0 to 1, got {value!r}: e.g. --augment {key}={default}")
    return float(value)


# RGB <-> YIQ (NTSC): Y is the luma the grayscale conversion uses, I and Q the chroma plane.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def rotate_hue(x: torch.Tensor, turn: torch.Tensor) -> torch.Tensor:
    """Turn the hue of each image of an N x 3 x H x W batch by `turn` (N shares of a full turn).

    A rotation of the chroma plane of YIQ about the grey axis: luma and grey pixels stay as they
    are, one 3 x 3 matrix per image, so a batch needs no per-pixel HSV conversion. torchvision's
    adjust_hue turns the hue of HSV instead; the two agree closely but not exactly.
    """
    angle = -turn.double() * (2 * math.pi)  # YIQ turns the other way round than HSV hue
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(len(turn), 3, 3, dtype=torch.float64, device=x.device)
    rotation[:, 0, 0] = 1.0
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    to_yiq, to_rgb = _RGB_TO_YIQ.to(x.device), _YIQ_TO_RGB.to(x.device)
    matrices = (to_rgb @ rotation @ to_yiq).to(x.dtype)
    return torch.einsum("nij,njhw->nihw", matrices, x)


class Normalizer:
    """uint8 images -> float tensors standardised with the training data's channel statistics, or
    each by its own (``per_image``), or their Sobel edges standardised per image (``edges``).
    Training views and prediction go through the same instance, so both see the same input."""

    def __init__(self, mean: list[float], std: list[float], per_image: bool = False, edges: bool = False):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.per_image = per_image
        self.edges = edges

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().div_(255.0)

    def standardize(self, unit_images: torch.Tensor) -> torch.Tensor:
        if self.edges:
            unit_images = sobel_edges(unit_images)
        if self.per_image or self.edges:
            centred = unit_images - unit_images.mean(dim=(2, 3), keepdim=True)
            return centred / centred.std(dim=(1, 2, 3), keepdim=True).clamp(min=1e-2)
        mean = self.mean.to(unit_images.device)
        std = self.std.to(unit_images.device)
        return (unit_images - mean) / std

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.standardize(self.to_unit(images))


_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8


def sobel_edges(x: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W RGB -> N x 3 x H x W: horizontal and vertical Sobel gradients of the luma and
    their magnitude. Colour and overall brightness are gone; outlines and texture stay."""
    luma = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    kernels = torch.stack([_SOBEL, _SOBEL.T]).unsqueeze(1).to(x.device, x.dtype)
    gradients = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), kernels)
    return torch.cat([gradients, gradients.norm(dim=1, keepdim=True)], dim=1)


class BatchAugmenter:
    """Makes one random view of a uint8 batch per call; returns standardised float images."""

    def __init__(self, config: AugmentConfig, normalizer: Normalizer):
        self.config = config
        self.normalizer = normalizer

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        """`output_size` (H, W) resamples the crop to that size (SwAV's small multi-crop views);
        None keeps the input size."""
        x = self.normalizer.to_unit(images)
        x = self._geometric(x, generator, output_size)
        x = self._photometric(x, generator)
        return self.normalizer.standardize(x)

    def _uniform(self, n, low, high, x, generator):
        return torch.rand(n, device=x.device, generator=generator) * (high - low) + low

    def _bernoulli(self, n, p, x, generator):
        return torch.rand(n, device=x.device, generator=generator) < p

    def _geometric(self, x: torch.Tensor, generator, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Random resized crop, rotation and flip as one affine warp per sample."""
        c = self.config
        n = x.shape[0]
        area = self._uniform(n, c.crop_scale[0], c.crop_scale[1], x, generator)
        log_ratio = self._uniform(n, math.log(c.aspect_ratio[0]), math.log(c.aspect_ratio[1]), x, generator)
        ratio = torch.exp(log_ratio)
        scale_x = torch.sqrt(area * ratio).clamp(max=1.0)
        scale_y = torch.sqrt(area / ratio).clamp(max=1.0)
        # The crop centre may move as far as the crop still fits inside the image.
        shift_x = (1 - scale_x) * self._uniform(n, -1.0, 1.0, x, generator)
        shift_y = (1 - scale_y) * self._uniform(n, -1.0, 1.0, x, generator)
        angle = self._uniform(n, -c.rotation_degrees, c.rotation_degrees, x, generator) * (math.pi / 180)
        flip = torch.where(self._bernoulli(n, c.hflip_prob, x, generator), -1.0, 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack(
            [
                torch.stack([scale_x * cos * flip, -scale_y * sin, shift_x], dim=1),
                torch.stack([scale_x * sin * flip, scale_y * cos, shift_y], dim=1),
            ],
            dim=1,
        )
        shape = list(x.shape) if output_size is None else [n, x.shape[1], int(output_size[0]), int(output_size[1])]
        grid = F.affine_grid(theta, shape, align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _photometric(self, x: torch.Tensor, generator) -> torch.Tensor:
        c = self.config
        n = x.shape[0]
        shape = (n, 1, 1, 1)
        jitter = self._bernoulli(n, c.jitter_prob, x, generator).view(shape)
        if c.brightness > 0:
            factor = self._uniform(n, 1 - c.brightness, 1 + c.brightness, x, generator).view(shape)
            x = torch.where(jitter, x * factor, x)
        if c.contrast > 0:
            factor = self._uniform(n, 1 - c.contrast, 1 + c.contrast, x, generator).view(shape)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = torch.where(jitter, (x - mean) * factor + mean, x)
        if x.shape[1] == 3:
            gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
            if c.saturation > 0:
                factor = self._uniform(n, 1 - c.saturation, 1 + c.saturation, x, generator).view(shape)
                x = torch.where(jitter, (x - gray) * factor + gray, x)
            if c.hue > 0:
                turn = self._uniform(n, -c.hue, c.hue, x, generator)
                x = torch.where(jitter, rotate_hue(x, turn), x)
            if c.grayscale_prob > 0:
                to_gray = self._bernoulli(n, c.grayscale_prob, x, generator).view(shape)
                x = torch.where(to_gray, gray, x)
        x = x.clamp_(0.0, 1.0)
        if c.blur_prob > 0:
            x = self._blur(x, generator)
        if c.noise_std > 0:
            noise = torch.randn(x.shape, device=x.device, generator=generator) * c.noise_std
            x = (x + noise).clamp_(0.0, 1.0)
        if c.erase_prob > 0:
            x = self._erase(x, generator)
        return x

    def _blur(self, x: torch.Tensor, generator) -> torch.Tensor:
        """Gaussian blur of a random subset, sigma drawn once per batch (one conv for all)."""
        n, channels, height, _ = x.shape
        sigma = float(self._uniform(1, 0.1, 2.0, x, generator))
        radius = max(1, int(round(0.05 * height)))
        offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
        vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
        blurred = F.pad(x, (radius, radius, radius, radius), mode="reflect")
        blurred = F.conv2d(F.conv2d(blurred, horizontal, groups=channels), vertical, groups=channels)
        chosen = self._bernoulli(n, self.config.blur_prob, x, generator).view(n, 1, 1, 1)
        return torch.where(chosen, blurred, x)

    def _erase(self, x: torch.Tensor, generator) -> torch.Tensor:
        n, _, height, width = x.shape
        area = self._uniform(n, 1 / 16, 1 / 4, x, generator)
        erase_h = (torch.sqrt(area) * height).long().clamp(min=1)
        erase_w = (torch.sqrt(area) * width).long().clamp(min=1)
        top = (self._uniform(n, 0, 1, x, generator) * (height - erase_h + 1)).long()
        left = (self._uniform(n, 0, 1, x, generator) * (width - erase_w + 1)).long()
        rows = torch.arange(height, device=x.device).view(1, -1, 1)
        cols = torch.arange(width, device=x.device).view(1, 1, -1)
        inside = (
            (rows >= top.view(-1, 1, 1))
            & (rows < (top + erase_h).view(-1, 1, 1))
            & (cols >= left.view(-1, 1, 1))
            & (cols < (left + erase_w).view(-1, 1, 1))
        )
        chosen = self._bernoulli(n, self.config.erase_prob, x, generator).view(-1, 1, 1)
        mask = (inside & chosen).unsqueeze(1)
        return x.masked_fill(mask, 0.0)


class FeatureAugmenter:
    """Views of precomputed feature vectors: Gaussian noise and random masking of coordinates.

    Features have no geometry to crop or flip, so small perturbations are the only invariance
    that can be asked of them.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, noise_std: float = 0.1, drop_prob: float = 0.1):
        self.mean = mean
        self.std = std
        self.noise_std = noise_std
        self.drop_prob = drop_prob

    def standardize(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean.to(features.device)) / self.std.to(features.device)

    def __call__(self, features: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = self.standardize(features)
        noise = torch.randn(x.shape, device=x.device, generator=generator) * self.noise_std
        keep = torch.rand(x.shape, device=x.device, generator=generator) >= self.drop_prob
        return (x + noise) * keep

"""Frozen pretrained feature extractors: `--backbone timm:NAME`, `torchvision:NAME`, `otclust:RUN/model.pt`.

A pretrained backbone is a frozen stage in front of otclust's feature-vector path: it turns uint8
images into feature vectors once (data/embeddings.py caches them) and the clustering method then
trains on those vectors with the MLP backbone. Each extractor takes its preprocessing (input size,
interpolation, crop, mean/std) from its library, runs it on whole batches of tensors, and is
identified by its name and the sha256 of its weights file, which a trained model records so that
`predict` runs new images through the very same network.

Weights come from a local file (`weights=PATH`), else from the library's own local cache; the
network is used only with `download=True`. Weight files are read with `weights_only=True` (or as
safetensors), so loading one never executes code. timm and torchvision are the optional extra
`otclust[pretrained]`.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from otclust.data.datasets import resize_images, to_gray
from otclust.errors import UserError

LIBRARIES = ("timm", "torchvision", "otclust")
INSTALL_HINT = "pip install 'otclust[pretrained]'"


def is_pretrained(backbone: str | None) -> bool:
    """Whether a --backbone value names a pretrained extractor (LIBRARY:NAME) rather than an otclust network."""
    return isinstance(backbone, str) and backbone.split(":", 1)[0] in LIBRARIES and ":" in backbone


def refuse_unused_weights(weights, backbone: str | None, what: str = "model") -> None:
    """predict, evaluate and report of a model not fitted behind a pretrained backbone: a
    --weights given there would be silently unused (fit refuses the combination outright)."""
    if weights and not is_pretrained(backbone):
        raise UserError(
            f"--weights is for a {what} fitted behind a pretrained backbone (timm:NAME, torchvision:NAME, otclust:RUN); "
            f"this one was trained with --backbone {backbone}: drop --weights"
        )


def parse_backbone(backbone: str) -> tuple[str, str]:
    library, _, name = backbone.partition(":")
    if library not in LIBRARIES or not name:
        raise UserError(f"a pretrained backbone is LIBRARY:NAME with LIBRARY one of {', '.join(LIBRARIES)}, got '{backbone}'")
    return library, name


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_torchvision():
    """torchvision, importable even when its compiled ops cannot load.

    PyPI's Linux torchvision wheels are CUDA builds; beside a CPU-only torch their C extension
    fails to load and the import then stops while registering shapes for two detection ops
    (nms, qnms) that do not exist. Classification models and transforms need none of the C ops,
    so the two op names are declared (without kernels) and the import is retried.
    """
    try:
        import torchvision
    except ImportError:
        raise UserError(f"torchvision backbones need the 'pretrained' extra: {INSTALL_HINT}") from None
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        for op in ("nms", "qnms"):
            try:
                torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            except RuntimeError:
                pass  # declared by an earlier attempt
        import torchvision
    return torchvision


def import_timm():
    import_torchvision()  # timm imports torchvision: make that import work first
    try:
        import timm
        import timm.data
    except ImportError:
        raise UserError(f"timm backbones need the 'pretrained' extra: {INSTALL_HINT}") from None
    return timm


class FrozenExtractor(nn.Module):
    """uint8 images N x C x H x W -> N x out_dim feature vectors of a frozen network.

    `preprocess` is the library's own eval pipeline, applied to the whole batch on the device;
    grayscale images are repeated to the three channels the network was trained on."""

    def __init__(self, backbone: str, network: nn.Module, preprocess, out_dim: int, weights_path: Path, in_channels: int | None = 3, takes_uint8: bool = False, input_size: tuple | None = None):
        super().__init__()
        self.backbone = backbone
        self.weights_path = str(weights_path)
        self.network = network.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.out_dim = int(out_dim)
        self.weights_sha256 = file_sha256(weights_path)
        self.in_channels = in_channels  # None: the preprocessing converts channels itself
        self.takes_uint8 = takes_uint8  # the preprocessing scales uint8 itself (torchvision presets)
        self.input_size = input_size  # (height, width) the network sees after preprocessing

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: batch-norm statistics and dropout stay as trained

    def describe(self) -> str:
        """The preprocessing as text: part of the embedding cache key, so a change re-embeds."""
        return repr(self.preprocess)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.in_channels is not None and images.shape[1] != self.in_channels:
            if images.shape[1] == 1:
                images = images.expand(-1, self.in_channels, -1, -1)
            else:
                raise UserError(f"{self.backbone} takes {self.in_channels}-channel images, got {images.shape[1]} channels")
        x = images if self.takes_uint8 else images.float().div(255.0)
        return self.network(self.preprocess(x)).flatten(1).float()


class ClampedPipeline:
    """A timm eval transform run step by step on a float batch in [0, 1].

    Bicubic resizing of float tensors overshoots [0, 1] where PIL (on uint8 images) clips, so each
    resize is followed by a clamp; everything else is timm's own Compose."""

    def __init__(self, compose):
        self.steps = list(compose.transforms)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
            if type(step).__name__ == "Resize":
                x = x.clamp(0.0, 1.0)
        return x

    def __repr__(self) -> str:
        return "ClampedPipeline(" + ", ".join(repr(step).replace("\n", "") for step in self.steps) + ")"


# --- where weights come from ---------------------------------------------------------------


def _hf_cache_dir() -> str:
    """Hugging Face's hub cache, read from the environment on every call (tests redirect it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return os.path.join(home, "hub")


def _torch_hub_checkpoint(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])


def _timm_weights_file(name: str, pretrained_cfg: dict, download: bool) -> Path:
    """The weights file of a timm model in the local caches (HF hub, then torch hub), or downloaded."""
    hub_id = pretrained_cfg.get("hf_hub_id")
    url = pretrained_cfg.get("url")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(hub_id, filename, cache_dir=_hf_cache_dir())
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    if url and _torch_hub_checkpoint(url).is_file():
        return _torch_hub_checkpoint(url)
    if not (hub_id or url):
        raise UserError(f"timm:{name} has no published weights: pass a weights file with --weights PATH")
    if not download:
        raise UserError(f"the weights of timm:{name} are not in the local cache: pass --weights PATH, or --download to fetch them (needs a network)")
    if hub_id:
        from huggingface_hub import hf_hub_download

        for filename in ("model.safetensors", "pytorch_model.bin"):  # older repositories only have the pickle
            try:
                return Path(hf_hub_download(hub_id, filename, cache_dir=_hf_cache_dir()))
            except Exception as error:  # noqa: BLE001 - network, missing file: said in one line below
                failure = error
        raise UserError(f"could not download the weights of timm:{name} from {hub_id}: {type(failure).__name__}; pass --weights PATH instead")
    return _download(url, _torch_hub_checkpoint(url), f"timm:{name}")


def _download(url: str, target: Path, what: str) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=True)
    except Exception as error:  # noqa: BLE001 - no network, proxy, HTTP error: one line, not a traceback
        raise UserError(f"could not download the weights of {what} from {url}: {type(error).__name__}; pass --weights PATH instead") from None
    return target


def _torchvision_weights_file(name: str, weights_enum, download: bool) -> Path:
    cached = _torch_hub_checkpoint(weights_enum.url)
    if cached.is_file():
        return cached
    if not download:
        raise UserError(f"the weights of torchvision:{name} are not in the local cache ({cached}): pass --weights PATH, or --download to fetch them (needs a network)")
    return _download(weights_enum.url, cached, f"torchvision:{name}")


# Where training scripts put the weights inside a checkpoint: Lightning and timm's train.py
# ("state_dict"), the PyTorch tutorials ({"model_state_dict": ..., "optimizer_state_dict": ...}),
# others ("model").
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")


def _is_safetensors(path: Path) -> bool:
    """Whether the file holds safetensors, judged by its content and not its name: 8 bytes of
    header length, then the JSON header (torch files start with a zip's 'PK' or a pickle's 0x80).
    A safetensors file saved as .pth, or a torch file as .safetensors, is read as what it is."""
    try:
        with open(path, "rb") as handle:
            return handle.read(9)[8:9] == b"{"
    except OSError:
        return False


def _read_state_dict(path: Path, cached: str | None = None) -> dict:
    """A state dict from a safetensors or torch file, never executing code from it.

    cached: the backbone whose download this file is, when it comes from a library's cache
    rather than --weights (a damaged one is then an interrupted download, to delete)."""
    safetensors = _is_safetensors(path)
    try:
        if safetensors:
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            with warnings.catch_warnings():
                # torch's notices about a file it then refuses (a pickle protocol it did not
                # write): the file is judged below, in one line.
                warnings.simplefilter("ignore")
                with open(path, "rb") as handle:  # a file object: torch would read a '.safetensors' name as safetensors
                    state = torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - anything unreadable is the user's file, not a bug
        if cached:
            raise UserError(
                f"the cached download of {cached}, {path.resolve()}, cannot be read ({type(error).__name__}): it is damaged or incomplete "
                "(an interrupted download?): delete it, then fetch it again with --download, or pass --weights PATH"
            ) from None
        what = "a safetensors file" if safetensors else "a torch file"
        raise UserError(
            f"cannot read weights file {path} as {what} ({type(error).__name__}): it must hold a state dict, saved with "
            "torch.save(model.state_dict(), PATH) or as safetensors, and be complete"
        ) from None
    for key in WRAPPER_KEYS:  # training checkpoints nest the weights beside other things
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        found = f"a dict with keys {', '.join(repr(k) for k in list(state)[:6])}{', ...' if len(state) > 6 else ''}" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise UserError(
            f"weights file {path} does not hold a state dict of tensors (found {found}); "
            f"save model.state_dict() alone, or under one of the keys {', '.join(map(repr, WRAPPER_KEYS))}"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def _check_file(weights) -> Path:
    path = Path(weights).expanduser()
    if path.is_dir():
        raise UserError(f"weights file {path} is a folder: give the weights file itself (a state dict, .pth or .safetensors)")
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    return path.resolve()


def _without_classifier(state: dict, classifiers) -> dict:
    """The state dict without the classifier's tensors: the embedding is the classifier's input, so
    they are never used, and a checkpoint fine-tuned to another number of classes still fits."""
    return {k: v for k, v in state.items() if not any(k == c or k.startswith(c + ".") for c in classifiers)}


# --- the three libraries ---------------------------------------------------------------------


def _timm_extractor(backbone: str, name: str, weights, download: bool) -> FrozenExtractor:
    timm = import_timm()
    try:
        network = timm.create_model(name, pretrained=False)
    except RuntimeError as error:  # timm's "Unknown model"
        raise UserError(f"timm has no model '{name}' ({error}); list them with timm.list_models()") from None
    path = _check_file(weights) if weights else _timm_weights_file(name, dict(network.pretrained_cfg), download)
    # The features are the classifier's input: timm removes its head (reset_classifier(0)), and
    # every other tensor must come from the file (timm's own pretrained loader would only warn).
    heads = network.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    state = _without_classifier(_read_state_dict(path, cached=None if weights else backbone), heads)
    network.reset_classifier(0)
    _load_exactly(network, state, path, backbone)
    config = timm.data.resolve_data_config(model=network)
    preprocess = ClampedPipeline(timm.data.create_transform(**config))
    return FrozenExtractor(backbone, network, preprocess, network.num_features, path, in_channels=int(config["input_size"][0]), input_size=tuple(config["input_size"][1:]))


def _load_exactly(network: nn.Module, state: dict, path: Path, backbone: str) -> None:
    try:
        result = network.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor of the wrong shape
        raise UserError(f"weights file {path} does not fit {backbone}: {str(error).splitlines()[-1].strip()[:200]}") from None
    if result.missing_keys or result.unexpected_keys:
        # An example of each: side by side they show a prefix the file's names carry (Lightning's
        # 'model.conv1.weight' where 'conv1.weight' is missing).
        examples = [f"{len(keys)} {what}" + (f" (e.g. '{keys[0]}')" if keys else "") for keys, what in ((result.missing_keys, "tensors missing"), (result.unexpected_keys, "unexpected"))]
        raise UserError(f"weights file {path} does not fit {backbone}: {', '.join(examples)}")


def _last_linear(network: nn.Module) -> tuple[str, nn.Linear]:
    linears = [(n, m) for n, m in network.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError("this torchvision model has no linear classifier to remove: choose a classification model such as resnet18 or mobilenet_v3_small")
    return linears[-1]


def _torchvision_weights_enum(name: str):
    """torchvision's weights entry for NAME[.TAG] (its URL, its preprocessing preset), or a one-line error."""
    import_torchvision()
    from torchvision.models import get_model_weights

    arch, _, tag = name.partition(".")
    try:
        enum = get_model_weights(arch)
    except (ValueError, KeyError):
        raise UserError(f"torchvision has no classification model '{arch}': e.g. resnet18, mobilenet_v3_small, vit_b_16") from None
    try:
        return enum[tag] if tag else enum.DEFAULT
    except KeyError:
        raise UserError(f"torchvision:{arch} has no weights '{tag}': one of {', '.join(w.name for w in enum)}") from None


def _torchvision_extractor(backbone: str, name: str, weights, download: bool) -> FrozenExtractor:
    weights_enum = _torchvision_weights_enum(name)  # imports torchvision, or names the extra to install
    from torchvision.models import get_model

    arch = name.partition(".")[0]
    path = _check_file(weights) if weights else _torchvision_weights_file(name, weights_enum, download)
    network = get_model(arch, weights=None)
    # The features are the classifier's input: its last linear layer becomes the identity, before
    # loading, and its tensors are dropped from the file as timm's are (a checkpoint fine-tuned to
    # another number of classes fits).
    module_name, linear = _last_linear(network)
    parent = network.get_submodule(module_name.rpartition(".")[0]) if "." in module_name else network
    setattr(parent, module_name.rpartition(".")[2], nn.Identity())
    state = _without_classifier(_read_state_dict(path, cached=None if weights else backbone), (module_name,))
    _load_exactly(network, state, path, backbone)
    preset = weights_enum.transforms()
    crop = list(preset.crop_size) * (2 if len(preset.crop_size) == 1 else 1)
    return FrozenExtractor(backbone, network, preset, linear.in_features, path, takes_uint8=True, input_size=tuple(crop))


class OtclustPreprocess:
    """An otclust model's own input path: convert to its training channels and size, then standardise."""

    def __init__(self, method):
        self.method = method

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        spec = self.method.spec
        device = images.device
        if images.shape[1] != spec.channels:  # the conversions `conform` applies, batch by batch
            images = to_gray(images.cpu()).to(device) if spec.channels == 1 else images.expand(-1, 3, -1, -1)
        if tuple(images.shape[2:]) != tuple(spec.image_size):
            images = resize_images(images.cpu(), tuple(spec.image_size)).to(device)
        return self.method.standardize(images)

    def __repr__(self) -> str:
        spec = self.method.spec
        return f"OtclustPreprocess(channels={spec.channels}, size={tuple(spec.image_size)}, mean={spec.mean}, std={spec.std})"


class _OtclustBackbone(nn.Module):
    def __init__(self, method):
        super().__init__()
        self.method = method

    def forward(self, x):
        return self.method.embed(x)


def _otclust_extractor(backbone: str, name: str, weights) -> FrozenExtractor:
    # Imported here: the engine (and the checkpoint's read-out state) import the models, this module among them.
    from otclust.checkpoint import checkpoint_file
    from otclust.engine import load_trained

    given = Path(weights or name).expanduser()
    if not given.exists():  # a run folder or its model.pt, not a weights file of a library
        raise UserError(f"{backbone}: no run folder or model.pt at {given}: name the --out folder of an otclust fit, or its model.pt")
    path = _check_file(checkpoint_file(given))  # a run folder stands for its model.pt
    method, _ = load_trained(path, device="cpu")
    if method.spec.is_features:
        raise UserError(f"{path} was trained on feature vectors; an otclust backbone must be a model trained on images")
    out_dim = getattr(method.backbone, "out_dim", None)
    if out_dim is None:
        raise UserError(f"{path} ({method.name}) has no backbone network to embed with")
    return FrozenExtractor(backbone, _OtclustBackbone(method), OtclustPreprocess(method), out_dim, path, in_channels=None, takes_uint8=True, input_size=tuple(method.spec.image_size))


def decode_side(backbone: str) -> tuple[int, str]:
    """The side in pixels a folder's images are worth decoding to for `backbone` (the working
    resolution's cap, data/decode.py), and a few words saying where it comes from.

    It is the side the library's own eval pipeline scales an image's shorter side to before its
    centre crop: timm's input size / crop_pct, torchvision's preset resize_size, an otclust
    model's training size. On an image decoded to that square the pipeline's resize changes
    nothing and its crop takes the same centre as on the full photo, so the network sees what the
    library would show it; the small CNN's 64 px cap, used for these backbones until 2026-12-07,
    threw most of a photo's detail away before the resize up to 224 px. Read from the library's
    configuration or the checkpoint: nothing is built or downloaded."""
    library, name = parse_backbone(backbone)
    if library == "timm":
        timm = import_timm()
        try:
            cfg = timm.models.get_pretrained_cfg(name)
        except RuntimeError as error:  # an unknown tag (an unknown name gives None)
            raise UserError(f"timm has no model '{name}' ({error}); list them with timm.list_models()") from None
        if cfg is None:
            raise UserError(f"timm has no model '{name}'; list them with timm.list_models()")
        config = timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict())
        crop = max(config["input_size"][1:])
        # timm's eval transform (create_transform): Resize(floor(size / crop_pct)), CenterCrop(size).
        return math.floor(crop / (config.get("crop_pct") or timm.data.DEFAULT_CROP_PCT)), f"what {backbone}'s preprocessing resizes to before its {crop} px centre crop"
    if library == "torchvision":
        preset = _torchvision_weights_enum(name).transforms()
        crop = max(preset.crop_size)
        return max(getattr(preset, "resize_size", None) or [crop]), f"what {backbone}'s preprocessing resizes to before its {crop} px centre crop"
    # Imported here: the checkpoint module imports the models, this module among them.
    from otclust.checkpoint import read_checkpoint

    size = read_checkpoint(Path(name).expanduser())["spec"].get("image_size")
    if not size:
        raise UserError(f"{name} was trained on feature vectors; an otclust backbone must be a model trained on images")
    return max(size), f"the size {backbone} was trained at"


def load_extractor(backbone: str, weights: str | None = None, download: bool = False) -> FrozenExtractor:
    """The frozen extractor named by `backbone` (LIBRARY:NAME), on the CPU, in eval mode.

    weights: a local file (state dict or .safetensors; for otclust: a model.pt); None looks in the
    library's local cache, and only with download=True fetches the library's default weights."""
    library, name = parse_backbone(backbone)
    if library == "timm":
        return _timm_extractor(backbone, name, weights, download)
    if library == "torchvision":
        return _torchvision_extractor(backbone, name, weights, download)
    return _otclust_extractor(backbone, name, weights)

"""Frozen pretrained extractors: the libraries' own preprocessing and classifier removal, checked
against the libraries' per-image paths; where weights come from (file, local cache, never the
network unasked); clear one-line errors for a missing extra and a file that does not fit."""

import builtins
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from otclust.errors import UserError
from otclust.models.pretrained import file_sha256, import_timm, import_torchvision, is_pretrained, load_extractor, parse_backbone


def some_images(n=6, size=20, channels=3, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, size=(n, channels, size, size), dtype=np.uint8))


def test_backbone_names():
    assert is_pretrained("timm:resnet18") and is_pretrained("torchvision:resnet18") and is_pretrained("otclust:runs/x/model.pt")
    assert not any(is_pretrained(name) for name in ("resnet18", "auto", "mlp", "timm", "hub:resnet18", None))
    assert parse_backbone("timm:vit_small_patch16_224.dino") == ("timm", "vit_small_patch16_224.dino")
    with pytest.raises(UserError):
        parse_backbone("timm:")


def test_timm_extractor_matches_timms_own_pil_pipeline(random_weights, offline_caches):
    """The batched tensor preprocessing gives the features timm's create_transform gives on PIL
    images (resize, crop, mean/std from resolve_data_config), and the classifier is gone."""
    timm = import_timm()
    extractor = load_extractor("timm:test_vit", str(random_weights["timm:test_vit"]))
    reference = timm.create_model("test_vit", pretrained=False)
    reference.load_state_dict(torch.load(random_weights["timm:test_vit"], weights_only=True))
    reference.eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=reference))
    images = some_images()
    with torch.no_grad():
        pil = torch.stack([transform(Image.fromarray(img.permute(1, 2, 0).numpy())) for img in images])
        expected = reference.forward_head(reference.forward_features(pil), pre_logits=True)
        got = extractor(images)
    assert got.shape == (6, reference.num_features) == (6, extractor.out_dim)
    # PIL resizes uint8 images, the batch path float ones: close, not bit-identical.
    assert torch.allclose(got, expected, atol=0.05 * expected.abs().max().item())
    assert extractor.weights_sha256 == file_sha256(random_weights["timm:test_vit"])
    assert not any(p.requires_grad for p in extractor.parameters())


def test_torchvision_extractor_is_the_classifiers_input_after_the_weights_own_transforms(random_weights, offline_caches):
    import_torchvision()
    from torchvision.models import MobileNet_V3_Small_Weights, get_model

    extractor = load_extractor("torchvision:mobilenet_v3_small", str(random_weights["torchvision:mobilenet_v3_small"]))
    full = get_model("mobilenet_v3_small", weights=None)
    full.load_state_dict(torch.load(random_weights["torchvision:mobilenet_v3_small"], weights_only=True))
    full.eval()
    preset = MobileNet_V3_Small_Weights.DEFAULT.transforms()
    images = some_images(channels=1)  # grayscale goes in as three equal channels
    with torch.no_grad():
        pil = torch.stack([preset(Image.fromarray(img[0].numpy()).convert("RGB")) for img in images])
        pooled = full.avgpool(full.features(pil)).flatten(1)
        expected = full.classifier[:-1](pooled)  # everything but the last linear layer
        got = extractor(images)
    assert got.shape == (6, 1024) and extractor.out_dim == 1024
    assert torch.allclose(got, expected, atol=1e-3 * expected.abs().max().item() + 1e-5)


def test_a_weights_file_of_another_network_is_refused_in_one_line(random_weights, offline_caches):
    with pytest.raises(UserError, match="does not fit timm:test_vit") as error:
        load_extractor("timm:test_vit", str(random_weights["torchvision:mobilenet_v3_small"]))
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="does not fit torchvision:mobilenet_v3_small"):
        load_extractor("torchvision:mobilenet_v3_small", str(random_weights["timm:test_vit"]))


CALLS = []


def record_call():
    CALLS.append(1)
    return {}


class RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (record_call, ())


def test_a_pickled_object_is_not_executed(tmp_path, offline_caches):
    path = tmp_path / "evil.pt"
    torch.save({"model": RunsCodeWhenUnpickled()}, path)
    with pytest.raises(UserError, match="cannot read weights file"):
        load_extractor("torchvision:mobilenet_v3_small", str(path))
    assert CALLS == []


def test_without_weights_nothing_is_downloaded_unless_asked(offline_caches):
    for backbone in ("timm:test_vit", "torchvision:mobilenet_v3_small"):
        with pytest.raises(UserError, match="--weights PATH, or --download"):
            load_extractor(backbone)


def test_download_without_a_network_is_a_one_line_error(offline_caches):
    with pytest.raises(UserError, match="could not download the weights of torchvision:mobilenet_v3_small"):
        load_extractor("torchvision:mobilenet_v3_small", download=True)


def test_the_librarys_local_caches_are_used(random_weights, offline_caches):
    import_torchvision()
    from torchvision.models import MobileNet_V3_Small_Weights

    # torch hub's checkpoint folder, where torchvision's own download would have put the file
    cached = offline_caches / "torch" / "hub" / "checkpoints" / MobileNet_V3_Small_Weights.DEFAULT.url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(random_weights["torchvision:mobilenet_v3_small"].read_bytes())
    extractor = load_extractor("torchvision:mobilenet_v3_small")
    assert extractor.weights_path == str(cached) and extractor.weights_sha256 == file_sha256(cached)
    # Hugging Face's hub cache, where timm's own download would have put it
    snapshot = offline_caches / "hf" / "hub" / "models--timm--test_vit.r160_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    (snapshot / "pytorch_model.bin").write_bytes(random_weights["timm:test_vit"].read_bytes())
    assert load_extractor("timm:test_vit").weights_sha256 == file_sha256(random_weights["timm:test_vit"])


@pytest.mark.parametrize("module, backbone", [("timm", "timm:test_vit"), ("torchvision", "torchvision:mobilenet_v3_small")])
def test_a_missing_extra_names_the_install_command(module, backbone, monkeypatch):
    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name == module or name.startswith(module + "."):
            raise ImportError(f"No module named '{module}'")
        return real_import(name, *args, **kwargs)

    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(builtins, "__import__", without)
    with pytest.raises(UserError, match=r"pip install 'otclust\[pretrained\]'"):
        load_extractor(backbone, "unused.pt")


def test_an_otclust_model_is_a_frozen_extractor_with_its_own_input_path(tmp_path, offline_caches, blob_images):
    from otclust import OTClust
    from otclust.data import ImageDataset, conform

    images, _ = blob_images
    model = OTClust(n_clusters=3, epochs=1, batch_size=40, device="cpu", params={"predict_by": "head"}).fit(images)
    path = tmp_path / "model.pt"
    model.save(path)
    extractor = load_extractor(f"otclust:{path}")
    # another data set: 12 x 12 RGB images, converted as `conform` converts them for this model
    other = some_images(n=5, size=12, channels=3)
    expected = model.model_.eval().embed_batch(conform(ImageDataset(other, None, "x"), 1, (8, 8)).data)
    assert extractor.out_dim == model.model_.backbone.out_dim
    assert torch.allclose(extractor(other), expected, atol=1e-5)
    assert extractor.weights_sha256 == file_sha256(path)
    # The run folder names the same model, as it does for predict.
    assert load_extractor(f"otclust:{tmp_path}").weights_sha256 == file_sha256(path)


def test_a_checkpoint_fine_tuned_to_another_number_of_classes_fits_both_libraries(random_weights, offline_caches, tmp_path):
    """torchvision refused it (a size mismatch of the classifier, which is discarded anyway) where
    timm accepted it: both now drop the classifier's tensors before loading."""
    timm = import_timm()
    import_torchvision()
    from torchvision.models import get_model

    torch.manual_seed(1)
    images = some_images()
    full = get_model("mobilenet_v3_small", weights=None, num_classes=10).eval()
    torch.save(full.state_dict(), tmp_path / "tv10.pt")
    reference = timm.create_model("test_vit", pretrained=False, num_classes=10).eval()
    torch.save(reference.state_dict(), tmp_path / "timm10.pt")
    with torch.no_grad():
        tv = load_extractor("torchvision:mobilenet_v3_small", str(tmp_path / "tv10.pt"))
        preset_input = tv.preprocess(images)
        expected = full.classifier[:-1](full.avgpool(full.features(preset_input)).flatten(1))  # all but the 10-class layer
        assert torch.allclose(tv(images), expected, atol=1e-5)
        vit = load_extractor("timm:test_vit", str(tmp_path / "timm10.pt"))
        expected = reference.forward_head(reference.forward_features(vit.preprocess(images.float() / 255)), pre_logits=True)
        assert torch.allclose(vit(images), expected, atol=1e-5)


def test_a_damaged_download_in_the_librarys_cache_names_the_file_to_delete(random_weights, offline_caches):
    """An interrupted download in torch hub's (or Hugging Face's) cache was used, --download or
    not, and the message spoke of the state-dict format instead of the file to delete."""
    import_torchvision()
    from torchvision.models import MobileNet_V3_Small_Weights

    cached = offline_caches / "torch" / "hub" / "checkpoints" / MobileNet_V3_Small_Weights.DEFAULT.url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    whole = random_weights["torchvision:mobilenet_v3_small"].read_bytes()
    cached.write_bytes(whole[: len(whole) // 2])
    for download in (False, True):
        with pytest.raises(UserError, match=f"the cached download of torchvision:mobilenet_v3_small, {cached}, cannot be read .*: delete it, then fetch it again with --download") as error:
            load_extractor("torchvision:mobilenet_v3_small", download=download)
        assert "\n" not in str(error.value)
    snapshot = offline_caches / "hf" / "hub" / "models--timm--test_vit.r160_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    (snapshot / "pytorch_model.bin").write_bytes(b"\x80\x02 cut short")
    with pytest.raises(UserError, match=f"the cached download of timm:test_vit, {snapshot / 'pytorch_model.bin'}, cannot be read .*delete it"):
        load_extractor("timm:test_vit")
    # A file given with --weights is the user's own: its message stays about its contents.
    with pytest.raises(UserError, match="cannot read weights file"):
        load_extractor("torchvision:mobilenet_v3_small", str(cached))


def test_weights_files_are_read_by_their_contents_and_the_messages_name_what_is_wrong(random_weights, offline_caches, tmp_path):
    from safetensors.torch import save_file

    backbone, source = "timm:test_vit", random_weights["timm:test_vit"]
    state = torch.load(source, weights_only=True)
    images = some_images()
    expected = load_extractor(backbone, str(source))(images)
    # A folder, and an otclust: run that does not exist, were both 'weights file not found'.
    (tmp_path / "adir.pth").mkdir()
    with pytest.raises(UserError, match=f"weights file {tmp_path / 'adir.pth'} is a folder: give the weights file itself"):
        load_extractor(backbone, str(tmp_path / "adir.pth"))
    with pytest.raises(UserError, match=f"otclust:{tmp_path / 'nope'}: no run folder or model.pt at {tmp_path / 'nope'}"):
        load_extractor(f"otclust:{tmp_path / 'nope'}")
    # The format is told by the contents, not the name: safetensors saved as .pth, torch as .safetensors.
    save_file(state, tmp_path / "st.pth")
    (tmp_path / "torch.safetensors").write_bytes(source.read_bytes())
    for name in ("st.pth", "torch.safetensors"):
        assert torch.allclose(load_extractor(backbone, str(tmp_path / name))(images), expected), name
    # The PyTorch tutorials' checkpoint layout is unwrapped as the other wrappers are.
    torch.save({"epoch": 3, "model_state_dict": state, "optimizer_state_dict": {"state": {}}}, tmp_path / "tutorial.pt")
    assert torch.allclose(load_extractor(backbone, str(tmp_path / "tutorial.pt"))(images), expected)
    # Other layouts: what was found, and where the weights are looked for.
    torch.save({"epoch": 3, "weights": [1, 2]}, tmp_path / "other.pt")
    with pytest.raises(UserError, match=r"does not hold a state dict of tensors \(found a dict with keys 'epoch', 'weights'\); save model.state_dict\(\) alone, or under one of the keys 'state_dict', 'model_state_dict', 'model'"):
        load_extractor(backbone, str(tmp_path / "other.pt"))
    # Lightning's prefixed names: the unexpected example shows the prefix.
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, tmp_path / "lightning.ckpt")
    with pytest.raises(UserError, match=r"tensors missing \(e.g. 'cls_token'\), \d+ unexpected \(e.g. 'model.cls_token'\)"):
        load_extractor(backbone, str(tmp_path / "lightning.ckpt"))


def test_a_raw_pickle_as_weights_is_refused_without_torchs_pickle_protocol_warning(tmp_path, offline_caches):
    import pickle
    import warnings

    path = tmp_path / "raw.pth"
    path.write_bytes(pickle.dumps(RunsCodeWhenUnpickled(), protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UserError, match="cannot read weights file"):
            load_extractor("torchvision:mobilenet_v3_small", str(path))
    assert [str(w.message) for w in caught] == [] and CALLS == []


def test_a_folder_is_decoded_at_the_side_the_librarys_preprocessing_resizes_to(random_weights, offline_caches, tmp_path, blob_images):
    """A pretrained backbone's working resolution is read from its library's configuration (no
    weights, no network): the side its eval pipeline scales a shorter side to before the centre
    crop. It fell back to the small CNN's 64 px, and timm or torchvision then scaled that up."""
    from otclust import OTClust
    from otclust.data.decode import Probe, working_resolution
    from otclust.models.pretrained import decode_side

    timm = import_timm()
    extractor = load_extractor("timm:test_vit", str(random_weights["timm:test_vit"]))
    resize = next(step for step in extractor.preprocess.steps if type(step).__name__ == "Resize")
    assert decode_side("timm:test_vit")[0] == resize.size == 168  # 160 px input / crop_pct 0.95
    assert decode_side("timm:resnet18")[0] == timm.data.create_transform(**timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg("resnet18").to_dict())).transforms[0].size
    assert decode_side("torchvision:mobilenet_v3_small")[0] == 256 and decode_side("torchvision:vit_h_14.IMAGENET1K_SWAG_E2E_V1")[0] == 518
    model = OTClust(n_clusters=3, epochs=1, batch_size=40, device="cpu").fit(blob_images[0])
    model.save(tmp_path / "model.pt")
    assert decode_side(f"otclust:{tmp_path}")[0] == 8  # the size it was trained at
    photos = [Probe(300, 400, True)] * 3
    size, note = working_resolution(photos, "timm:test_vit", None)
    assert size == (168, 168)
    assert note.startswith("working resolution 168x168: what timm:test_vit's preprocessing resizes to before its 160 px centre crop (168 px; median shorter side 300 px)")
    assert working_resolution([Probe(30, 40, True)], "timm:test_vit", None)[0] == (30, 30)  # small images are not enlarged
    assert working_resolution(photos, "timm:test_vit", (64, 64))[0] == (64, 64)  # --image-size still decides
    for unknown in ("timm:nope", "timm:resnet18.bogus"):
        with pytest.raises(UserError, match=f"timm has no model '{unknown[5:]}'"):
            working_resolution(photos, unknown, None)

"""Backbones: weights from a local file, gray-input adaptation, the new head, freeze policies, offline ImageNet."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from structlog.testing import capture_logs

from inspector.errors import InputError
from inspector.training.backbones import build_model, frozen_names
from inspector.training.recipe import TrainRecipe


def test_a_local_state_dict_is_loaded_and_conv1_summed_for_gray_input(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = build_model(TrainRecipe(weights=str(path), dropout=0.2), num_classes=3, in_channels=1)
    assert torch.allclose(model.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 3)
    assert isinstance(model.fc[0], torch.nn.Dropout) and model.fc[1].out_features == 3


def test_a_state_dict_of_another_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(InputError, match=r"does not fit the backbone: missing .*unexpected"):
        build_model(TrainRecipe(weights=str(path)), 2, 1)
    junk = tmp_path / "junk.pth"
    junk.write_text("not torch")
    with pytest.raises(InputError, match="cannot read as a torch state dict"):
        build_model(TrainRecipe(weights=str(junk)), 2, 1)


def test_imagenet_weights_offline_name_the_cache_file_to_fill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*_a: object, **_k: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    # The network is the one part that cannot be real here: cut it the way an offline line PC would.
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(InputError) as err:
        build_model(TrainRecipe(weights="imagenet"), 2, 1)
    text = str(err.value)
    assert f"copy https://download.pytorch.org/models/resnet18-f37072fd.pth to {tmp_path}/hub/checkpoints/resnet18-f37072fd.pth" in text


@pytest.mark.parametrize("name", ["resnet34", "mobilenet_v3_small"])
def test_other_torchvision_backbones_by_name(name: str) -> None:
    model = build_model(TrainRecipe(backbone=name), 4, 1)
    assert model.eval()(torch.zeros(1, 1, 64, 64)).shape == (1, 4)


def test_unknown_backbone_lists_the_resnets() -> None:
    with pytest.raises(InputError, match=r"unknown backbone 'resnet19'; .* resnet18, resnet34"):
        build_model(TrainRecipe(backbone="resnet19"), 2, 1)


def test_freeze_policies() -> None:
    model = build_model(TrainRecipe(), 2, 1)
    assert frozen_names(model, "none") == []
    backbone = frozen_names(model, "backbone")
    assert "conv1.weight" in backbone and "layer4.1.bn2.bias" in backbone and "fc.weight" not in backbone
    upto2 = frozen_names(model, "layer2")
    assert "layer2.1.conv2.weight" in upto2 and "bn1.weight" in upto2
    assert not any(n.startswith(("layer3", "layer4", "fc")) for n in upto2)
    with pytest.raises(InputError, match="freeze=layer2 applies to ResNet-style models"):
        frozen_names(build_model(TrainRecipe(backbone="mobilenet_v3_small"), 2, 1), "layer2")


def test_max_pooling_replaces_the_global_average_pool(tmp_path: Path) -> None:
    model = build_model(TrainRecipe(pool="max"), 2, 1)
    assert isinstance(model.avgpool, torch.nn.AdaptiveMaxPool2d)
    with pytest.raises(InputError, match=r"pool=max replaces a global average pool \(to 1x1\) named avgpool; vit_b_16 has none"):
        build_model(TrainRecipe(backbone="vit_b_16", pool="max"), 2, 1)


def test_the_defect_map_head_feeds_the_classifier_and_leaves_eval_a_plain_classifier() -> None:
    model = build_model(TrainRecipe(seg_weight=1.0, dropout=0.2), 2, 1)
    x = torch.randn(3, 1, 64, 64)
    logits, seg = model.train()(x)
    assert logits.shape == (3, 2) and seg.shape == (3, 1, 4, 4)  # layer3: 1/16 of the input
    assert model.eval()(x).shape == (3, 2)
    keys = set(model.state_dict())
    assert {"conv1.weight", "layer4.1.bn2.bias", "seg_head.3.weight", "fc.1.weight"} <= keys
    assert model.fc[1].in_features == 512 + 2  # pooled features, then the map's max and mean
    assert "seg_head.0.weight" not in frozen_names(model, "layer4") and "layer3.0.conv1.weight" in frozen_names(model, "layer4")
    with pytest.raises(InputError, match=r"seg_weight needs a ResNet-style backbone .* lacks \['conv1'"):
        build_model(TrainRecipe(backbone="mobilenet_v3_small", seg_weight=1.0), 2, 1)


def test_a_state_dict_with_another_head_or_input_loads_the_rest_and_says_what_was_left_out(tmp_path: Path) -> None:
    torch.manual_seed(2)
    source = torchvision.models.resnet18(num_classes=10)  # fine-tuned elsewhere on 10 classes
    source.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # and on gray images
    path = tmp_path / "r18-10.pth"
    torch.save(source.state_dict(), path)
    with capture_logs() as logs:
        gray = build_model(TrainRecipe(weights=str(path)), num_classes=2, in_channels=1)
    assert torch.equal(gray.conv1.weight, source.conv1.weight)  # a 1-channel input convolution fits a gray run as it is
    assert torch.equal(gray.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert gray.fc.out_features == 2  # the head is always this run's
    (logged,) = [e for e in logs if e["event"] == "weights_loaded"]
    assert logged["new"] == ["fc.weight", "fc.bias"] and logged["left_out"] == [] and logged["head_not_loaded"] == 2
    with capture_logs() as logs:
        rgb = build_model(TrainRecipe(weights=str(path)), num_classes=2, in_channels=3)
    assert torch.equal(rgb.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    (logged,) = [e for e in logs if e["event"] == "weights_loaded"]
    assert logged["left_out"] == ["conv1.weight 64x1x7x7"] and "conv1.weight" in logged["new"]


def test_a_state_dict_whose_backbone_tensors_differ_in_shape_is_refused_naming_them(tmp_path: Path) -> None:
    wide = torchvision.models.resnet18().state_dict()
    wide["layer4.1.conv2.weight"] = torch.zeros(512, 512, 1, 1)
    path = tmp_path / "odd.pth"
    torch.save(wide, path)
    with pytest.raises(InputError, match=r"1 tensor\(s\) differ in shape: layer4.1.conv2.weight \(file 512x512x1x1, model 512x512x3x3\)"):
        build_model(TrainRecipe(weights=str(path)), 2, 1)


def test_a_checkpoint_of_inspector_train_starts_a_new_run_from_its_backbone(trained: Path, tmp_path: Path) -> None:
    ckpt = torch.load(trained / "best.pt", weights_only=True)
    model = build_model(TrainRecipe(weights=str(trained / "best.pt"), dropout=0.3, seg_weight=1.0), num_classes=3, in_channels=1)
    assert torch.equal(model.conv1.weight, ckpt["state_dict"]["conv1.weight"])  # gray, as trained
    assert torch.equal(model.layer3[0].bn1.running_mean, ckpt["state_dict"]["layer3.0.bn1.running_mean"])
    assert model.fc[1].out_features == 3
    with pytest.raises(InputError, match=r"an `inspector train` checkpoint of a resnet18, but this run's backbone is resnet34; give --backbone resnet18"):
        build_model(TrainRecipe(weights=str(trained / "best.pt"), backbone="resnet34"), 2, 1)


def test_a_backbone_that_cannot_take_the_input_size_is_named_with_the_size_to_give() -> None:
    from inspector.training.backbones import check_input

    vit = build_model(TrainRecipe(backbone="vit_b_16"), 2, 1)
    check_input(vit, "vit_b_16", (1, 224, 224))
    assert vit.training  # the check leaves the model's mode as it was
    with pytest.raises(InputError, match=r"^--backbone vit_b_16 cannot take 64x48 input \(Wrong image height! Expected 224 but got 48!\); give --size 224$"):
        check_input(vit, "vit_b_16", (1, 48, 64))
    check_input(build_model(TrainRecipe(backbone="mobilenet_v3_small"), 2, 3), "mobilenet_v3_small", (3, 40, 24))
    resnet = build_model(TrainRecipe(), 2, 1)
    resnet.forward = None  # ResNets take any size: not even run
    check_input(resnet, "resnet18", (1, 8, 8))

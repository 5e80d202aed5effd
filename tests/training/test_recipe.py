"""The training config: flags generated from the recipe, YAML with strict keys, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from inspector.cli import build_parser, main
from inspector.errors import ConfigError
from inspector.training.recipe import (
    Augment,
    TrainConfig,
    TrainRecipe,
    load_train_config,
)


def test_every_recipe_field_is_a_flag_with_its_default_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in [*TrainRecipe.model_fields, *Augment.model_fields]:
        if name != "augment":
            assert "--" + name.replace("_", "-") in text, name
    assert "(default: cosine)" in text and "(default: adamw)" in text


def test_flags_override_the_yaml_file(tmp_path: Path) -> None:
    cfg = tmp_path / "train.yaml"
    cfg.write_text("preprocess:\n  color: gray\n  resize: {width: 96, height: 64}\ntrain:\n  epochs: 7\n  augment: {vflip: false}\n")
    config = load_train_config(cfg, {"train.epochs": 3, "train.augment.rotate_deg": 0.0})
    assert config.train.epochs == 3
    assert config.train.augment.vflip is False and config.train.augment.rotate_deg == 0.0
    assert config.preprocess.input_shape == (1, 64, 96)


def test_unknown_keys_and_bad_values_are_reported_with_their_paths(tmp_path: Path) -> None:
    cfg = tmp_path / "train.yaml"
    cfg.write_text("train:\n  epoch: 3\n  lr: -1\n  batch_size: yes\n  augment: {flip: true}\n")
    with pytest.raises(ConfigError) as err:
        load_train_config(cfg, {})
    lines = "\n".join(err.value.errors)
    assert "train.epoch: unknown key; allowed: backbone, weights" in lines
    assert "train.lr: Input should be greater than 0" in lines
    assert "train.augment.flip: unknown key; allowed: hflip, vflip" in lines
    assert "train.batch_size: expected a number, got true" in lines  # not a batch of 1


def test_unfreeze_after_needs_a_freeze_policy_and_the_cli_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ok").mkdir()
    code = main(["train", str(tmp_path), "--out", str(tmp_path / "o"), "--unfreeze-after", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unfreeze_after needs a freeze policy" in err
    assert not (tmp_path / "o").exists()


def test_a_bad_flag_value_names_what_was_expected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["train", "d", "--out", "o", "--early-stop", "soon"])
    assert exc.value.code == 2
    assert "expected int or none, got 'soon'" in capsys.readouterr().err


def test_the_shipped_example_training_config_is_the_accuracy_reports_recipe() -> None:
    import importlib.util

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("accuracy_bench", root / "benchmarks" / "accuracy.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    example = load_train_config(root / "deploy" / "train.example.yaml", {})
    assert example == TrainConfig.model_validate(bench.MAGNETIC_TILE)


def test_transpose_needs_a_square_input(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_train_config(None, {"preprocess.resize": {"width": 64, "height": 32}, "train.augment.transpose": True})
    assert "train.augment.transpose needs a square input; preprocess.resize is 64x32" in " ".join(err.value.errors)
    assert load_train_config(None, {"train.augment.transpose": True}).train.augment.transpose


def test_tta_flips_averages_over_the_trained_flips_and_needs_at_least_one() -> None:
    def views(**augment: bool) -> tuple[tuple[int, ...], ...]:
        return load_train_config(None, {"train.tta": "flips", **{f"train.augment.{k}": v for k, v in augment.items()}}).train.tta_views()

    assert views() == ((), (3,), (2,), (2, 3))  # NCHW: hflip mirrors the width, vflip the height
    assert views(vflip=False) == ((), (3,))
    assert load_train_config(None, {}).train.tta_views() == ((),)
    with pytest.raises(ConfigError) as err:
        views(hflip=False, vflip=False)
    assert "tta=flips averages over the flips the model was trained with; turn on augment.hflip and/or augment.vflip" in " ".join(err.value.errors)


def test_a_training_config_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "train.yaml"
    cfg.write_bytes(b"train:\n  epochs: 3 # \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8 text") as err:
        load_train_config(cfg, {})
    assert "at byte" in err.value.errors[0]

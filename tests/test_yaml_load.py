"""Every YAML file a user writes refuses a repeated key and absurd nesting, naming the line, instead of keeping the last value."""

from __future__ import annotations

from pathlib import Path

import pytest

from inspector.errors import ConfigError
from inspector.training.recipe import load_train_config


def test_a_training_config_with_a_repeated_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("train:\n  epochs: 3\ntrain:\n  epochs: 40\n")
    with pytest.raises(ConfigError) as info:
        load_train_config(path, {})
    assert info.value.errors == [f"{path}: line 3: 'train' appears twice (lines 1 and 3); keep one"]


def test_a_training_config_nested_absurdly_deep_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("train: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError) as info:
        load_train_config(path, {})
    assert info.value.errors == [f"{path}: nested too deeply to read (no configuration needs more than a few levels)"]

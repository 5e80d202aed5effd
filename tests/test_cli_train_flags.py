"""`inspector train`'s preprocessing flags: `--size` is N or WxH, nothing half-typed; --help gives their defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from inspector.cli import build_parser, main


@pytest.mark.parametrize("typed", ["64x", "x64", "64x64x3", "sixty"])
def test_a_size_that_is_not_n_or_wxh_is_a_usage_error(typed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["train", "data", "--out", "run", "--size", typed])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --size: expected N or WxH, like 224 or 320x240 (width x height, pixels), got {typed!r}" in err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []  # refused while parsing: nothing ran


@pytest.mark.parametrize(("typed", "size"), [("64", (64, 64)), ("320x240", (320, 240)), ("320X240", (320, 240))])
def test_n_or_wxh_is_taken_as_typed(typed: str, size: tuple[int, int]) -> None:
    assert build_parser().parse_args(["train", "data", "--size", typed]).size == size


def test_train_help_gives_the_preprocessing_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines where it likes
    for flag in ("WIDTHxHEIGHT (default: 224)", "channels the model sees (default: rgb)", "or off (default: off)", "pad the rest (default: off)"):
        assert flag in text

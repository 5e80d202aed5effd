"""Every threshold flag takes 0..1 with at most 6 decimals, as scores are published: more would let decisions.jsonl contradict itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from inspector.cli import build_parser, main

SEVEN = "expected a number in 0..1 with at most 6 decimals (scores are published with 6), got 0.4446995"

FLAGS = {
    "replay --threshold": ["replay", "frames", "--threshold", "{t}"],
    "replay --what-if": ["replay", "frames", "--what-if", "0.5,{t}"],
    "export --threshold": ["export", "best.pt", "--out", "m.onnx", "--threshold", "{t}"],
    "calibrate --uncertain-band": ["calibrate", "data", "--target-recall", "0.9", "--uncertain-band", "{t}"],
}


@pytest.mark.parametrize("flag", list(FLAGS))
def test_a_threshold_of_seven_decimals_is_a_usage_error(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main([a.format(t="0.4446995") for a in FLAGS[flag]])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert SEVEN in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # refused while parsing: nothing ran, nothing written


@pytest.mark.parametrize("flag", list(FLAGS))
@pytest.mark.parametrize("typed", ["0.3", "0.7266", "0.123456", "1", "0", "1e-6", "0.100000"])
def test_thresholds_of_at_most_six_decimals_are_taken_as_typed(flag: str, typed: str) -> None:
    args = build_parser().parse_args([a.format(t=typed) for a in FLAGS[flag]])
    value = args.what_if[1] if flag == "replay --what-if" else args.uncertain_band if flag.startswith("calibrate") else args.threshold
    assert value == float(typed)


def test_what_if_names_the_threshold_with_too_many_decimals(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["replay", "frames", "--what-if", "0.3,0.5,0.30000001"])
    assert info.value.code == 2
    assert "at most 6 decimals (scores are published with 6), got 0.30000001" in capsys.readouterr().err

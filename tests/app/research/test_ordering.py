"""Tests for app/research/ordering.py: its command line refuses bad arguments before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.research import ordering as ordering_cli


@pytest.mark.parametrize(
    "argv",
    [
        ["compute", "--kicks", "-1"],
        ["compute", "--method", "best"],
        ["compute", "--candidate-rule", "x"],
        ["inspect", "--run-length", "0"],
        [],
    ],
)
def test_cli_rejects_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        ordering_cli.main(argv)
    assert exc.value.code == 2


def test_cli_rejects_a_bad_setting_combination_before_loading_the_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def no_model(_args: object) -> None:
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(ordering_cli, "_load_model", no_model)
    assert ordering_cli.main(["compute", "--knn-k", "20", "--out", str(tmp_path)]) == 2
    assert "raise greedy_k or shorten knn_k" in capsys.readouterr().err

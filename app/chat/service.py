"""The chat service the UI and the command line share: a model, a mode and settings -> reply text.

    plain      the exact model, exact sampling (model.generate.ExactSelector)
    simulate   the exact model, the paper's sampler in float64, mixture-embedding feedback
    encrypted  the key holder here, the model on a worker that sees only ciphertexts (app.chat.keyholder)

It turns UI/CLI history into chat messages, picks the mode's selector or the encrypted session, and
decodes tokens cumulatively (STYLE.md rule 13). In encrypted mode this side is the key holder: it
stops the reply when it decrypts EOS (the worker cannot see it) and the secret key lives in the
`EncryptedSession`, one per browser session or command-line run.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from app.chat.encrypted import EncryptedSession, encrypted_reply, read_ahead
from app.chat.keyholder import Expected, KeyHolderClient, ReplyRequest
from app.chat.replies import ChatMemory, ReplyUpdate
from core.errors import InputError
from core.progress import OnProgress
from model.conversation import finish_turn, plan_turn
from model.forward import LlamaShape
from model.generate import (
    DecodeSession,
    ExactSelector,
    GenerationSettings,
    Selector,
    generate,
)
from model.key_holder import KeyHolderSide
from model.loading import LoadedModel
from model.repetition import NO_PENALTY, Guarded, check_penalty, conversation_guard
from model.sampler import SamplerConfig
from model.simulate import SimulateSelector
from model.text import StreamDecoder
from model.tsp.ordering import Ordering
from model.tsp.store import ordering_for_model

Mode = Literal["plain", "simulate", "encrypted"]
MODES: tuple[Mode, ...] = ("plain", "simulate", "encrypted")
CHAT_TEMPERATURE = 0.3  # the chat default: SmolLM2-135M rambles at 1.0 (the sampler's research default)
# the chat default: the smallest penalty that stopped every loop in bench/bench_quality.py
CHAT_REPETITION_PENALTY = 1.1
DEFAULT_PRESET = "default"


@dataclass(frozen=True)
class ChatSettings:
    """Everything a user can set for one reply. Validated on construction (names the bad field)."""

    mode: Mode = "plain"
    temperature: float = CHAT_TEMPERATURE  # 0 = greedy
    max_new_tokens: int = 256
    seed: int | None = None  # seeds the sampler's uniforms r (and nothing else); None: a fresh one per reply
    tsp: bool = True  # simulate/encrypted: TSP vocabulary order (else token-id order)
    pp: bool = True  # simulate/encrypted: the post-processing polynomial
    amp_rounds: int = 3  # simulate/encrypted: rounds of g1^5 in the step function
    repetition_penalty: float = CHAT_REPETITION_PENALTY  # every mode: 1 = off (model.repetition)
    pad: bool = False  # encrypted: compute every reply to max_new_tokens (the worker cannot see its length)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        check_penalty(self.repetition_penalty)
        if not isinstance(self.pad, bool):
            raise InputError(f"pad must be true or false, got {self.pad!r}")
        GenerationSettings(self.max_new_tokens, self.temperature, self.seed or 0)  # validates the three
        self.sampler()  # validates tsp, pp, amp_rounds

    def drawn(self) -> ChatSettings:
        """These settings with a seed: a fresh random one if none was chosen (the worker would otherwise
        see every reply use the same uniforms). The footer shows it, so a reply can be repeated."""
        return self if self.seed is not None else replace(self, seed=secrets.randbelow(2**32))

    def generation(self) -> GenerationSettings:
        return GenerationSettings(self.max_new_tokens, self.temperature, self.drawn().seed or 0)

    def sampler(self) -> SamplerConfig:
        return SamplerConfig(
            tsp=self.tsp, pp=self.pp, amp_rounds=self.amp_rounds, temperature=self.temperature
        )

    def label(self) -> str:
        """How the reply's footer names the mode and its settings."""
        flags = []
        if self.mode != "plain":
            flags = [f"TSP {'on' if self.tsp else 'off'}", f"PP {'on' if self.pp else 'off'}"]
            flags.append(f"amp {self.amp_rounds}")
        if self.repetition_penalty != NO_PENALTY:
            flags.append(f"repetition penalty {self.repetition_penalty:g}")
        if self.pad and self.mode == "encrypted":
            flags.append("padded")
        return f"{self.mode} ({', '.join(flags)})" if flags else self.mode


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
        on_progress: OnProgress | None = None,
    ) -> ChatService:
        """Load (or compute, once) the model's TSP order."""
        return cls(loaded, ordering_for_model(loaded, on_progress=on_progress), worker_url, preset)

    def perm(self, tsp: bool) -> np.ndarray:
        vocab = self.loaded.model.config.vocab_size
        return np.asarray(self.ordering.perm, dtype=np.int64) if tsp else np.arange(vocab, dtype=np.int64)

    def selector(self, settings: ChatSettings, context: Sequence[int] = ()) -> Selector:
        """The mode's selector; with a repetition penalty, guarded over `context` and its own tokens."""
        embeddings = self.loaded.input_embeddings()
        selector: Selector
        if settings.mode == "plain":
            selector = ExactSelector(embeddings, settings.temperature)
        else:
            selector = SimulateSelector(embeddings, self.perm(settings.tsp), settings.sampler())
        guard = conversation_guard(self.loaded.tokenizer, settings.repetition_penalty, context)
        return Guarded(selector, guard) if guard.active else selector

    def state_key(self, settings: ChatSettings) -> tuple[str, ...]:
        """What a chat's model state depends on: another key never reuses it (model.conversation)."""
        if settings.mode == "plain":
            return ("plain", self.loaded.name)
        order = self.ordering.order_id if settings.tsp else "token ids"
        preset = self.preset if settings.mode == "encrypted" else ""
        return (settings.mode, self.loaded.name, order, preset)

    def expected(self) -> Expected:
        """What a worker must serve for this key holder."""
        vocab = int(self.loaded.model.config.vocab_size)
        return Expected(model=self.loaded.name, vocab=vocab, ordering=self.ordering.order_id)

    def open_encrypted(self, on_progress: OnProgress | None = None) -> EncryptedSession:
        """Create keys and connect to the worker (keys are uploaded once per session).

        Raises:
            InputError: no worker URL is configured.
            WorkerUnavailable: the worker cannot be reached.
            WorkerMismatch: the worker serves another model, order or preset.
        """
        if not self.worker_url:
            raise InputError(
                "encrypted mode needs a worker; start one with `python -m app worker` and pass "
                "--worker-url (or set HE_CHAT_WORKER_URL)"
            )
        shape = LlamaShape.from_config(self.loaded.model.config)
        keys = KeyHolderSide(self.preset, shape, self.loaded.input_embeddings(), self.perm(True))
        client = KeyHolderClient(self.worker_url, keys, self.expected(), on_progress=on_progress)
        return EncryptedSession(client, keys)

    def encrypted_request(self, settings: ChatSettings) -> ReplyRequest:
        """The worker-visible part of the settings (plus the key holder's temperature and penalty)."""
        return ReplyRequest(
            settings.max_new_tokens,
            settings.drawn().seed or 0,
            settings.tsp,
            settings.pp,
            settings.amp_rounds,
            settings.temperature,
            repetition_penalty=settings.repetition_penalty,
            pad=settings.pad,
        )

    def read_ahead(
        self,
        messages: Sequence[dict[str, str]],
        reply: str,
        settings: ChatSettings,
        session: EncryptedSession,
        memory: ChatMemory,
        should_stop: Callable[[], bool] | None = None,
        on_progress: OnProgress | None = None,
    ) -> int:
        """Encrypted mode, after a reply: read the next turn's opening markers while the user types
        (`app.chat.encrypted.read_ahead`). Returns the positions read; other modes read nothing (their
        prefill takes milliseconds)."""
        if settings.mode != "encrypted":
            return 0
        request = self.encrypted_request(settings)
        return read_ahead(self.loaded, messages, reply, request, session, memory, should_stop, on_progress)

    def reply(
        self,
        messages: Sequence[dict[str, str]],
        settings: ChatSettings,
        session: EncryptedSession | None = None,
        memory: ChatMemory | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Generator[ReplyUpdate, None, None]:
        """Stream a reply in the settings' mode. Closing the iterator stops it (and cancels the worker).

        Args:
            memory: the chat's state: the reply continues from it if it still matches the conversation
                and the settings, else reads the whole prompt; it holds the state after the reply.
            should_stop: polled while the reply runs; True ends it (finish "cancelled").

        Raises:
            InputError: empty or over-long conversation, before any token is generated.
            ChatError: encrypted mode without a session, or the worker failing.
        """
        settings = settings.drawn()  # (callers that show the seed draw it first)
        if settings.mode == "encrypted":
            if session is None:
                raise InputError("encrypted mode needs an EncryptedSession (see ChatService.open_encrypted)")
            request = self.encrypted_request(settings)
            key = self.state_key(settings)
            yield from encrypted_reply(self.loaded, key, messages, request, session, memory, should_stop)
            return
        tokenizer, window = self.loaded.tokenizer, self.loaded.context_window
        key = self.state_key(settings)
        state = memory.conversation if memory is not None else None
        cached = memory.session if memory is not None else None
        if state is not None and (cached is None or cached.length != len(state.ids)):
            state = None  # the cache does not hold what the state says: never reuse it
        turn = plan_turn(tokenizer, messages, key, state, window)
        decode_session = cached if turn.continued and cached is not None else DecodeSession(self.loaded)
        decoder = StreamDecoder(tokenizer)
        reply_ids: list[int] = []
        seconds = first = 0.0
        finish: Any = None
        try:
            selector = self.selector(settings, [*turn.base.ids, *turn.new_ids])
            generation = settings.generation()
            steps = generate(self.loaded, turn.new_ids, selector, generation, should_stop, decode_session)
            for step in steps:
                seconds += step.seconds
                first = first or seconds
                reply_ids.append(step.token_id)
                finish = step.finish
                delta = decoder.push(step.token_id)
                if step.finish is not None:
                    delta += decoder.flush()
                yield ReplyUpdate(
                    decoder.emitted,
                    delta,
                    step.index + 1,
                    seconds,
                    first,
                    step.finish,
                    start=turn.start,
                    new_positions=len(turn.new_ids),
                    continued=turn.continued,
                )
            if finish is None:  # should_stop ended the stream
                tail = decoder.flush()
                yield ReplyUpdate(decoder.emitted, tail, len(reply_ids), seconds, first, "cancelled")
        finally:
            if memory is not None:
                memory.conversation = state = finish_turn(tokenizer, turn, reply_ids, decode_session.length)
                if state is not None:
                    decode_session.truncate(len(state.ids))
                memory.session = decode_session


def start_local_worker(service: ChatService, processes: int | None = None) -> Any:
    """The embedded worker, in a process of its own on 127.0.0.1 (random port); returns it (.stop()).

    Its compute processes start warming the weight caches at once (progress in the log and on the page).
    """
    from app.worker.encrypted import EmbeddedWorker, WorkerSpec

    ordering = service.ordering
    spec = WorkerSpec.from_loaded(
        service.loaded, ordering.perm, ordering.order_id, processes, (service.preset,)
    )
    worker = EmbeddedWorker(spec)
    service.worker_url = worker.url
    return worker

"""Command line: the chat page, a worker, and chat in the terminal.

    python -m app                        # chat page on http://127.0.0.1:7860 with an in-process worker
    python -m app ui --worker-url 'ws://host:8765/?token=...'   # the page, with a remote worker
    python -m app worker --port 8765     # a model worker on 127.0.0.1:8765; prints its URL and token
    python -m app pool --replicas 3      # worker replicas on Ray Serve behind one address (app/pool/serve.py)
    python -m app chat "What is the capital of France?"
    python -m app chat --mode encrypted "Hi"       # starts an in-process worker unless --worker-url
    python -m app chat                   # interactive: one message per line, Ctrl-D to quit
    python -m app study --help           # user studies: init, generate, serve, export, report

Model options: --model-path DIR (any local transformers causal LM) or --tiny (the random test model).
Errors print one line naming the problem and the fix, and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence
from functools import partial
from typing import Any

from app.chat.encrypted import EncryptedSession
from app.chat.replies import ChatMemory
from app.chat.service import (
    CHAT_REPETITION_PENALTY,
    CHAT_TEMPERATURE,
    MODES,
    ChatService,
    ChatSettings,
    start_local_worker,
)
from app.model_options import add_model_arguments, load_model
from app.pool.cli import add_pool_arguments, run_pool
from app.worker.admission import redact, with_token
from app.worker.cli import add_policy_arguments, check_port, policy, report_warm_up
from app.worker.relay import public_url, serve_relay
from app.worker.tls import ENV_WORKER_CA, scheme, server_tls
from core.errors import ChatError
from core.progress import Progress
from model.loading import LoadedModel

ENV_WORKER_URL = "HE_CHAT_WORKER_URL"


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--preset", default="default", help="CKKS parameter preset (crypto/params.py)")


def _add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="the worker's compute processes (default: one per core); TenSEAL holds the GIL, so only "
        "processes use several cores",
    )


def _add_remote_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--worker-url",
        default=os.environ.get(ENV_WORKER_URL),
        help="a remote worker (ws://host:port/?token=..., or wss:// for one serving TLS)",
    )
    parser.add_argument(
        "--worker-ca",
        default=os.environ.get(ENV_WORKER_CA),
        help=f"trust a wss:// worker's certificate issued by this CA file (PEM; default: ${ENV_WORKER_CA}, "
        "else the system's authorities)",
    )


def _add_reply_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=MODES, default="plain")
    parser.add_argument("--temperature", type=float, default=CHAT_TEMPERATURE, help="0 = greedy")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the sampler's uniforms (default: a new one per reply)"
    )
    parser.add_argument("--no-tsp", dest="tsp", action="store_false", help="token-id order instead of TSP")
    parser.add_argument(
        "--no-pp", dest="pp", action="store_false", help="skip the post-processing polynomial"
    )
    parser.add_argument("--amp-rounds", type=int, default=3, help="rounds of g1^5 in the step function")
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        default=CHAT_REPETITION_PENALTY,
        help=f"hold back tokens the conversation already has (1 = off; default {CHAT_REPETITION_PENALTY})",
    )
    parser.add_argument(
        "--pad-replies",
        dest="pad",
        action="store_true",
        help="encrypted: compute every reply to --max-new-tokens, so the worker cannot see its length",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="Private chat under CKKS encryption.")
    commands = parser.add_subparsers(dest="command")
    ui = commands.add_parser("ui", help="serve the chat page (the default command)")
    _add_model_arguments(ui)
    ui.add_argument("--host", default=os.environ.get("HE_CHAT_HOST", "127.0.0.1"))
    ui.add_argument("--port", type=int, default=int(os.environ.get("HE_CHAT_PORT", "7860")))
    ui.add_argument(
        "--worker-endpoint",
        action="store_true",
        help="also serve the embedded worker at /worker on the page's port, for key holders elsewhere "
        "(what a Space does: it has one port)",
    )
    _add_remote_arguments(ui)
    _add_worker_arguments(ui)
    worker = commands.add_parser("worker", help="serve a model worker (websockets)")
    _add_model_arguments(worker)
    _add_worker_arguments(worker)
    worker.add_argument("--host", default="127.0.0.1")
    worker.add_argument("--port", type=int, default=8765)
    add_policy_arguments(worker)
    pool = commands.add_parser("pool", help="serve worker replicas on Ray Serve behind one address")
    _add_model_arguments(pool)
    add_pool_arguments(pool)
    chat = commands.add_parser("chat", help="answer in the terminal, streaming tokens")
    _add_model_arguments(chat)
    _add_reply_arguments(chat)
    _add_remote_arguments(chat)
    _add_worker_arguments(chat)
    chat.add_argument("prompt", nargs="?", help="the message; omit it to chat interactively")
    return parser


class _OrderingBar:
    """Renders ordering progress (only shown when the order has to be computed) with tqdm."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.stage = ""

    def __call__(self, event: Progress) -> None:
        from tqdm import tqdm

        if event.total == 0:
            if event.note:
                print(f"ordering: {event.note}", file=sys.stderr)
            return
        if event.stage != self.stage:
            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(total=event.total, desc=f"TSP order: {event.stage}", file=sys.stderr)
            self.stage = event.stage
        self.bar.n = event.done
        self.bar.refresh()


def make_service(args: argparse.Namespace, loaded: LoadedModel) -> ChatService:
    return ChatService.create(
        loaded, getattr(args, "worker_url", None), args.preset, on_progress=_OrderingBar()
    )


def _status(update: Progress) -> None:
    sys.stderr.write(f"\r\033[K[{update.stage} {update.done}/{update.total}]")
    sys.stderr.flush()


def _answer(
    service: ChatService,
    messages: list[dict[str, str]],
    settings: ChatSettings,
    session: EncryptedSession | None,
    memory: ChatMemory | None = None,
) -> str:
    text = ""
    settings = settings.drawn()
    for update in service.reply(messages, settings, session, memory):
        if update.stage:
            note = f"{update.seconds:.0f} s" + (
                f", first token after {update.first_token_seconds:.0f} s" if update.tokens else ""
            )
            _status(Progress(f"{update.stage} ({note})", *update.progress))
            continue
        if settings.mode == "encrypted":
            sys.stderr.write("\r\033[K")
        sys.stdout.write(update.delta)
        sys.stdout.flush()
        text = update.text
        if update.finish is not None:
            reused = f", continued from {update.start} positions" if update.continued else ""
            reused += f" ({update.ahead} read ahead)" if update.ahead else ""
            print(
                f"\n[{settings.label()}: {update.tokens} tokens, {update.tokens_per_second:.2f} tokens/s, "
                f"first token after {update.first_token_seconds:.1f} s, {update.new_positions} new "
                f"positions{reused}, seed {settings.seed}, {update.finish}]"
                + (f"\n[{update.notice}]" if update.notice else ""),
                file=sys.stderr,
            )
    return text


def run_chat(args: argparse.Namespace) -> int:
    settings = ChatSettings(
        mode=args.mode,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        tsp=args.tsp,
        pp=args.pp,
        amp_rounds=args.amp_rounds,
        repetition_penalty=args.repetition_penalty,
        pad=args.pad,
    )
    if args.prompt is not None and not args.prompt.strip():
        raise ChatError("The message is empty; type some text before sending.")
    _check_processes(args.processes)
    loaded = load_model(args)
    service = make_service(args, loaded)
    local_worker = None
    session = None
    try:
        if settings.mode == "encrypted":
            if not service.worker_url:
                local_worker = start_local_worker(service, args.processes)
            session = service.open_encrypted(on_progress=_status)
            sys.stderr.write("\r\033[K")
        if args.prompt is not None:
            _answer(service, [{"role": "user", "content": args.prompt}], settings, session)
            return 0
        history: list[dict[str, str]] = []
        memory = ChatMemory()  # each turn continues the model's state instead of re-reading the chat
        print(
            f"Chatting with {loaded.name} ({settings.label()}). One message per line; Ctrl-D quits.",
            file=sys.stderr,
        )
        ahead: threading.Thread | None = None
        for line in sys.stdin:
            message = line.strip()
            if not message:
                continue
            if ahead is not None and ahead.is_alive():
                _status(Progress("finishing the read-ahead of this turn's opening markers", 0, 1))
                ahead.join()
            try:
                turn = [*history, {"role": "user", "content": message}]
                reply = _answer(service, turn, settings, session, memory)
            except ChatError as exc:
                print(f"error: {exc} (not sent: the conversation goes on without it)", file=sys.stderr)
                continue
            history += [{"role": "user", "content": message}, {"role": "assistant", "content": reply}]
            if session is not None:  # while the next message is typed: its opening markers (encrypted)
                work = partial(service.read_ahead, turn, reply, settings, session, memory)
                ahead = threading.Thread(target=work, name="he-chat-read-ahead", daemon=True)
                ahead.start()
        return 0
    finally:
        if session is not None:
            session.close()
        if local_worker is not None:
            local_worker.stop()


def run_worker(args: argparse.Namespace) -> int:
    import asyncio

    from app.worker.background import start
    from app.worker.encrypted import EncryptedWorker, WorkerSpec
    from app.worker.server import Worker

    check_port(args.port)
    _check_processes(args.processes)
    limits, access = policy(args)
    tls = server_tls(args.tls_cert, args.tls_key)
    loaded = load_model(args)
    service = make_service(args, loaded)
    ordering = service.ordering
    spec = WorkerSpec.from_loaded(loaded, ordering.perm, ordering.order_id, args.processes, (args.preset,))
    model = EncryptedWorker(spec)
    print(
        f"Worker for {loaded.name}: {model.pool.world} compute process(es) warming the weight caches "
        f"for preset {args.preset!r}",
        file=sys.stderr,
    )
    threading.Thread(target=report_warm_up, args=(model,), daemon=True).start()

    async def serve_forever() -> None:
        server = await start(Worker(model, limits, access), args.host, args.port, tls)
        url = with_token(f"{scheme(tls)}://{args.host}:{args.port}", access.token)
        print(f"Worker for {loaded.name} on {url}", file=sys.stderr)
        hint = f"Connect with --worker-url '{url}' (or {ENV_WORKER_URL}); keep the token secret"
        print(hint, file=sys.stderr)
        await server.serve_forever()

    asyncio.run(serve_forever())
    return 0


def _check_processes(processes: int | None) -> None:
    if processes is not None and not 1 <= processes <= 64:
        raise ChatError(f"--processes must be between 1 and 64, got {processes}")


def run_ui(args: argparse.Namespace) -> int:
    from app.chat.ui import build_ui

    check_port(args.port)
    _check_processes(args.processes)
    loaded = load_model(args)
    service = make_service(args, loaded)
    if args.worker_endpoint and service.worker_url:
        raise ChatError("--worker-endpoint serves the page's embedded worker; leave out --worker-url")
    local_worker = start_local_worker(service, args.processes) if not service.worker_url else None
    endpoint = None
    if args.worker_endpoint:
        endpoint = public_url(service.worker_url or "", args.host, args.port)
    page = build_ui(service, local_worker.readiness if local_worker is not None else None, endpoint)
    print(f"Serving the chat page on http://{args.host}:{args.port}", file=sys.stderr)
    try:
        page.queue().launch(
            server_name=args.host, server_port=args.port, show_error=True, prevent_thread_lock=True
        )
        if endpoint is not None:
            serve_relay(page, lambda: service.worker_url)
            print(f"Serving the worker to key holders elsewhere at {redact(endpoint)}", file=sys.stderr)
        page.block_thread()
    finally:
        if local_worker is not None:
            local_worker.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["study"]:
        from app.study.cli import main as study_main  # the user-study commands (app/study/cli.py)

        return study_main(arguments[1:])
    if not arguments or arguments[0] not in ("ui", "worker", "pool", "chat", "-h", "--help"):
        arguments = ["ui", *arguments]
    args = parser.parse_args(arguments)
    if getattr(args, "worker_ca", None):
        os.environ[ENV_WORKER_CA] = args.worker_ca  # read where the key holder connects (app/worker/tls.py)
    try:
        if args.command == "chat":
            return run_chat(args)
        if args.command == "worker":
            return run_worker(args)
        if args.command == "pool":
            return run_pool(args)
        return run_ui(args)
    except ChatError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

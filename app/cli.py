"""Command line: `python -m app` (the chat page) and `python -m app chat "..."` (tokens to the terminal).

    python -m app                       # chat page on http://127.0.0.1:7860 (default model)
    python -m app ui --port 8000        # the same on another port
    python -m app chat "What is the capital of France?"
    python -m app chat                  # interactive: one message per line, Ctrl-D to quit

Every subcommand takes --model-path DIR (any local transformers causal LM) or --tiny (the random test
model), and the generation settings. Errors print one line naming the problem and the fix, exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from app.chat import CHAT_TEMPERATURE, stream_reply
from model.errors import ChatError
from model.generate import GenerationSettings
from model.loading import LoadedModel, build_tiny_model, load_default, load_local


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-path", type=Path, help="a local transformers causal-LM directory")
    source.add_argument("--tiny", action="store_true", help="the tiny random test model (fast, nonsense)")
    parser.add_argument("--cache-dir", type=Path, help="where the converted default model is cached")
    parser.add_argument("--temperature", type=float, default=CHAT_TEMPERATURE, help="0 = greedy")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler's uniforms")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="Private chat under CKKS encryption.")
    commands = parser.add_subparsers(dest="command")
    ui = commands.add_parser("ui", help="serve the chat page (the default command)")
    _add_model_arguments(ui)
    ui.add_argument("--host", default=os.environ.get("HE_CHAT_HOST", "127.0.0.1"))
    ui.add_argument("--port", type=int, default=int(os.environ.get("HE_CHAT_PORT", "7860")))
    chat = commands.add_parser("chat", help="answer a prompt in the terminal, streaming tokens")
    _add_model_arguments(chat)
    chat.add_argument("prompt", nargs="?", help="the message; omit it to chat interactively")
    return parser


def load_model(args: argparse.Namespace) -> LoadedModel:
    if args.tiny:
        return build_tiny_model()
    if args.model_path is not None:
        return load_local(args.model_path)
    return load_default(args.cache_dir, on_progress=lambda line: print(line, file=sys.stderr))


def _answer(loaded: LoadedModel, messages: list[dict[str, str]], settings: GenerationSettings) -> str:
    text = ""
    for update in stream_reply(loaded, messages, settings):
        sys.stdout.write(update.delta)
        sys.stdout.flush()
        text = update.text
        if update.finish is not None:
            print(
                f"\n[{update.tokens} tokens, {update.tokens_per_second:.1f} tokens/s, {update.finish}]",
                file=sys.stderr,
            )
    return text


def run_chat(args: argparse.Namespace, settings: GenerationSettings) -> int:
    loaded = load_model(args)
    if args.prompt is not None:
        _answer(loaded, [{"role": "user", "content": args.prompt}], settings)
        return 0
    history: list[dict[str, str]] = []
    print(f"Chatting with {loaded.name} (plain mode). One message per line; Ctrl-D to quit.", file=sys.stderr)
    for line in sys.stdin:
        message = line.strip()
        if not message:
            continue
        try:
            reply = _answer(loaded, [*history, {"role": "user", "content": message}], settings)
        except ChatError as exc:
            print(f"error: {exc}", file=sys.stderr)
            continue
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": reply}]
    return 0


def run_ui(args: argparse.Namespace) -> int:
    from app.ui import build_ui

    if not 0 <= args.port <= 65535:
        raise ChatError(f"--port must be between 0 and 65535, got {args.port}")
    loaded = load_model(args)
    page = build_ui(loaded)
    print(f"Serving the chat page on http://{args.host}:{args.port}", file=sys.stderr)
    page.queue().launch(server_name=args.host, server_port=args.port, show_error=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["ui", *(argv or sys.argv[1:])])
    try:
        settings = GenerationSettings(
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed
        )
        if args.command == "chat":
            return run_chat(args, settings)
        return run_ui(args)
    except ChatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

"""The command line, run as a user runs it: a subprocess printing tokens as they arrive."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.chat.service import CHAT_REPETITION_PENALTY

GUARD = f"repetition penalty {CHAT_REPETITION_PENALTY:g}"  # the chat default guard, named in the footer


def run_app(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args], capture_output=True, text=True, timeout=300, input=stdin
    )


def test_chat_streams_a_reply_and_reports_the_finish() -> None:
    result = run_app("chat", "--tiny", "--max-new-tokens", "7", "--temperature", "1", "Hello there")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()  # random tokens, but some text
    assert f"plain ({GUARD}): 7 tokens" in result.stderr and "length]" in result.stderr


def test_interactive_chat_keeps_going_after_an_empty_line() -> None:
    result = run_app("chat", "--tiny", "--max-new-tokens", "3", stdin="first\n\nsecond\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(f"plain ({GUARD}): 3 tokens") == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["chat", "--tiny", "--temperature", "9", "hi"], "temperature must be between"),
        (["chat", "--tiny", "--max-new-tokens", "0", "hi"], "max_new_tokens must be between"),
        (["chat", "--tiny", "   "], "The message is empty"),
        (["chat", "--model-path", "/nonexistent/model", "hi"], "does not exist"),
        (["ui", "--tiny", "--port", "70000"], "--port must be between"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args: list[str], message: str) -> None:
    result = run_app(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_argparse_type_errors_are_reported_too() -> None:
    result = run_app("chat", "--tiny", "--seed", "abc", "hi")
    assert result.returncode == 2 and "invalid int value" in result.stderr


def test_simulate_mode_from_the_command_line() -> None:
    result = run_app(
        "chat", "--tiny", "--mode", "simulate", "--max-new-tokens", "4", "--temperature", "1", "Hi"
    )
    assert result.returncode == 0, result.stderr
    assert f"simulate (TSP on, PP on, amp 3, {GUARD}): 4 tokens" in result.stderr


def test_encrypted_mode_starts_a_local_worker_and_streams() -> None:
    result = run_app(
        "chat", "--tiny", "--mode", "encrypted", "--max-new-tokens", "2", "--temperature", "1", "Hi"
    )
    assert result.returncode == 0, result.stderr
    assert f"encrypted (TSP on, PP on, amp 3, {GUARD}): 2 tokens" in result.stderr
    assert "layer 1/2" in result.stderr  # progress from the worker's telemetry


def test_an_interactive_encrypted_chat_reads_the_next_turns_opening_ahead() -> None:
    result = run_app(
        "chat", "--tiny", "--mode", "encrypted", "--max-new-tokens", "2", stdin="Hi\nAnd then?\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(f"encrypted (TSP on, PP on, amp 3, {GUARD}): 2 tokens") == 2
    # the reply's last token, <|im_end|>, \n, <|im_start|>user and \n were read after the first reply:
    # the follow-up sends "And then?" and the 5 markers after it (15 positions without the read-ahead)
    assert "9 new positions, continued from" in result.stderr and "(6 read ahead)" in result.stderr


def test_encrypted_mode_with_an_unreachable_worker_says_so() -> None:
    result = run_app("chat", "--tiny", "--mode", "encrypted", "--worker-url", "ws://127.0.0.1:9", "Hi")
    assert result.returncode == 2
    assert "cannot reach the worker at ws://127.0.0.1:9" in result.stderr

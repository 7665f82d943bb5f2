"""Tests for app/worker/cli.py: the worker command's access and fair-use options, and what it reports.

The command as a whole (its TLS options, a bad certificate named before the model loads) is tested in
test_tls.py; here the options on their own, fast.
"""

from __future__ import annotations

import argparse
import os
from types import SimpleNamespace

import pytest

from app.worker.admission import WorkerLimits
from app.worker.cli import ENV_WORKER_TOKEN, add_policy_arguments, check_port, policy, resident_bytes
from core.errors import ChatError

TOKEN = "a-token_of-20-chars"


def _parse(*options: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_policy_arguments(parser)
    return parser.parse_args(list(options))


def test_the_options_make_the_workers_limits_and_access() -> None:
    args = _parse(
        "--token", TOKEN, "--allow-origin", "https://page.example", "--allow-origin", "http://localhost:7860",
        "--oracle-timeout", "7.5", "--session-compute", "120",
    )  # fmt: skip
    limits, access = policy(args)
    assert limits.oracle_timeout == 7.5 and limits.session_compute_seconds == 120.0
    assert limits.idle_seconds == WorkerLimits().idle_seconds  # the others keep their defaults
    assert access.token == TOKEN
    assert access.origins == ("https://page.example", "http://localhost:7860")


def test_without_a_token_the_environment_gives_one_else_a_new_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_WORKER_TOKEN, raising=False)
    first, second = policy(_parse())[1].token, policy(_parse())[1].token
    assert len(first) >= 16 and first != second
    monkeypatch.setenv(ENV_WORKER_TOKEN, TOKEN)
    assert policy(_parse())[1].token == TOKEN


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--oracle-timeout", "0"], "--oracle-timeout must be a positive number"),
        (["--oracle-timeout", "inf"], "--oracle-timeout must be a positive number"),
        (["--session-compute", "-1"], "--session-compute must be a positive number"),
        (["--token", "short"], "--token must be 16 or more"),
        (["--token", "sixteen chars and spaces"], "--token must be 16 or more"),
        (["--allow-origin", "page.example"], "--allow-origin takes an origin"),
        (["--allow-origin", "https://page.example/path"], "--allow-origin takes an origin"),
    ],
)
def test_bad_values_name_their_option(options: list[str], named: str) -> None:
    with pytest.raises(ChatError, match=named):
        policy(_parse("--token", TOKEN, *options))


def test_a_port_must_be_a_port() -> None:
    check_port(0)
    check_port(65535)
    for port in (-1, 65536):
        with pytest.raises(ChatError, match=f"--port must be between 0 and 65535, got {port}"):
            check_port(port)


def test_resident_bytes_count_this_process_and_nothing_else_without_compute_processes() -> None:
    import psutil

    model = SimpleNamespace(pool=SimpleNamespace(process=None))
    own = psutil.Process(os.getpid()).memory_full_info().pss
    assert 0.5 * own < resident_bytes(model) < 2 * own

"""`python -m app pool`'s options (app/pool/cli.py): each reaches the pool's configuration, and bad values
are refused naming their option before Ray starts (the pool itself: test_serve.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.cli import build_parser
from app.pool.cli import config_from, run_pool
from app.worker.admission import new_token
from core.errors import ChatError


def _args(*options: str) -> Any:
    return build_parser().parse_args(["pool", *options])


def test_the_options_make_the_pool_configuration(tmp_path: Path) -> None:
    token = new_token()
    options = ["--replicas", "3", "--max-replicas", "5", "--sessions-per-replica", "4", "--processes", "2",
               "--cpus-per-replica", "1.5", "--memory-gib", "6", "--token", token, "--allow-origin",
               "https://example.org", "--model-path", str(tmp_path), "--preset", "test",
               "--oracle-timeout", "7"]  # fmt: skip
    config = config_from(_args(*options))
    assert (config.replicas, config.max_replicas, config.sessions_per_replica) == (3, 5, 4)
    assert config.processes == 2
    assert (config.cpus, config.memory_gib, config.preset, config.tiny) == (1.5, 6.0, "test", False)
    assert config.model_path == str(tmp_path) and config.cache_dir is None
    assert config.access.token == token and config.access.origins == ("https://example.org",)
    assert config.limits.oracle_timeout == 7.0
    defaults = config_from(_args("--tiny"))
    assert defaults.tiny and defaults.replicas == 2 and defaults.max_replicas is None
    assert defaults.access.token is not None and defaults.access.token != token  # a new one when not given


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--replicas", "0"], "--replicas"),
        (["--replicas", "3", "--max-replicas", "2"], "--max-replicas"),
        (["--token", "short"], "--token"),
        (["--allow-origin", "example.org"], "--allow-origin"),
        (["--session-compute", "0"], "--session-compute"),
    ],
)
def test_bad_values_name_their_option(options: list[str], named: str) -> None:
    with pytest.raises(ChatError, match=named):
        config_from(_args("--tiny", *options))


def test_a_port_out_of_range_is_refused_before_anything_starts() -> None:
    with pytest.raises(ChatError, match="--port must be between 0 and 65535"):
        run_pool(_args("--tiny", "--port", "70000"))

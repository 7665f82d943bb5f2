"""Tests for core/errors.py: one hierarchy, and one table of wire codes without clashes."""

from __future__ import annotations

import inspect

import core.errors as errors
from core.errors import ChatError, LevelsExhausted, ProtocolError, WorkerError


def _classes() -> list[type[BaseException]]:
    return [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]


def test_every_error_is_a_chat_error_named_in_the_module_tree() -> None:
    tree = errors.__doc__ or ""
    for cls in _classes():
        assert issubclass(cls, ChatError), cls
        assert cls.__name__ in tree, f"{cls.__name__} is missing from the hierarchy drawn in core/errors.py"


def test_every_wire_code_means_one_thing() -> None:
    protocol = {cls.__name__: cls.code for cls in _classes() if issubclass(cls, ProtocolError)}
    constants = {name: value for name, value in vars(errors).items() if name.startswith("CODE_")}
    assert protocol["ProtocolError"] == 4000
    assert all(4000 <= code <= 4999 for code in protocol.values())
    # a subclass may share its parent's code (4000: "a message that cannot be accepted") but no two
    # different codes' owners overlap, and no constant reuses a protocol code
    owned = {code for name, code in protocol.items() if code != 4000}
    assert len(owned) == len([name for name, code in protocol.items() if code != 4000])
    assert not owned & set(constants.values()) and len(set(constants.values())) == len(constants)
    assert {constants["CODE_SERVICE_RESTART"], constants["CODE_TRY_AGAIN"]} == {1012, 1013}  # RFC 6455


def test_errors_that_carry_data_say_it_in_their_message() -> None:
    levels = LevelsExhausted("cubic", 2, 1)
    assert (levels.operation, levels.needed, levels.available) == ("cubic", 2, 1)
    assert "cubic needs 2" in str(levels) and "refresh" in str(levels)
    worker = WorkerError(4010, "the session's compute budget is spent")
    assert worker.code == 4010 and str(worker) == "worker error 4010: the session's compute budget is spent"

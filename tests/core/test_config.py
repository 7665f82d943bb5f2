"""Tests for core/config.py: the one unknown-key check for configs read back from dicts."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from core.config import dataclass_from_dict, known_fields


class _Refused(ValueError):
    """The caller's own error class: the helper must raise exactly this."""


@dataclass(frozen=True)
class _Config:
    size: int = 1
    name: str = "x"

    def __post_init__(self) -> None:
        if self.size < 1:
            raise _Refused(f"size must be >= 1, got {self.size}")


def test_a_dict_of_known_fields_builds_the_dataclass() -> None:
    assert dataclass_from_dict(_Config, {"size": 3, "name": "y"}, _Refused, "settings") == _Config(3, "y")
    assert dataclass_from_dict(_Config, {}, _Refused, "settings") == _Config()  # defaults fill the rest


def test_unknown_keys_are_named_with_the_known_ones() -> None:
    with pytest.raises(_Refused) as exc:
        dataclass_from_dict(_Config, {"size": 2, "sise": 3, "colour": "red"}, _Refused, "test settings")
    message = str(exc.value)
    assert message.startswith("unknown test settings ['colour', 'sise']")
    assert "known: size, name" in message


@pytest.mark.parametrize("data", [None, [("size", 2)], "size=2", 3])
def test_anything_but_a_dict_is_refused_with_the_callers_error(data: object) -> None:
    with pytest.raises(_Refused, match=f"settings must be a dict.*got {type(data).__name__}"):
        dataclass_from_dict(_Config, data, _Refused, "settings")


def test_the_class_still_checks_the_values() -> None:
    with pytest.raises(_Refused, match="size must be >= 1"):
        dataclass_from_dict(_Config, {"size": 0}, _Refused, "settings")


def test_known_fields_returns_a_copy_and_leaves_missing_keys_to_the_caller() -> None:
    data = {"name": "z"}
    checked = known_fields(_Config, data, _Refused, "settings")
    assert checked == data and checked is not data
    with pytest.raises(_Refused, match=r"unknown settings \['1'\]"):
        known_fields(_Config, {1: "a"}, _Refused, "settings")  # non-string keys are named too

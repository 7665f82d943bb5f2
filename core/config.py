"""Reading a frozen config dataclass back from a dict: one check for what the dict may hold.

Configs round-trip as dicts (`asdict` -> JSON -> `Cls(**d)`, STYLE.md rule 5). A dict read from a file
or the wire may be something else entirely, or hold a key the class does not have (a typo, a newer or
older writer); both are refused with the caller's own error class and a message naming the unknown
keys and the known ones, never silently dropped. Missing keys are left to the class (its defaults, or
its own error). Used by `SamplerConfig.from_dict`, `OrderingConfig.from_dict` and
`CKKSParams.from_dict`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def known_fields(cls: type[Any], data: object, error: type[Exception], what: str) -> dict[str, Any]:
    """`data` as a dict, if it is one and every key names a field of the dataclass `cls`.

    Args:
        cls: a dataclass; its fields are the keys allowed.
        data: the value read back (e.g. from JSON).
        error: the exception class to raise (the caller's own, e.g. `InputError`).
        what: what the keys are, for the message, e.g. "sampler setting(s)".

    Returns:
        A shallow copy of `data`.

    Raises:
        error: `data` is not a dict, or it has a key that is not a field of `cls`.
    """
    if not isinstance(data, dict):
        raise error(f"{what} must be a dict (a JSON object), got {type(data).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        raise error(f"unknown {what} {unknown}; remove them (known: {', '.join(known)})")
    return dict(data)


def dataclass_from_dict(cls: type[T], data: object, error: type[Exception], what: str) -> T:
    """`cls(**data)` after `known_fields` checked `data`; `cls` still validates the values.

    Raises:
        error: `data` is not a dict or has an unknown key (whatever `cls` raises for bad values).
    """
    return cls(**known_fields(cls, data, error, what))

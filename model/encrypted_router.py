"""The worker's router for oracle calls: every rank's share of a call in, one call out, answers back.

The ranks run in lockstep and each sends its share of every oracle call (model/encrypted.py says what a
call carries). `merge_calls` joins them into the one call the key holder sees, asking once for a piece
several ranks need; `split_answers` hands each rank its answers. On the way, `share_combiner` makes the
inputs fewer ciphertexts without any key: shares several ranks hold of one place travel as their sum,
and two one-ciphertext shares side by side travel packed in one (`crypto.vector.for_key_holder`
explains packing).

References: DESIGN.md section 4; app/worker/compute_pool.py (where the router runs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from core.errors import InputError
from crypto import arith
from crypto.engine import Engine
from crypto.vector import EncVector
from crypto.vector_wire import vector_from_bytes, vector_to_bytes
from model.encrypted import OracleCall, PieceSpec
from model.oracle import REFRESHES

Places = list[tuple[int, int]]
Combine = Callable[[Places, list[bytes]], tuple[Places, list[bytes]]]  # (parts, blobs) -> fewer of them


def merge_calls(
    calls: Sequence[OracleCall], combine: Combine | None = None
) -> tuple[OracleCall, list[list[int]]]:
    """Every rank's share of one call -> one call, and for each rank the indices of its answers.

    Identical pieces asked for by several ranks are encrypted once and handed to each of them. With
    `combine` (`share_combiner`), the inputs travel in fewer ciphertexts: shares several ranks hold of
    one place as their sum, and two one-ciphertext shares side by side in one ciphertext.

    Raises:
        InputError: the ranks disagree on the function or the layer (they must run in lockstep).
    """
    first = calls[0]
    if any(c.fn != first.fn or c.layer != first.layer for c in calls):
        raise InputError(f"ranks out of step: {[(c.fn, c.layer) for c in calls]}")
    parts = [p for c in calls for p in c.parts]
    blobs = [b for c in calls for b in c.blobs]
    if first.fn in REFRESHES:
        answers, at = [], 0
        for c in calls:
            answers.append(list(range(at, at + len(c.blobs))))
            at += len(c.blobs)
        return OracleCall(first.fn, first.layer, parts, blobs), answers
    if combine is not None:
        parts, blobs = combine(parts, blobs)
    index: dict[PieceSpec, int] = {}
    for c in calls:
        for spec in c.pieces:
            index.setdefault(spec, len(index))
    answers = [[index[spec] for spec in c.pieces] for c in calls]
    return OracleCall(first.fn, first.layer, parts, blobs, list(index)), answers


def share_combiner(engine: Engine) -> Combine:
    """`merge_calls`'s `combine` over a keyless engine of the session's parameters (it adds and multiplies
    by a monomial: no key needed), on shares at level 0 as the ranks send them:

    - shares of one place with the same layout and scale become their sum (a decoded position's
      residual stream: o and one half of down on one rank, the other half on another);
    - a one-ciphertext share and the one that starts where it ends (attention's q then kv, swiglu's gate
      then up) become one packed vector of both (`crypto.vector.for_key_holder` explains packing): the
      key holder reads it as the two side by side.

    Anything else passes unchanged (a share mod-switched down from another level keeps that level's
    scale, so it does not add to the others)."""

    def combine(parts: Places, blobs: list[bytes]) -> tuple[Places, list[bytes]]:
        places: dict[tuple[int, int], list[tuple[EncVector, bytes]]] = {}
        for place, blob in zip(parts, blobs, strict=True):
            places.setdefault(place, []).append((vector_from_bytes(engine, blob, level=0), blob))
        out: list[Share] = []
        for place, shares in places.items():
            vecs = [vec for vec, _ in shares]
            if len(vecs) > 1 and _addable(vecs):
                total = vecs[0]
                for vec in vecs[1:]:
                    total = arith.add(engine, total, vec)
                out.append((place, total, None))
            else:
                out += [(place, vec, blob) for vec, blob in shares]
        paired = _pair_neighbours(engine, out)
        return [place for place, _, _ in paired], [
            blob if blob is not None else vector_to_bytes(vec) for _, vec, blob in paired
        ]

    return combine


def _addable(vecs: list[EncVector]) -> bool:
    return len({ct.scale for v in vecs for ct in v.cts}) == 1 and all(v.same_layout(vecs[0]) for v in vecs)


def _single(vec: EncVector) -> bool:
    return len(vec.cts) == 1 and not vec.packed and vec.copies == 1


Share = tuple[tuple[int, int], EncVector, bytes | None]  # place, vector, its bytes if unchanged


def _pair_neighbours(engine: Engine, shares: list[Share]) -> list[Share]:
    """Pack each one-ciphertext share with the share that starts where it ends (no longer than it)."""
    starts = {place: i for i, (place, _, _) in enumerate(shares)}
    taken: set[int] = set()
    out: list[Share] = []
    for i, share in enumerate(shares):
        if i in taken:
            continue
        (position, offset), a, _ = share
        j = starts.get((position, offset + a.length))
        if j is not None and j not in taken and j != i:
            b = shares[j][1]
            if _single(a) and _single(b) and b.length <= a.length and _addable_rings(a, b):
                ct = engine.add(a.cts[0], engine.times_monomial(b.cts[0]))
                pair = EncVector((ct,), a.length + b.length, a.length, 0, False, ring=a.ring, packed=True)
                out.append(((position, offset), pair, None))
                taken |= {i, j}
                continue
        out.append(share)
    return out


def _addable_rings(a: EncVector, b: EncVector) -> bool:
    return a.ring == b.ring and a.level == b.level and a.cts[0].scale == b.cts[0].scale


def split_answers(answers: list[list[int]], blobs: Sequence[bytes]) -> list[list[bytes]]:
    """The key holder's reply blobs, handed back to each rank in the order it asked.

    Raises:
        InputError: the reply has another number of blobs than the call asked for.
    """
    wanted = 1 + max((i for a in answers for i in a), default=-1)
    if len(blobs) != wanted:
        raise InputError(f"the key holder answered {len(blobs)} ciphertexts where {wanted} were asked for")
    return [[blobs[i] for i in a] for a in answers]

"""The key holder's side of the oracle (model/key_holder.py): it answers allow-listed calls in shape only,
and refreshes each vector into the ring it names."""

from __future__ import annotations

import pytest

from core.errors import InputError, WireFormatError
from crypto.vector_wire import vector_from_bytes, vector_to_bytes
from model.encrypted import OracleCall, PieceSpec
from model.forward import LlamaShape
from model.key_holder import KeyHolderSide
from model.loading import LoadedModel
from tests.model.test_encrypted import PRESET, tiny_perm


def test_the_key_holder_refuses_calls_off_the_allow_list_and_out_of_shape(tiny: LoadedModel) -> None:
    shape = LlamaShape.from_config(tiny.model.config)
    keys = KeyHolderSide(PRESET, shape, tiny.input_embeddings(), tiny_perm(tiny.model.config.vocab_size))
    with pytest.raises(InputError, match="not an allowed"):
        keys.answer(OracleCall("argmax", -1, [(0, 0)], [b"x"]))
    with pytest.raises(InputError, match="part positions"):
        keys.answer(OracleCall("rmsnorm", 0, [(0, 0)], [b"x", b"y"]))
    blob = keys.encrypt_prompt([5])[0]  # 64 values: the tiny model's width
    with pytest.raises(InputError, match="exceeds the width"):
        keys.answer(OracleCall("rmsnorm", 0, [(0, 10)], [blob]))
    with pytest.raises(InputError, match="uncovered"):
        keys.answer(OracleCall("attention", 0, [(0, 0)], [blob]))
    with pytest.raises(InputError, match="outside the output"):
        keys.answer(OracleCall("rmsnorm", 0, [(0, 0)], [blob], [PieceSpec(0, 0, 65)]))
    with pytest.raises(InputError, match="do not fit"):
        keys.answer(OracleCall("rmsnorm", 0, [(0, 0)], [blob], [PieceSpec(0, 0, 64, 64, 100, 1)]))
    tail = vector_from_bytes(
        keys.secret.tail, keys.answer(OracleCall("refresh_tail", -1, [(0, 0)], [blob]))[0]
    )
    assert tail.ring == 1 and tail.level == 4  # the prompt's vector, re-encrypted in the sampler tail
    with pytest.raises(WireFormatError, match="ring 3"):
        keys.answer(OracleCall("refresh", -1, [(0, 0)], [blob.replace(b'"ring": 0', b'"ring": 3')]))
    with pytest.raises(WireFormatError, match="sampler tail's parameters where one of the session's"):
        keys.answer(OracleCall("rmsnorm", 0, [(0, 0)], [vector_to_bytes(tail)]))
    untailed = KeyHolderSide("test", shape, tiny.input_embeddings(), tiny_perm(tiny.model.config.vocab_size))
    with pytest.raises(InputError, match="preset 'test' has no sampler tail"):
        untailed.answer(OracleCall("refresh_tail", -1, [(0, 0)], [untailed.encrypt_prompt([5])[0]]))

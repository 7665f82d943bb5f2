"""The oracle's allow-list: every function the worker may ask the key holder to evaluate, in one place.

The worker computes every product on ciphertexts; for a refresh and for the few non-linear steps of the
forward pass and the sampler it sends the ciphertexts to the key holder (DESIGN.md section 4), which
evaluates the function in plaintext and sends fresh ciphertexts back. Nothing else is ever evaluated for
it: the worker's plan (model/forward.py, model/encrypted_rank.py) names only these, the key holder
(model/key_holder.py) and its client (app/chat/keyholder.py) refuse any other name, and the page
(app/chat/ui_panel.py) describes each one it saw.

Light on purpose (no torch, no TenSEAL): the client and the page import it.
"""

from __future__ import annotations

from typing import Literal, get_args

from core.errors import UnknownOracleFunction

NonLinear = Literal["rmsnorm", "attention", "swiglu", "final_norm"]
"""The forward pass's non-linear steps (model.forward.Backend.apply)."""

NONLINEAR: tuple[NonLinear, ...] = get_args(NonLinear)
REFRESHES = ("refresh", "refresh_tail")  # by the ring re-encrypted into (crypto.vector.EncVector.ring)
SOFTMAX = "softmax"  # the logits' softmax, which the sampler owns
ORACLE_FUNCTIONS = (*REFRESHES, *NONLINEAR, SOFTMAX)

DESCRIPTIONS = {
    "refresh": "decrypt and re-encrypt at the top level (stands in for bootstrapping)",
    "refresh_tail": "decrypt and re-encrypt in the sampler's coarser, deeper parameters (bootstrapping)",
    "rmsnorm": "RMS normalisation",
    "attention": "attention core (scores, softmax, weighted sum)",
    "swiglu": "SwiGLU activation",
    "final_norm": "final normalisation",
    "softmax": "softmax of the logits",
}
"""What each function is, in words (the page's "What the worker saw")."""


def check_function(fn: str) -> str:
    """`fn` if the key holder may evaluate it for the worker.

    Raises:
        UnknownOracleFunction: `fn` is not on the allow-list (the message names it and the allowed ones).
    """
    if fn not in ORACLE_FUNCTIONS:
        raise UnknownOracleFunction(
            f"the worker asked the key holder to evaluate {fn[:80]!r}, which is not on the oracle's "
            f"allow-list ({', '.join(ORACLE_FUNCTIONS)}); the reply is stopped"
        )
    return fn

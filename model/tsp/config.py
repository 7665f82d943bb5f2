"""The settings that determine a vocabulary order (`OrderingConfig`), their checks and defaults.

Everything `model.tsp.ordering.compute_ordering` does apart from reading the embedding matrix is fixed
by one frozen `OrderingConfig`; it is stored in every ordering's manifest and read back with
`OrderingConfig.from_dict`. Each field's comment says what it does and why it has its default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.config import dataclass_from_dict
from core.errors import OrderingConfigError

METHODS = ("improved", "paper", "identity")
CONSTRUCTIONS = ("greedy_edge", "nearest_neighbour")
CANDIDATE_RULES = ("alpha", "knn")


@dataclass(frozen=True)
class OrderingConfig:
    """Everything that determines `perm` (apart from the embedding matrix). Round-trips as a dict."""

    method: str = "improved"  # "improved" | "paper" (exact greedy NN only) | "identity" (token ids)
    construction: str = "greedy_edge"  # first path of "improved": greedy matching, or the paper's path
    start_token: int = 0  # where the nearest-neighbour path starts; the paper starts at token 0
    seed: int = 0  # drives the kicks and the random-order baseline; nothing else is random
    candidate_rule: str = "alpha"  # search lists: "alpha" (alpha-nearness) or "knn" (nearest rows)
    knn_k: int = 6  # candidate list length for 3-opt / Or-opt
    greedy_k: int = 16  # kNN list length for the constructions and the alpha pools
    ascent_steps: int = 10  # subgradient steps before alpha-nearness (10 and 60 gave the same path)
    candidates: int = 24  # bfloat16 shortlist per row before exact re-ranking (see the note)
    bf16_prefilter: bool = True  # False: float32 block products, exact lists, ~5x slower kNN stage
    block_rows: int = 1024  # rows per block product; peak ~ block_rows x V x 6 bytes
    kicks: int = 100000  # iterated-local-search steps (~0.2 ms each); deterministic if all fit the budget
    kick_window: int = 12  # positions one kick spans (12 beat 50 on SmolLM2: 0.08% shorter)
    window_size: int = 0  # python-tsp windows after the kicks; 0 = off (measured: 0.02% in 30 s)
    time_budget_s: float = 30.0  # wall-clock cap on local search + kicks + windows together

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise OrderingConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.construction not in CONSTRUCTIONS:
            raise OrderingConfigError(
                f"construction must be one of {CONSTRUCTIONS}, got {self.construction!r}"
            )
        for name in ("knn_k", "greedy_k", "candidates", "block_rows", "kick_window"):
            if int(getattr(self, name)) < 1:
                raise OrderingConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.candidates < max(self.knn_k, self.greedy_k):
            raise OrderingConfigError(
                f"candidates ({self.candidates}) must be >= knn_k and greedy_k; raise it or shorten the lists"
            )
        if self.candidate_rule == "alpha" and self.knn_k > self.greedy_k:
            raise OrderingConfigError(
                f"knn_k ({self.knn_k}) must be <= greedy_k ({self.greedy_k}): alpha candidates are drawn "
                "from the greedy_k nearest rows; raise greedy_k or shorten knn_k"
            )
        if self.candidate_rule not in CANDIDATE_RULES:
            raise OrderingConfigError(
                f"candidate_rule must be one of {CANDIDATE_RULES}, got {self.candidate_rule!r}"
            )
        if min(self.kicks, self.start_token, self.seed, self.ascent_steps) < 0:
            raise OrderingConfigError("kicks, start_token, seed and ascent_steps must be >= 0")
        if self.window_size != 0 and not 4 <= self.window_size <= 400:
            raise OrderingConfigError(
                "window_size must be 0 (off) or 4..400 (python-tsp needs dense windows), "
                f"got {self.window_size}"
            )
        if not self.time_budget_s > 0:
            raise OrderingConfigError(f"time_budget_s must be > 0, got {self.time_budget_s}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> OrderingConfig:
        """Inverse of `dataclasses.asdict`; unknown keys are an error, not silently dropped.

        Raises:
            OrderingConfigError: `values` is not a dict, has an unknown key, or a value is out of range.
        """
        return dataclass_from_dict(cls, values, OrderingConfigError, "OrderingConfig fields")


DEFAULT_CONFIG = OrderingConfig()

"""Tests for model/tsp/config.py: OrderingConfig's checks and its dict round trip."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from core.errors import OrderingConfigError
from model.tsp.config import DEFAULT_CONFIG, OrderingConfig


def test_config_validation_and_dict_round_trip() -> None:
    config = OrderingConfig(seed=7, kicks=5, window_size=64)
    assert OrderingConfig.from_dict(json.loads(json.dumps(asdict(config)))) == config
    for bad in (
        {"method": "optimal"},
        {"knn_k": 0},
        {"knn_k": 20},  # alpha candidates come from the greedy_k (16) nearest rows
        {"candidate_rule": "random"},
        {"ascent_steps": -1},
        {"window_size": 2},
        {"candidates": 4},
        {"time_budget_s": 0},
    ):
        with pytest.raises(OrderingConfigError):
            OrderingConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(OrderingConfigError, match="unknown"):
        OrderingConfig.from_dict({"k": 3})


def test_from_dict_names_the_unknown_and_the_known_fields_and_refuses_a_non_dict() -> None:
    with pytest.raises(OrderingConfigError, match=r"unknown OrderingConfig fields \['k'\].*knn_k"):
        OrderingConfig.from_dict({"k": 3, "seed": 1})
    with pytest.raises(OrderingConfigError, match="must be a dict"):
        OrderingConfig.from_dict([("seed", 1)])  # type: ignore[arg-type]
    with pytest.raises(OrderingConfigError, match="window_size"):
        OrderingConfig.from_dict({"window_size": 2})  # a known field with a bad value: the class says so


def test_the_default_round_trips_and_a_partial_dict_keeps_the_defaults() -> None:
    assert OrderingConfig.from_dict(asdict(DEFAULT_CONFIG)) == DEFAULT_CONFIG == OrderingConfig()
    assert OrderingConfig.from_dict({"seed": 9}) == OrderingConfig(seed=9)

"""LabState.derived: indexes built from the organization are rebuilt whenever it changes."""

from __future__ import annotations

from typing import Any

from hybridtrust.lab.state import FORMAT, LabState


def _state() -> LabState:
    return LabState({"format": FORMAT, "exchange": {"ExchangeServer": [{"Name": "EX01"}]}})


def _names(state: LabState, builds: list[int]) -> list[str]:
    servers = state.objects("ExchangeServer")

    def build() -> list[str]:
        builds.append(1)
        return [s["Name"] for s in servers]

    return state.derived("names", build, servers)


def test_a_derived_value_is_built_once_while_nothing_changes() -> None:
    state, builds = _state(), []
    assert _names(state, builds) == ["EX01"]
    assert _names(state, builds) == ["EX01"]
    assert len(builds) == 1


def test_a_change_through_changing_rebuilds_it() -> None:
    state, builds = _state(), []
    _names(state, builds)
    with state.changing() as document:
        document["exchange"]["ExchangeServer"][0]["Name"] = "EX09"  # in place: only the revision tells
    assert _names(state, builds) == ["EX09"]
    assert len(builds) == 2


def test_a_direct_edit_of_a_source_list_rebuilds_it() -> None:
    state, builds = _state(), []
    _names(state, builds)
    state.objects("ExchangeServer").append({"Name": "EX02"})  # without changing(), as tests do
    assert _names(state, builds) == ["EX01", "EX02"]
    state.exchange["ExchangeServer"] = [{"Name": "EX03"}]  # a replaced list
    assert _names(state, builds) == ["EX03"]
    assert len(builds) == 3


def test_nothing_is_cached_while_a_change_is_under_way() -> None:
    state, builds = _state(), []
    seen: list[Any] = []
    with state.changing() as document:
        seen.append(_names(state, builds))
        document["exchange"]["ExchangeServer"][0]["Name"] = "EX05"
        seen.append(_names(state, builds))
    assert seen == [["EX01"], ["EX05"]]
    assert _names(state, builds) == ["EX05"]

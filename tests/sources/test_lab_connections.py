"""A lab's connection settings: the lab's short waits, unless the profile sets its own."""

from __future__ import annotations

from pathlib import Path

from hybridtrust.profile import load_profile
from hybridtrust.sources.live import lab_connections
from hybridtrust.sources.remoting import RemotingSettings

REPOSITORY = Path(__file__).resolve().parents[2]
DESCRIPTION = {
    name: {"uri": f"https://127.0.0.1:5986/{name}", "username": "u", "password": "p"}
    for name in ("exchange", "sharepoint")
}


def _profile(tmp_path: Path, extra: str) -> Path:
    text = (REPOSITORY / "profiles" / "lab.toml").read_text(encoding="utf-8")
    text = text.replace("max_concurrency = 8\n", f"max_concurrency = 8\n{extra}")
    path = tmp_path / "lab-timeouts.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_lab_waits_briefly_by_default(tmp_path: Path) -> None:
    connections = lab_connections(load_profile(str(_profile(tmp_path, ""))), DESCRIPTION, origin="test")
    assert isinstance(connections.exchange, RemotingSettings)
    assert (connections.exchange.connect_timeout, connections.exchange.operation_timeout) == (10, 60)


def test_timeouts_the_profile_sets_are_kept(tmp_path: Path) -> None:
    extra = "connect_timeout_seconds = 3\noperation_timeout_seconds = 240\n"
    connections = lab_connections(load_profile(str(_profile(tmp_path, extra))), DESCRIPTION, origin="test")
    assert isinstance(connections.exchange, RemotingSettings)
    assert (connections.exchange.connect_timeout, connections.exchange.operation_timeout) == (3, 240)
    assert isinstance(connections.sharepoint, RemotingSettings)
    assert connections.sharepoint.operation_timeout == 60  # [sharepoint] sets none

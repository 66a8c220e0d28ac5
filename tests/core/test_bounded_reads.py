"""Files read whole are capped (limits.py): an oversized one is refused by name, size and limit, unread.

The files are sparse, so a multi-gigabyte one costs no disk and no time; tracemalloc proves that
nothing near the file's size was read into memory.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hybridtrust.facts import Missing
from hybridtrust.limits import LAB_CONNECTION_BYTES, REMEDIATION_RECORD_BYTES, TooLarge, read_bounded
from hybridtrust.profile import LabSection, load_profile
from hybridtrust.remediation.model import RECORD_FORMAT, RecordError, read_record
from hybridtrust.sources.live import collect_live

GIB = 1024**3


def sparse(path: Path, size: int) -> Path:
    with path.open("wb") as handle:
        handle.truncate(size)
    return path


@contextmanager
def allocations_below(limit: int) -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit, f"{peak:,} bytes allocated"


def test_a_regular_file_over_the_limit_is_refused_with_its_size_before_it_is_read(tmp_path: Path) -> None:
    path = sparse(tmp_path / "big", 6 * GIB)
    with allocations_below(1024 * 1024), pytest.raises(TooLarge) as error:
        read_bounded(path, 100 * 1024 * 1024)
    assert str(error.value) == (
        "larger than the 104,857,600 bytes such a file can need (6,442,450,944 bytes); check that this is the right file"
    )


def test_a_device_is_read_only_up_to_the_limit_and_refused_without_a_size() -> None:
    device = Path("/dev/zero")
    if not device.exists():
        pytest.skip("no /dev/zero")
    with pytest.raises(TooLarge) as error:
        read_bounded(device, 4096)
    assert str(error.value) == "larger than the 4,096 bytes such a file can need; check that this is the right file"


@pytest.mark.parametrize("size", [6 * GIB, REMEDIATION_RECORD_BYTES + 1])
def test_an_oversized_remediation_record_is_refused_before_the_rollback(tmp_path: Path, size: int) -> None:
    path = sparse(tmp_path / "contoso-20261124T000000Z-remediation.json", size)
    with allocations_below(1024 * 1024), pytest.raises(RecordError) as error:
        read_record(path)
    assert str(error.value) == (
        f"--rollback {path}: refused: larger than the {REMEDIATION_RECORD_BYTES:,} bytes such a file can need "
        f"({size:,} bytes); check that this is the right file"
    )


def test_a_remediation_record_within_the_limit_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    path.write_text(json.dumps({"format": RECORD_FORMAT, "profile": "lab", "changes": []}), encoding="utf-8")
    assert read_record(path)["profile"] == "lab"


def test_a_deeply_nested_remediation_record_is_a_record_error(tmp_path: Path) -> None:
    path = tmp_path / "nested.json"
    path.write_text("[" * 200_000, encoding="utf-8")
    with pytest.raises(RecordError, match=r"not valid JSON: arrays or objects nested too deeply"):
        read_record(path)


@pytest.mark.parametrize("size", [LAB_CONNECTION_BYTES + 1, 6 * GIB])
def test_an_oversized_lab_connection_file_is_refused(tmp_path: Path, size: int) -> None:
    path = sparse(tmp_path / "lab-connection.json", size)
    profile = load_profile("lab").model_copy(update={"lab": LabSection(mode="external", connection=path)})
    with allocations_below(LAB_CONNECTION_BYTES // 2):
        collection = collect_live(profile)
    expected = (
        f"the lab connection file {path} is refused: larger than the {LAB_CONNECTION_BYTES:,} bytes such a file "
        f"can need ({size:,} bytes); check that this is the right file"
    )
    reasons = [
        value.reason
        for store in (collection.exchange, collection.sharepoint)
        for value in store.values()
        if isinstance(value, Missing)
    ]
    assert reasons and all(reason.endswith(expected) for reason in reasons)
    for tenant in collection.tenants.values():
        assert isinstance(tenant.organization, Missing) and tenant.organization.reason == f"not collected: {expected}"

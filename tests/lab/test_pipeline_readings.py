"""The lab reads each CREATE_PIPELINE shape once: its readings must equal psrpcore's own reading of each message."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from xml.etree import ElementTree

import psrpcore
import pytest
from psrpcore.types import deserialize
from pypsrp.complex_objects import ApartmentState, HostInfo, Pipeline, RemoteStreamOptions
from pypsrp.messages import CreatePipeline
from pypsrp.powershell import PowerShell
from pypsrp.serializer import Serializer

from hybridtrust.lab.psrp_server import _PipelineReadings, statements_of
from hybridtrust.sources.exchange import certificate_command


def message(build: Any) -> bytes:
    """The CREATE_PIPELINE data pypsrp sends for the pipeline `build(PowerShell)` makes."""
    shell = build(PowerShell(SimpleNamespace(protocol_version="2.3")))
    pipeline = Pipeline(is_nested=False, cmds=shell.commands, history=None, redirect_err_to_out=False)
    create = CreatePipeline(
        True,
        ApartmentState(value=ApartmentState.UNKNOWN),
        RemoteStreamOptions(value=RemoteStreamOptions.ADD_INVOCATION_INFO),
        False,
        HostInfo(host=None),
        pipeline,
        False,
    )
    return ElementTree.tostring(Serializer().serialize(create), encoding="utf-8", method="xml")


def psrpcores_reading(data: bytes) -> psrpcore.PowerShell:
    return psrpcore.PowerShell.FromPSObjectForRemoting(deserialize(ElementTree.fromstring(data), cipher=None))


def readings() -> _PipelineReadings:
    return _PipelineReadings(lambda data: deserialize(ElementTree.fromstring(data), cipher=None))


def same(left: psrpcore.PowerShell, right: psrpcore.PowerShell) -> None:
    assert repr(left) == repr(right)
    assert statements_of(left) == statements_of(right)
    for mine, theirs in zip(left.commands, right.commands, strict=True):
        for field in _PipelineReadings._COMMAND_FIELDS:
            assert getattr(mine, field) == getattr(theirs, field), field
        assert [type(value) for _, value in mine.parameters] == [type(value) for _, value in theirs.parameters]


PIPELINES = {
    "certificate query": lambda ps: certificate_command("EX0001").pipeline(ps.runspace_pool),
    "projection list": lambda ps: (
        ps.add_cmdlet("Get-OwaVirtualDirectory")
        .add_parameter("ADPropertiesOnly", None)
        .add_cmdlet("Select-Object")
        .add_parameter("Property", ["Identity", "InternalUrl", "ExternalUrl"])
    ),
    "escapes and markup": lambda ps: ps.add_cmdlet("Get-User").add_parameter("Identity", "a&b <c> _x0041_ é ☃ \"'"),
    "typed values": lambda ps: (
        ps.add_cmdlet("Set-AuthConfig")
        .add_parameter("Force", True)
        .add_parameter("ResultSize", 5000)
        .add_parameter("Ratio", 0.5)
        .add_parameter("Clear", None)
    ),
    "line ends and spaces": lambda ps: ps.add_cmdlet("Set-User").add_parameter("Notes", "  a\r\nb\tc  "),
    "empty string": lambda ps: ps.add_cmdlet("Get-User").add_parameter("Filter", ""),
    "script with arguments": lambda ps: ps.add_script("param($a) $a").add_argument("x").add_argument(3),
    "two statements": lambda ps: (
        ps.add_cmdlet("Get-AuthServer").add_statement().add_cmdlet("Get-User").add_parameter("Identity", "svc")
    ),
}


@pytest.mark.parametrize("build", PIPELINES.values(), ids=PIPELINES.keys())
def test_a_reading_equals_psrpcores(build: Any) -> None:
    data = message(build)
    same(readings().pipeline(data), psrpcores_reading(data))


def test_messages_of_one_shape_each_get_their_own_values() -> None:
    shared = readings()
    first, second = (
        message(lambda ps: certificate_command("EX0001").pipeline(ps.runspace_pool)),
        message(lambda ps: certificate_command("EX0002 & <b>").pipeline(ps.runspace_pool)),
    )
    one, two, again = shared.pipeline(first), shared.pipeline(second), shared.pipeline(first)
    assert len(shared._shapes) == 1
    same(one, psrpcores_reading(first))
    same(two, psrpcores_reading(second))
    same(again, psrpcores_reading(first))
    assert one.commands[0].parameters == [("Server", "EX0001")]
    assert two.commands[0].parameters == [("Server", "EX0002 & <b>")]


def test_a_value_equal_to_another_parameter_name_is_still_a_value() -> None:
    data = message(lambda ps: ps.add_cmdlet("Get-User").add_parameter("Identity", "Identity"))
    same(readings().pipeline(data), psrpcores_reading(data))

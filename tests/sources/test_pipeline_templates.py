"""CREATE_PIPELINE messages written from templates are the bytes pypsrp itself writes."""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree

from hypothesis import given
from hypothesis import strategies as st
from pypsrp.complex_objects import (
    ApartmentState,
    Command,
    CommandParameter,
    HostInfo,
    Pipeline,
    RemoteStreamOptions,
)
from pypsrp.messages import CreatePipeline, Message
from pypsrp.serializer import Serializer

from hybridtrust.sources.exchange import certificate_command
from hybridtrust.sources.remoting import _PIPELINE_TEMPLATES, _PipelineTemplates, _RawOutputSerializer

POOL = "0b4e2f4c-2c5a-4e0f-9a51-6d3c1f0e8a11"
PIPELINE = "7d1c9e02-3b6f-4a8d-8e27-5f9a0c4b2d63"


def create_pipeline(cmdlet: str, parameters: list[tuple[str, Any]], select: Any = None) -> CreatePipeline:
    """The message pypsrp's PowerShell.begin_invoke builds for add_cmdlet + add_parameter
    (and, with `select`, ``add_cmdlet("Select-Object").add_parameter("Property", select)``)."""
    command = Command(cmd=cmdlet, protocol_version="2.3", is_script=False, use_local_scope=None)
    command.args.extend(CommandParameter(name=name, value=value) for name, value in parameters)
    commands = [command]
    if select is not None:
        projection = Command(cmd="Select-Object", protocol_version="2.3", is_script=False, use_local_scope=None)
        projection.args.append(CommandParameter(name="Property", value=select))
        commands.append(projection)
    pipeline = Pipeline(is_nested=False, cmds=commands, history=None, redirect_err_to_out=False)
    return CreatePipeline(
        True, ApartmentState(value=2), RemoteStreamOptions(value=15), False, HostInfo(), pipeline, False
    )


def packed(message: CreatePipeline, serializer: Serializer) -> bytes:
    return Message(0x2, POOL, PIPELINE, message, serializer).pack()


def test_a_certificate_query_is_written_from_its_template() -> None:
    serializer = _RawOutputSerializer()
    first = packed(create_pipeline("Get-ExchangeCertificate", [("Server", "EX0001")]), serializer)
    second = create_pipeline("Get-ExchangeCertificate", [("Server", "EX0002")])
    # The second message of the shape comes from the template: bytes, without pypsrp's serializer.
    assert isinstance(serializer.serialize(second), bytes)
    assert packed(second, serializer) == packed(second, Serializer())
    assert first == packed(create_pipeline("Get-ExchangeCertificate", [("Server", "EX0001")]), Serializer())


def test_a_projected_certificate_query_is_written_from_its_template() -> None:
    # certificate_command's pipeline: the one projected name travels as a string, so it is templated.
    (name,) = certificate_command("EX0001").select
    serializer = _RawOutputSerializer()
    packed(create_pipeline("Get-ExchangeCertificate", [("Server", "EX0001")], name), serializer)
    second = create_pipeline("Get-ExchangeCertificate", [("Server", "EX0002")], name)
    assert isinstance(serializer.serialize(second), bytes)
    assert packed(second, serializer) == packed(second, Serializer())


# Text Exchange could be asked for: markup, PowerShell's own _xHHHH_ escapes, control characters,
# surrogates excluded (a str that cannot be UTF-8 cannot be sent at all).
text = st.text(st.characters(exclude_categories=("Cs",)), min_size=0, max_size=40)


@given(st.lists(st.tuples(st.sampled_from(["Server", "Identity", "Thumbprint"]), text), min_size=1, max_size=3))
def test_any_string_parameters_give_pypsrps_bytes(parameters: list[tuple[str, str]]) -> None:
    serializer = _RawOutputSerializer()
    for _ in range(2):  # the first writes the template, the second reads it
        message = create_pipeline("Get-ExchangeCertificate", parameters)
        assert packed(message, serializer) == packed(
            create_pipeline("Get-ExchangeCertificate", parameters), Serializer()
        )


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Server", "Force", "Count"]), st.one_of(st.none(), st.booleans(), st.integers(), text)
        ),
        max_size=3,
    )
)
def test_switches_and_scalars_are_part_of_the_shape(parameters: list[tuple[str, Any]]) -> None:
    serializer = _RawOutputSerializer()
    for _ in range(2):
        message = create_pipeline("Set-Thing", parameters)
        assert packed(message, serializer) == packed(create_pipeline("Set-Thing", parameters), Serializer())


def test_values_pypsrp_writes_as_objects_are_left_to_pypsrp() -> None:
    message = create_pipeline("Set-Thing", [("Urls", ["https://a/", "https://b/"])])
    assert _PIPELINE_TEMPLATES.write(message, _RawOutputSerializer()) is None
    assert packed(message, _RawOutputSerializer()) == packed(
        create_pipeline("Set-Thing", [("Urls", ["https://a/", "https://b/"])]), Serializer()
    )


def test_string_values_written_before_give_the_same_bytes_and_the_cache_stays_bounded() -> None:
    templates = _PipelineTemplates()
    templates._STRINGS = 2
    serializer = _RawOutputSerializer()
    for server in ["EX01", "EX02", "EX01", "EX<3>", "EX01", "EX&4", "EX02"]:
        message = create_pipeline("Get-ExchangeCertificate", [("Server", server)], "RawData")
        written = templates.write(message, serializer)
        assert written is not None and len(templates._strings) <= 2
        expected = ElementTree.tostring(
            Serializer().serialize(create_pipeline("Get-ExchangeCertificate", [("Server", server)], "RawData")),
            encoding="utf-8",
            method="xml",
        )
        assert written == expected

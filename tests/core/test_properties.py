"""Property-based tests of the parsing and matching rules every verdict rests on (hypothesis)."""

from __future__ import annotations

import base64
import string
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from psrpcore.types import PSCustomObject, PSObject, serialize_clixml
from pypsrp.serializer import Serializer

from hybridtrust.certificates import decode_key_identifier
from hybridtrust.clixml import parse_clixml
from hybridtrust.matching import authority_spn_covers, normalise_url, url_is_listed, wildcard_covers
from hybridtrust.powershell import PSRecord
from hybridtrust.sources.remoting import RawOutput, output_record

EXO = "00000002-0000-0ff1-ce00-000000000000"
label = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=12)
domain = st.lists(label, min_size=1, max_size=3).map(lambda parts: ".".join([*parts, "com"]))


@given(st.binary(min_size=20, max_size=20))
def test_every_encoding_of_a_thumbprint_decodes_to_it(digest: bytes) -> None:
    thumbprint = digest.hex().upper()
    assert decode_key_identifier(thumbprint) == thumbprint
    assert decode_key_identifier(thumbprint.lower()) == thumbprint
    assert decode_key_identifier(base64.b64encode(digest).decode()) == thumbprint
    assert decode_key_identifier(base64.b64encode(thumbprint.encode()).decode()) == thumbprint


@given(st.binary(max_size=64).filter(lambda raw: len(raw) != 20))
def test_bytes_that_are_not_a_digest_name_no_certificate(raw: bytes) -> None:
    decoded = decode_key_identifier(base64.b64encode(raw).decode())
    assert decoded is None or len(decoded) == 40  # only base64 of 40 hex characters can still name one


@given(label, domain, st.lists(label, min_size=1, max_size=3))
def test_a_wildcard_covers_one_label_only(first: str, parent: str, extra: list[str]) -> None:
    pattern = f"*.{parent}"
    assert wildcard_covers(pattern, f"{first}.{parent}")
    assert wildcard_covers(pattern.upper(), f"{first}.{parent}".upper())
    assert not wildcard_covers(pattern, parent)
    assert not wildcard_covers(pattern, ".".join([*extra, first, parent]))


@given(domain, st.sampled_from(["", "/", ":443", ":443/"]), st.booleans())
def test_spn_forms_ignore_case_trailing_slash_and_default_port(host: str, suffix: str, upper: bool) -> None:
    spn = f"https://{host}{suffix}"
    spn = spn.upper() if upper else spn
    assert authority_spn_covers(spn, EXO, host)
    assert authority_spn_covers(f"{EXO}/{host.upper() if upper else host}", EXO, host)
    assert not authority_spn_covers(f"http://{host}/", EXO, host)


@given(domain, st.sampled_from(["/owa", "/ecp", "/OWA/", "/ecp/"]))
def test_normalising_a_url_is_idempotent(host: str, path: str) -> None:
    url = f"https://{host}{path}"
    once = normalise_url(url)
    assert once is not None and normalise_url(once) == once
    assert url_is_listed(url, [f"HTTPS://{host.upper()}:443{path.rstrip('/')}/"])


scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**31), 2**31 - 1), st.text(max_size=20))
value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=4), max_leaves=10)


def _expected(item: Any) -> Any:
    """What the normaliser promises: "" and None are the same, lists stay lists."""
    if isinstance(item, str):
        return item or None
    if isinstance(item, list):
        return [_expected(element) for element in item]
    return item


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.from_regex(r"[A-Z][A-Za-z]{0,12}", fullmatch=True), value, min_size=1, max_size=6))
def test_values_survive_a_clixml_round_trip_normalised(properties: dict[str, Any]) -> None:
    obj = PSCustomObject(**properties)
    clixml = serialize_clixml([obj], None)  # type: ignore[arg-type]
    records = parse_clixml(clixml, "generated")
    assert len(records) == 1 and isinstance(records[0], PSRecord)
    assert {name: records[0].get(name) for name in properties} == {k: _expected(v) for k, v in properties.items()}
    assert isinstance(obj, PSObject)


spn_form = st.one_of(
    domain.map(lambda host: f"https://{host}/"),
    domain.map(lambda host: f"{EXO}/{host}"),
    domain.map(lambda host: f"{EXO}/*.{host}"),
    domain.map(lambda host: f"{EXO}/{host}:443"),
    domain.map(lambda host: f"00000003-0000-0ff1-ce00-000000000000/{host}"),
)


@settings(max_examples=80)
@given(st.lists(spn_form, max_size=8), st.one_of(domain, label.map(lambda first: f"{first}.contoso.com")))
def test_the_service_principal_index_agrees_with_the_rules(names: list[str], host: str) -> None:
    from hybridtrust.facts import ServicePrincipal

    principal = ServicePrincipal.from_json({"id": "x", "appId": EXO, "servicePrincipalNames": names})
    assert principal.registers_authority(EXO, host) == any(authority_spn_covers(n, EXO, host) for n in names)
    assert principal.names_https_root(host) == any(
        normalise_url(n) == f"https://{host}" for n in names if n.startswith("https://")
    )


# -- the live source's normaliser (hybridtrust.sources.remoting.output_record) --------------------------
def _first_object(document: str) -> str:
    """The <Obj> of a one-object Export-Clixml document: what a PSRP PIPELINE_OUTPUT message carries."""
    start, end = document.index('<Obj RefId="0">'), document.rindex("</Objs>")
    return document[start:end]


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_a_string_output_is_read_as_the_server_wrote_it(text: str) -> None:
    # pypsrp hands string outputs over as str; output_record writes the <S> element again, escaping
    # control characters and "_x" look-alikes as CLIXML does, and reads it like evidence.
    record = output_record(text, "generated")
    assert record.text == (text or None)
    assert record.is_a("System.String")


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.from_regex(r"[A-Z][A-Za-z]{0,12}", fullmatch=True), value, min_size=1, max_size=6))
def test_live_output_and_evidence_give_the_same_record(properties: dict[str, Any]) -> None:
    # The three ways an object reaches the facts: an evidence file (Export-Clixml), a live pipeline
    # whose output is kept as the server's CLIXML (RawOutput), and pypsrp's own object (its _xml).
    document = serialize_clixml(PSCustomObject(**properties), None)  # type: ignore[arg-type]
    evidence = parse_clixml(document, "evidence")[0]
    element = _first_object(document)
    assert output_record(RawOutput(element), "raw") == evidence
    assert output_record(Serializer().deserialize(element), "pypsrp") == evidence

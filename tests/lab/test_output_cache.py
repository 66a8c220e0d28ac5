"""The lab's opt-in output cache answers with exactly the bytes psrpcore writes, and forgets on change."""

from __future__ import annotations

from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.wsman import WSMan

from hybridtrust.lab import output_cache
from hybridtrust.lab.cmdlets import render_everything, render_selections
from hybridtrust.lab.contoso import flawed_contoso
from hybridtrust.lab.exchange_objects import Directory, exchange_object
from hybridtrust.lab.server import start_lab
from hybridtrust.sources.exchange import PROJECTIONS
from tests.support import NOW


def test_cached_bytes_are_psrpcore_bytes_and_a_change_empties_the_cache() -> None:
    state = flawed_contoso(NOW)
    assert output_cache.warm(state) > 0
    cache = state.output_cache
    directory = Directory.of(state)
    for value in render_everything(state):  # every object, served from the cache as psrpcore writes it
        assert cache.serialized(value) == output_cache.clixml(value)
    selections = [value for value in render_selections(state) if not isinstance(value, BaseException)]
    assert selections and all(cache.serialized(value) == output_cache.clixml(value) for value in selections)
    mapi = state.objects("MapiVirtualDirectory")[0]
    before = cache.object("MapiVirtualDirectory", mapi, {"ad_properties_only": True}, lambda: None)
    assert before is not None  # built by warm
    with state.changing():
        mapi["ExternalUrl"] = "https://changed.contoso.com/mapi"
    after = cache.object(
        "MapiVirtualDirectory", mapi, {"ad_properties_only": True},
        lambda: exchange_object("MapiVirtualDirectory", mapi, directory, ad_properties_only=True),
    )  # fmt: skip
    assert after is not before and "changed.contoso.com" in output_cache.clixml(after).decode()
    assert cache.serialized(before) is None  # an object of an older revision is not served from the cache


def test_a_cached_lab_answers_like_an_uncached_one() -> None:
    answers = []
    for cached in (False, True):
        state = flawed_contoso(NOW)
        if cached:
            output_cache.warm(state)
        with start_lab(state, services=()) as lab:
            wsman = WSMan(**lab.exchange.wsman_kwargs())
            with RunspacePool(wsman, configuration_name="Microsoft.Exchange") as pool:
                shell = PowerShell(pool).add_cmdlet("Get-OwaVirtualDirectory").add_parameter("ADPropertiesOnly", True)
                answers.append([value._xml for value in shell.invoke()])
                shell = PowerShell(pool).add_cmdlet("Get-ExchangeServer")
                shell.add_cmdlet("Select-Object").add_parameter("Property", list(PROJECTIONS["Get-ExchangeServer"]))
                answers.append([value._xml for value in shell.invoke()])
        assert not cached or state.output_cache.hits > 0
    assert answers[:2] == answers[2:] and all(answers)

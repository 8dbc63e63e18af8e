"""A dry run must never write: its connectors pass to the real ones only what is declared a read."""

from __future__ import annotations

import inspect

import pytest

from p2csync.connectors import DataverseClient, FnOClient, StaticTokenProvider
from p2csync.ops.dryrun import DryDataverse, DryFnO, Recorder


@pytest.mark.parametrize(("real", "dry"), [(DataverseClient, DryDataverse), (FnOClient, DryFnO)])
async def test_every_public_connector_member_is_a_declared_read_or_handled_by_the_dry_class(real, dry) -> None:
    async with real("https://contoso.example/", StaticTokenProvider("t")) as client:
        instance = {name for name in vars(client) if not name.startswith("_")}
    public = instance | {name for name, _ in inspect.getmembers(real) if not name.startswith("_")}
    handled = {name for klass in dry.__mro__ if klass is not object for name in vars(klass)}
    assert public - dry.READS - handled == {"request"}, "a new connector member: a read (READS) or a recorded write?"
    assert dry.READS <= public  # no stale names


@pytest.mark.parametrize("dry", [DryDataverse, DryFnO])
def test_an_undeclared_member_is_refused_not_forwarded(dry) -> None:
    class Real:
        def request(self, *args: object) -> None:  # pragma: no cover - must not be reached
            raise AssertionError("forwarded to the real connector")

        def get(self) -> str:
            return "read"

    wrapped = dry(Real(), Recorder())
    assert wrapped.get() == "read"
    with pytest.raises(AttributeError, match="does not pass 'request' to the real connector"):
        wrapped.request("POST", "data/CustomersV3")

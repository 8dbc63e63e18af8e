"""Key lookups are indexed (sandbox/indexed_rows.py): they must answer exactly as the old full scan did, and stay
right after a key column changes, a row is deleted, or a change set rolls back."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from typing import Any

import httpx
import pytest

from sandbox.dataverse import Dataverse, DataverseError, _same
from sandbox.dataverse_tables import INTEGRATION_TOKEN
from sandbox.fno import FnO
from sandbox.indexed_rows import IndexedRows

KEY = ("number", "line")


def scan(rows: IndexedRows, values: dict[str, Any]) -> list[str]:
    """What the sandbox did before the index: every row, compared with `_same`."""
    return [rid for rid, row in rows.items() if all(_same(row.get(c), values.get(c)) for c in KEY)]


def test_index_agrees_with_a_scan_through_random_writes_and_rollbacks() -> None:
    rng = random.Random(7)
    rows = IndexedRows([list(KEY)])
    numbers = ["A1", "a1", "B2", "b2 ", None]
    lines = [1, 1.0, Decimal("2"), 2, None]
    for step in range(600):
        op = rng.random()
        rid = f"r{rng.randrange(40)}"
        if op < 0.5:
            rows[rid] = {"number": rng.choice(numbers), "line": rng.choice(lines)}
        elif op < 0.7:
            rows.pop(rid, None)
        elif op < 0.8 and rid in rows:
            del rows[rid]
        else:
            before = dict(rows)
            mark = rows.begin()
            for _ in range(5):
                rows[f"r{rng.randrange(40)}"] = {"number": rng.choice(numbers), "line": rng.choice(lines)}
                rows.pop(f"r{rng.randrange(40)}", None)
            rows.rollback(mark)
            assert list(rows.items()) == list(before.items()), step  # same rows, same order
        for number in numbers:
            for line in lines:
                wanted = {"number": number, "line": line}
                assert rows.ids_for(KEY, wanted) == scan(rows, wanted), (step, wanted)


def test_a_kept_change_set_stays() -> None:
    rows = IndexedRows([list(KEY)])
    mark = rows.begin()
    rows["x"] = {"number": "N", "line": 1}
    rows.end(mark)
    rows.rollback(rows.begin())  # a later, empty change set undoes nothing
    assert rows.ids_for(KEY, {"number": "n", "line": 1}) == ["x"]


@pytest.fixture
def dv() -> Dataverse:
    return Dataverse()


def test_update_of_a_key_column_moves_the_key(dv: Dataverse) -> None:
    record_id = dv.create("account", {"name": "Contoso", "accountnumber": "C-1"})
    dv.update("account", record_id, {"accountnumber": "C-2"})
    assert dv.get("account", {"accountnumber": "C-1"}) is None
    assert dv.get("account", {"accountnumber": "c-2"})["accountid"] == record_id  # case-insensitive, as before
    assert dv.create("account", {"name": "Other", "accountnumber": "C-1"})  # the old value is free again
    with pytest.raises(DataverseError) as caught:
        dv.create("account", {"name": "Dup", "accountnumber": "c-2"})
    assert caught.value.status == 412 and "Duplicate key: accountnumber:c-2" in caught.value.message


def test_delete_frees_the_key(dv: Dataverse) -> None:
    record_id = dv.create("account", {"name": "Contoso", "accountnumber": "D-1"})
    dv.delete("account", {"accountnumber": "D-1"})
    assert dv.get("account", {"accountnumber": "D-1"}) is None
    assert dv.create("account", {"name": "Again", "accountnumber": "D-1"}) != record_id


def test_rollback_restores_keys_and_order(dv: Dataverse) -> None:
    first = dv.create("account", {"name": "One", "accountnumber": "R-1"})
    second = dv.create("account", {"name": "Two", "accountnumber": "R-2"})
    order = [r["accountid"] for r in dv.rows("account")]
    table, user = dv.table("account"), dv.sales_user
    with dv.change_set() as change_set:
        dv.update_row(table, first, {"accountnumber": "R-9"}, user)
        dv.delete_row(table, second, user)
        dv.create_row(table, {"name": "Three", "accountnumber": "R-2"}, user)
        assert dv.get("account", {"accountnumber": "R-2"})["name"] == "Three"
        change_set.rollback()
    assert [r["accountid"] for r in dv.rows("account")] == order
    assert dv.get("account", {"accountnumber": "R-1"})["accountid"] == first
    assert dv.get("account", {"accountnumber": "R-2"})["accountid"] == second
    assert dv.get("account", {"accountnumber": "R-9"}) is None
    with pytest.raises(DataverseError):
        dv.create("account", {"name": "Dup", "accountnumber": "R-2"})


def test_composite_lookup_key_is_indexed(dv: Dataverse) -> None:
    order = dv.create("salesorder", {"name": "SO", "ordernumber": "SO-1"})
    line = dv.create("salesorderdetail", {"salesorderid": ("salesorder", order), "sequencenumber": 3,
                                          "isproductoverridden": True, "productdescription": "Write-in"})
    found = dv.get("salesorderdetail", {"_salesorderid_value": order.upper(), "sequencenumber": 3})
    assert found is not None and found["salesorderdetailid"] == line
    assert dv.get("salesorderdetail", {"salesorderid": order, "sequencenumber": 4}) is None


def test_fno_rollback_restores_rows_and_versions() -> None:
    fno = FnO()
    entity = fno.entity("CustomersV3")
    fno.create("CustomersV3", {"CustomerAccount": "US-001", "CustomerGroupId": "10", "dataAreaId": "usmf"})
    key = {"CustomerAccount": "US-001", "dataAreaId": "usmf"}
    etag = fno.etag(entity, fno.get("CustomersV3", key))
    with fno.change_set() as change_set:
        fno.update("CustomersV3", key, {"OrganizationName": "Changed"})
        fno.create("CustomersV3", {"CustomerAccount": "US-002", "CustomerGroupId": "10", "dataAreaId": "usmf"})
        change_set.rollback()
    assert fno.get("CustomersV3", {"CustomerAccount": "us-001 ", "dataAreaId": "USMF"}) is not None
    assert fno.get("CustomersV3", {"CustomerAccount": "US-002", "dataAreaId": "usmf"}) is None
    assert fno.etag(entity, fno.get("CustomersV3", key)) == etag
    assert fno.get("CustomersV3", key).get("OrganizationName") != "Changed"


def web_get(dv: Dataverse, entity_set: str, params: dict[str, str]) -> list[dict[str, Any]]:
    """GET a collection through the Web API app in process; the rows of its answer."""
    async def fetch() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=dv.app), base_url="http://dv/api/data/v9.2/",
                                     headers={"Authorization": f"Bearer {INTEGRATION_TOKEN}"}) as client:
            response = await client.get(entity_set, params=params)
            assert response.status_code == 200, response.text
            return list(response.json()["value"])

    return asyncio.run(fetch())


@pytest.mark.parametrize("literal,numbers", [
    ("'F-1'", ["F-1"]), ("'f-1'", ["F-1"]), ("'F-1 '", []), ("7", []), ("'7'", ["7"]), ("'nope'", [])])
def test_a_key_equality_filter_uses_the_index_and_answers_as_a_scan(dv: Dataverse, literal: str,
                                                                    numbers: list[str]) -> None:
    for number in ("F-1", "F-2", "7"):
        dv.create("account", {"name": f"Filter {number}", "accountnumber": number})
    hinted: list[tuple[Any, list[str], list[str]]] = []
    query = dv.query

    def spy(table: Any, keep: Any, hint: Any = None) -> list[dict[str, Any]]:
        rows = query(table, keep, hint)
        hinted.append((hint, [r["accountid"] for r in rows], [r["accountid"] for r in query(table, keep, None)]))
        return rows

    dv.query = spy  # type: ignore[method-assign]

    rows = web_get(dv, "accounts", {"$filter": f"accountnumber eq {literal}", "$select": "accountnumber"})
    assert [r["accountnumber"] for r in rows] == numbers
    [(hint, with_index, with_scan)] = hinted
    assert hint is not None and hint[0] == "accountnumber" and with_index == with_scan


def test_a_document_s_lines_are_read_through_the_parent_lookup_index(dv: Dataverse) -> None:
    orders = [dv.create("salesorder", {"name": f"SO{n}", "ordernumber": f"SO-{n}"}) for n in range(3)]
    for order in orders:
        for _ in range(2):
            dv.create("salesorderdetail", {"salesorderid": ("salesorder", order), "isproductoverridden": True,
                                           "productdescription": "Write-in", "quantity": 1})
    table = dv.table("salesorderdetail")
    seen: list[Any] = []
    query = dv.query

    def spy(table_arg: Any, keep: Any, hint: Any = None) -> list[dict[str, Any]]:
        indexed, scanned = query(table_arg, keep, hint), query(table_arg, keep, None)
        seen.append((hint, dv._indexed_value(table, hint) if hint else None))
        assert [r["salesorderdetailid"] for r in indexed] == [r["salesorderdetailid"] for r in scanned]
        return indexed

    dv.query = spy  # type: ignore[method-assign]

    def lines(literal: str) -> list[dict[str, Any]]:
        return web_get(dv, "salesorderdetails", {"$filter": f"_salesorderid_value eq {literal}", "$select": "quantity"})

    assert len(lines(orders[1])) == 2
    assert len(lines(orders[2].upper())) == 2
    assert lines("00000000-0000-0000-0000-000000000000") == []
    assert all(indexed is not None and indexed[0] == "salesorderid" for _, indexed in seen)
    assert dv._indexed_value(dv.table("salesorder"), ("_customerid_value", None)) is None  # polymorphic: scan


def test_a_key_added_to_the_definition_later_is_indexed_on_first_use(dv: Dataverse) -> None:
    dv.create("contact", {"firstname": "Jo", "lastname": "One", "emailaddress1": "jo@example.com"})
    dv.table("contact").alternate_keys.append(["emailaddress1"])
    try:
        assert dv.get("contact", {"emailaddress1": "JO@example.com"})["lastname"] == "One"
        with pytest.raises(DataverseError) as caught:
            dv.create("contact", {"firstname": "Jo", "lastname": "Two", "emailaddress1": "jo@example.com"})
        assert caught.value.status == 412
    finally:
        dv.table("contact").alternate_keys.pop()

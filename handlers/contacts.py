"""Flow 3: Sales contacts become F&O person customers or contact persons (P2C templates "Contacts to Customer
(Sales to Fin and Ops) - Direct" and "Contacts (Sales to Fin and Ops) - Direct").

Two mapping files, one source table, one handler. The handler does not know the rule: each file's filter says
which contacts it takes (contacts_customers.yaml: active customers; contacts_persons.yaml: contacts of an account
that are not), and the handler maps a contact with the file whose filter it passes. A contact neither takes is
skipped with both reasons; one both take is a mapping error (dead-lettered: the filters must exclude each other).

One ledger record per contact (``contacts:contact:<id>``) whatever file applies, so a contact's events are
serialised under one lease, and its claim on an F&O record moves (``Ledger.claim(previous=)``) when it changes
category, company or number.

What happens to the record a contact leaves behind (its "old counterpart") is data too: the ``retire`` block of
the file that wrote it.
* Contact person -> person customer (the contact became an active customer): the contact person is marked
  inactive (contacts_persons.yaml ``retire: {IsInactive: "Yes"}``). Deleting it would fail or orphan documents
  that name it; leaving it active would list a customer as another customer's contact.
* Person customer -> contact person (rare: "Is Active Customer" is set by having quotes, orders or invoices):
  the customer is left as it is (contacts_customers.yaml ``retire: {}``): customers are never deleted or
  blocked by the sync, as with accounts, because they carry transactions.
* A contact person whose company becomes another account: the old contact person is marked inactive, the new
  one is written under the new account's customer.
The Applied outcome's detail says which of these happened.

Company: a person customer routes by the contact's own business unit (like accounts); a contact person by its
account, with the accounts flow's routing (``company.parent`` in contacts_persons.yaml). When that account's
customer is not in F&O, the account is synced first through the accounts flow (pull-through, handlers/pull.py);
if it cannot be (no account number yet, filtered out, busy), the contact waits (Deferred, naming the account). Deletes are not synced (as for accounts).
"""

from __future__ import annotations


from handlers.base import FlowContext, SalesToFnORecordSync, describe_target, parse_target_key, target_key
from mappings import MappedValueError, MappingSpec, payload_hash
from mappings.fno_values import key_value
from p2csync.envelopes import ChangeEvent
from p2csync.ledger.base import RecordState
from p2csync.outcomes import Applied, Deferred, Outcome, Skipped

FLOW = "contacts"
#: The mapping files this handler chooses between, in the order their filters are tried.
TEMPLATES = ("contacts_customers", "contacts_persons")


class ContactSync(SalesToFnORecordSync):
    """One handler for the contact table, mapping each contact with the template whose filter it passes."""

    def __init__(self, templates: tuple[str, ...] = TEMPLATES) -> None:
        super().__init__(FLOW)
        self.templates = templates
        self.specs: list[MappingSpec] = []

    @property
    def flows(self) -> tuple[str, ...]:
        return self.templates

    def bind(self, *specs: MappingSpec) -> ContactSync:
        tables = {spec.source.table for spec in specs}
        if len(tables) != 1:
            raise ValueError(f"{FLOW}: the templates {', '.join(s.flow for s in specs)} must read one table, "
                             f"not {', '.join(sorted(tables))}")
        self.specs = list(specs)
        self.table = tables.pop()
        return self

    async def sync(self, event: ChangeEvent, state: RecordState, ctx: FlowContext) -> Outcome:
        specs = [ctx.mappings.get(spec.flow, spec) for spec in self.specs]
        if event.message_name == "Delete":
            return await self._deleted(event, state, ctx)

        record, version = await self._newest_state(event, state, specs, ctx)
        if record is None:
            return Skipped(reason=f"{event.entity} {event.record_id} no longer exists in Dataverse")
        if state.version is not None and version is not None and version < state.version:
            return Skipped(reason=f"stale: fetched version {version} is older than applied {state.version}")

        reasons = {spec.flow: spec.filter_reason(record) for spec in specs}
        chosen = [spec for spec in specs if reasons[spec.flow] is None]
        if not chosen:
            why = "; ".join(f"not {spec.flow} ({reasons[spec.flow]})" for spec in specs)
            if state.target_key:
                why += f"; {describe_target(state.target_key)}, written earlier, is left as it is"
            return Skipped(reason=f"filtered out: {why}", version=version)
        if len(chosen) > 1:
            raise MappedValueError(FLOW, "filter", None, f"both {chosen[0].flow} and {chosen[1].flow} take this "
                                   f"{event.entity}; their filters must exclude each other")
        spec = chosen[0]

        mapped = await self._map_record(spec, record, ctx, event)
        if isinstance(mapped, Deferred):
            return mapped
        target = target_key("fno", spec.target.entity_set, mapped.key)
        if conflict := await self._claim(event, state, target, ctx):
            return conflict
        digest = payload_hash(mapped.payload)
        if digest == state.payload_hash and target == state.target_key:
            return Skipped(reason="unchanged: the mapped payload equals the last one written", version=version,
                           payload_hash=digest, target_key=target)

        detail = f"{await self._upsert(spec, mapped, state, target, ctx)} as {spec.flow}"
        if state.target_key and state.target_key != target:
            detail += "; " + await self._retire(state.target_key, specs, ctx)
        return Applied(detail=detail, version=version, payload_hash=digest, target_key=target)

    async def _retire(self, old_target: str, specs: list[MappingSpec], ctx: FlowContext) -> str:
        """Apply the ``retire`` block of the file that wrote ``old_target``; say what became of it."""
        described = describe_target(old_target)
        entity_set, folded = parse_target_key(old_target)
        owner = next((s for s in specs if s.target.entity_set.casefold() == entity_set.casefold()), None)
        if owner is None or not owner.retire:
            flow = owner.flow if owner else "no contacts template"
            return f"{described}, written earlier, is left as it is ({flow} has no 'retire' in its mapping)"
        # The ledger keeps keys case-folded (F&O compares them without case); constants of the mapping give an
        # enum member back its spelling, which OData's enum literal may need.
        constants = {f.target: f.value for f in owner.fields if f.is_constant}
        key = {}
        for name, value in folded.items():
            constant = constants.get(name)
            if isinstance(constant, str) and isinstance(value, str) and constant.casefold() == value:
                value = constant
            key[name] = key_value(owner.target.entity_set, name, value)
        row = await ctx.fno.get(owner.target.entity_set, key)
        if row is None:
            return f"{described}, written earlier, is no longer in F&O: nothing to retire"
        real_key = {name: key_value(owner.target.entity_set, name, row.get(name, key[name])) for name in key}
        result = await ctx.fno.upsert(owner.target.entity_set, real_key, owner.retire)
        values = ", ".join(f"{name}={value}" for name, value in owner.retire.items())
        return f"{described}, written earlier, retired ({values}{'' if result.changed else ', already so'})"


def create_handler() -> ContactSync:
    return ContactSync()


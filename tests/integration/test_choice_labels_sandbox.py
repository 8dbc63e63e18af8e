"""Choice labels against the Dataverse sandbox over loopback HTTP: the connector reads a choice column's
definition, the runtime resolves the loaded mappings' labels once before syncing (one metadata read per column
for the process), an unknown label holds every sync back naming the file, the place, the label and the labels
that exist, and ``validate --online`` checks the same without starting anything."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mappings.choices import ChoiceLabelError, options_from_metadata
from p2csync.choices import forget_choice_options
from p2csync.cli import main
from p2csync.connectors import DataverseClient, StaticTokenProvider
from p2csync.outcomes import Deferred
from p2csync.settings import ROOT
from sandbox import INTEGRATION_TOKEN, SandboxServer
from sandbox.dataverse_tables import processing_status
from tests.integration.runtime_world import Capture, Runtimes, account, sales_change

METADATA = "EntityDefinitions"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    forget_choice_options()
    yield
    forget_choice_options()


def relabelled(tmp_path: Path, label: str) -> Path:
    """The repository's mapping files, with the orders filter naming processing status ``label``."""
    directory = tmp_path / "mappings"
    directory.mkdir()
    for file in (ROOT / "mappings").glob("*.yaml"):
        shutil.copy(file, directory / file.name)
    orders = directory / "orders.yaml"
    text = orders.read_text(encoding="utf-8")
    assert "equals: {label: Active}" in text
    orders.write_text(text.replace("equals: {label: Active}", f"equals: {{label: {label}}}"), encoding="utf-8")
    return directory


async def test_the_connector_reads_a_choice_column_s_definition(sandbox: SandboxServer) -> None:
    async with DataverseClient(sandbox.dataverse_url, StaticTokenProvider(INTEGRATION_TOKEN)) as dataverse:
        body = await dataverse.choice_column("salesorder", "msdynce_processingstatus")
        state = await dataverse.choice_column("salesorder", "statecode")
        assert await dataverse.choice_column("salesorder", "nosuchcolumn") is None
        assert await dataverse.choice_column("nosuchtable", "statecode") is None
        with pytest.raises(ValueError):
            await dataverse.choice_column("salesorder", "x')/../accounts(")
    assert body is not None and state is not None
    options = options_from_metadata("salesorder", "msdynce_processingstatus", body)
    assert options.values_for("Active") == [processing_status("Active")]
    assert options_from_metadata("salesorder", "statecode", state).values_for("Submitted") == [1]
    [request] = sandbox.dataverse.request_log.entries(path_contains="msdynce_processingstatus")
    assert request.path.endswith("/Microsoft.Dynamics.CRM.PicklistAttributeMetadata")
    assert sandbox.dataverse.request_log.entries(path_contains="StateAttributeMetadata")


async def test_start_up_resolves_the_labels_once_per_column_for_the_process(
        sandbox: SandboxServer, runtimes: Runtimes) -> None:
    runtime = runtimes.build()
    orders = runtime.mappings["orders"]
    assert not orders.choices_resolved
    await runtime.start()
    assert orders.choices_resolved
    active, draft = processing_status("Active"), processing_status("Draft")
    assert orders.filter_reason({"statecode": 0, "msdynce_processingstatus": active}) is None
    assert orders.filter_reason({"statecode": 0, "msdynce_processingstatus": draft}) == \
        f"msdynce_processingstatus is {draft}, expected Active ({active})"
    await runtime.start()  # already done: nothing read again
    second = runtimes.build()  # another runtime of the process (another event loop): the cache answers
    await second.start()
    assert second.mappings["orders"].choices_resolved
    assert len(sandbox.dataverse.request_log.entries(method="GET", path_contains=METADATA)) == 1


async def test_an_unknown_label_fails_start_up_naming_file_field_label_and_the_labels_that_exist(
        sandbox: SandboxServer, capture: Capture, runtimes: Runtimes, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    directory = relabelled(tmp_path, "Activated")
    runtime = runtimes.build(P2C_MAPPINGS_DIR=str(directory))
    with pytest.raises(ChoiceLabelError) as info:
        await runtime.start()
    message = str(info.value)
    assert message.startswith(f"{directory / 'orders.yaml'}: filter[1].equals: salesorder.msdynce_processingstatus "
                              "has no option labelled 'Activated' (did you mean 'Active'?); its options: "
                              "Draft (192350000), Active (192350001), Confirmed (192350002),")
    assert message.endswith("Cancelled (192350011)")

    # The first sync (here: an account's) waits instead of syncing with a wrong filter, with the reason; the
    # metadata is not read again for every message that arrives meanwhile.
    [created] = await sales_change(sandbox, capture, lambda: sandbox.dataverse.create("account", account("CL-1")))
    outcome, _, _ = await runtime.process(created)
    again, _, _ = await runtime.process(created)
    assert isinstance(outcome, Deferred) and isinstance(again, Deferred)
    assert outcome.reason.startswith("mapping choice labels do not match this Dataverse environment: ")
    assert "no option labelled 'Activated'" in outcome.reason and again.reason == outcome.reason
    assert not sandbox.fno.request_log.entries(method="POST")  # nothing written to F&O
    assert len(sandbox.dataverse.request_log.entries(method="GET", path_contains=METADATA)) == 2  # start + 1st sync

    # A customizer adds the option in Sales: the next check after CHOICE_RECHECK_SECONDS reads the column again,
    # and syncing resumes without a restart.
    options = sandbox.dataverse.tables["salesorder"].columns["msdynce_processingstatus"].options
    monkeypatch.setitem(options, 192350012, "Activated")
    monkeypatch.setattr(runtime, "_choices_failed", (0.0, "expired"))
    resumed, _, _ = await runtime.process(created)
    assert resumed.kind == "applied", resumed
    assert runtime.mappings["orders"].filter_reason({"statecode": 0, "msdynce_processingstatus": 192350012}) is None


def test_validate_online_checks_the_labels_against_the_environment(
        sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for key, value in {"DATAVERSE_URL": sandbox.dataverse_url, "P2C_AUTH_MODE": "static",
                       "P2C_STATIC_TOKEN": INTEGRATION_TOKEN}.items():
        monkeypatch.setenv(key, value)
    assert main(["validate", str(ROOT / "mappings")]) == 0  # offline by default: no metadata read
    assert not sandbox.dataverse.request_log.entries(path_contains=METADATA)
    assert main(["validate", "--online", str(ROOT / "mappings")]) == 0
    checked = re.search(r"choice labels: (\d+) checked against", capsys.readouterr().out)
    assert checked is not None and int(checked.group(1)) >= 2  # orders' filter, orders_back's status map
    forget_choice_options()
    assert main(["validate", "--online", str(relabelled(tmp_path, "Aktiv"))]) == 1
    error = capsys.readouterr().err
    assert error.startswith("invalid mapping: ") and "orders.yaml: filter[1].equals: " in error
    assert "no option labelled 'Aktiv'" in error and "Active (192350001)" in error

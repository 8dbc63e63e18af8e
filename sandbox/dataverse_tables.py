"""Dataverse table definitions as data, plus the fixed ids of the seeded rows.

Adding a table is a call to `define_table(...)`: the platform columns every Dataverse table has (id,
created/modified on/by, versionnumber, state/status, owner) are added for you.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, Field

# Fixed ids of the seeded rows, so tests and the demo can refer to them.
ORGANIZATION_ID = "5e1d4c3b-2a19-4f08-9e7d-6c5b4a392817"
ORGANIZATION_NAME = "p2csyncsandbox"
ORGANIZATION_DOMAIN = "p2csync-sandbox.crm.dynamics.com"
ROOT_BUSINESS_UNIT_ID = "b0c1d2e3-f405-4617-8829-3a4b5c6d7e01"
INTEGRATION_USER_ID = "a1f0c3d2-7b6e-4c5d-9e8f-0a1b2c3d4e01"
SALES_USER_ID = "a1f0c3d2-7b6e-4c5d-9e8f-0a1b2c3d4e02"
USD_CURRENCY_ID = "c7a8b9d0-e1f2-4a3b-8c4d-5e6f7a8b9c01"
EUR_CURRENCY_ID = "c7a8b9d0-e1f2-4a3b-8c4d-5e6f7a8b9c02"


class ColumnType(str, Enum):
    STRING = "string"
    MEMO = "memo"
    INT = "int"
    BIGINT = "bigint"
    DECIMAL = "decimal"
    FLOAT = "float"
    BOOL = "bool"
    MONEY = "money"
    OPTIONSET = "optionset"
    DATETIME = "datetime"
    LOOKUP = "lookup"
    UNIQUEIDENTIFIER = "uniqueidentifier"


class Column(BaseModel):
    """One column. `targets` (lookups) are table logical names; `options` map choice values to labels."""

    name: str
    type: ColumnType
    targets: list[str] = Field(default_factory=list)
    options: dict[int, str] = Field(default_factory=dict)
    system: bool = False  # maintained by the platform; ignored when a client writes it
    readable: bool = True  # False: write-only (serviceendpoint.authvalue), never returned or queryable
    navigation: dict[str, str] = Field(default_factory=dict)  # target table -> navigation property name

    def nav_names(self) -> dict[str, str]:
        """Navigation property per target: the column name for single-target lookups, `<col>_<table>` for
        polymorphic ones (customer lookups), unless given explicitly."""
        names: dict[str, str] = {}
        for target in self.targets:
            default = self.name if len(self.targets) == 1 else f"{self.name}_{target}"
            names[target] = self.navigation.get(target, default)
        return names


class Table(BaseModel):
    logical_name: str
    entity_set: str
    primary_id: str
    primary_name: str
    alternate_keys: list[list[str]] = Field(default_factory=list)
    columns: dict[str, Column]
    ownership: Literal["user", "organization"] = "user"
    name_from: list[str] | None = None  # primary name computed from these columns (contact.fullname)

    def column(self, name: str) -> Column | None:
        return self.columns.get(name)

    @property
    def money_columns(self) -> list[str]:
        return [c.name for c in self.columns.values() if c.type is ColumnType.MONEY]

    def navigation_properties(self) -> dict[str, tuple[Column, str]]:
        """navigation property name -> (lookup column, target table)."""
        result: dict[str, tuple[Column, str]] = {}
        for column in self.columns.values():
            if column.type is ColumnType.LOOKUP:
                for target, nav in column.nav_names().items():
                    result[nav] = (column, target)
        return result


STATE_OPTIONS = {0: "Active", 1: "Inactive"}
STATUS_OPTIONS = {1: "Active", 2: "Inactive"}
DEFAULT_STATUS_FOR_STATE = {0: 1, 1: 2}

ColumnSpec = ColumnType | Column | tuple[ColumnType, Any]


def _column(name: str, spec: ColumnSpec) -> Column:
    if isinstance(spec, Column):
        return spec.model_copy(update={"name": name})
    if isinstance(spec, tuple):
        kind, extra = spec
        if kind is ColumnType.LOOKUP:
            return Column(name=name, type=kind, targets=list(extra))
        if kind is ColumnType.OPTIONSET:
            return Column(name=name, type=kind, options=dict(extra))
        raise ValueError(f"no extra data for {kind}")
    return Column(name=name, type=spec)


def define_table(
    logical_name: str,
    entity_set: str,
    *,
    primary_name: str,
    columns: dict[str, ColumnSpec],
    primary_id: str | None = None,
    alternate_keys: list[list[str]] | None = None,
    ownership: Literal["user", "organization"] = "user",
    name_from: list[str] | None = None,
) -> Table:
    """A table with the platform columns added."""
    pid = primary_id or f"{logical_name}id"
    cols: dict[str, Column] = {pid: Column(name=pid, type=ColumnType.UNIQUEIDENTIFIER)}
    cols[primary_name] = Column(name=primary_name, type=ColumnType.STRING)
    for name, spec in columns.items():
        cols[name] = _column(name, spec)
    system_user = ["systemuser"]
    for name, column in {
        "createdon": Column(name="createdon", type=ColumnType.DATETIME, system=True),
        "modifiedon": Column(name="modifiedon", type=ColumnType.DATETIME, system=True),
        "versionnumber": Column(name="versionnumber", type=ColumnType.BIGINT, system=True),
        "createdby": Column(name="createdby", type=ColumnType.LOOKUP, targets=system_user, system=True),
        "modifiedby": Column(name="modifiedby", type=ColumnType.LOOKUP, targets=system_user, system=True),
        "createdonbehalfby": Column(name="createdonbehalfby", type=ColumnType.LOOKUP, targets=system_user,
                                    system=True),
        "modifiedonbehalfby": Column(name="modifiedonbehalfby", type=ColumnType.LOOKUP, targets=system_user,
                                     system=True),
        "statecode": Column(name="statecode", type=ColumnType.OPTIONSET, options=STATE_OPTIONS),
        "statuscode": Column(name="statuscode", type=ColumnType.OPTIONSET, options=STATUS_OPTIONS),
    }.items():
        cols.setdefault(name, column)
    if ownership == "user":
        cols.setdefault("ownerid", Column(name="ownerid", type=ColumnType.LOOKUP, targets=system_user))
        cols.setdefault("owningbusinessunit", Column(name="owningbusinessunit", type=ColumnType.LOOKUP,
                                                     targets=["businessunit"], system=True))
    return Table(logical_name=logical_name, entity_set=entity_set, primary_id=pid, primary_name=primary_name,
                 alternate_keys=alternate_keys or [], columns=cols, ownership=ownership, name_from=name_from)


S, M, I, D, F, B, MONEY, DT = (ColumnType.STRING, ColumnType.MEMO, ColumnType.INT, ColumnType.DECIMAL,
                               ColumnType.FLOAT, ColumnType.BOOL, ColumnType.MONEY, ColumnType.DATETIME)


def _lookup(*targets: str) -> tuple[ColumnType, tuple[str, ...]]:
    return (ColumnType.LOOKUP, targets)


def choice(options: dict[int, str]) -> tuple[ColumnType, dict[int, str]]:
    return (ColumnType.OPTIONSET, options)


def _address(prefix: str) -> dict[str, ColumnSpec]:
    return {f"{prefix}_{part}": S for part in
            ("name", "line1", "line2", "line3", "city", "stateorprovince", "postalcode", "country", "county",
             "telephone1")}


INDUSTRY_OPTIONS = {1: "Accounting", 2: "Agriculture and Non-petrol Natural Resource Extraction",
                    3: "Broadcasting Printing and Publishing", 4: "Brokers", 5: "Building Supply Retail",
                    6: "Business Services", 7: "Consulting", 8: "Consumer Services",
                    9: "Design, Direction and Creative Management", 10: "Distributors, Dispatchers and Processors"}


def default_tables() -> list[Table]:
    """The tables the sandbox knows out of the box."""
    account = define_table(
        "account", "accounts", primary_name="name",
        alternate_keys=[["accountnumber"]],  # added by the Prospect to cash solution (natural key)
        columns={
            "accountnumber": S, "telephone1": S, "telephone2": S, "fax": S, "emailaddress1": S, "websiteurl": S,
            "description": M, **_address("address1"), **_address("address2"),
            "creditlimit": MONEY, "revenue": MONEY, "numberofemployees": I, "creditonhold": B,
            "industrycode": choice(INDUSTRY_OPTIONS),
            "customertypecode": choice({1: "Competitor", 2: "Consultant", 3: "Customer", 4: "Investor",
                                         5: "Partner", 6: "Influencer", 7: "Press", 8: "Prospect",
                                         9: "Reseller", 10: "Supplier", 11: "Vendor", 12: "Other"}),
            "paymenttermscode": choice({1: "Net 30", 2: "2% 10, Net 30", 3: "Net 45", 4: "Net 60"}),
            "primarycontactid": _lookup("contact"),
            "parentaccountid": _lookup("account"),
            "transactioncurrencyid": _lookup("transactioncurrency"),
            "exchangerate": D,
        },
    )
    contact = define_table(
        "contact", "contacts", primary_name="fullname", name_from=["firstname", "lastname"],
        alternate_keys=[["msdynce_contactnumber"]],  # added by the Prospect to cash solution (natural key)
        columns={
            "firstname": S, "middlename": S, "lastname": S, "msdynce_contactnumber": S,
            "emailaddress1": S, "telephone1": S, "mobilephone": S, "fax": S, "jobtitle": S, "department": S,
            "governmentid": S, "websiteurl": S, "description": M, **_address("address1"),
            "gendercode": choice({1: "Male", 2: "Female"}),
            "familystatuscode": choice({1: "Single", 2: "Married", 3: "Divorced", 4: "Widowed"}),
            "donotemail": B, "creditlimit": MONEY,
            # [Inferred] the P2C solution's "Is Active Customer" column; its logical name is not published.
            "msdynce_isactivecustomer": B,
            "parentcustomerid": _lookup("account", "contact"),
            "transactioncurrencyid": _lookup("transactioncurrency"),
            "exchangerate": D,
        },
    )
    currency = define_table(
        "transactioncurrency", "transactioncurrencies", primary_name="currencyname", ownership="organization",
        columns={"isocurrencycode": S, "currencysymbol": S, "exchangerate": D, "currencyprecision": I},
    )
    systemuser = define_table(
        "systemuser", "systemusers", primary_name="fullname", ownership="organization",
        columns={"firstname": S, "lastname": S, "domainname": S, "internalemailaddress": S,
                 "azureactivedirectoryobjectid": ColumnType.UNIQUEIDENTIFIER,
                 "applicationid": ColumnType.UNIQUEIDENTIFIER, "isdisabled": B,
                 "accessmode": choice({0: "Read-Write", 1: "Administrative", 2: "Read", 3: "Support User",
                                        4: "Non-interactive", 5: "Delegated Admin"}),
                 "businessunitid": _lookup("businessunit")},
    )
    businessunit = define_table(
        "businessunit", "businessunits", primary_name="name", ownership="organization",
        columns={"parentbusinessunitid": _lookup("businessunit"), "divisionname": S},
    )
    asyncoperation = define_table(
        "asyncoperation", "asyncoperations", primary_name="name", ownership="organization",
        columns={
            "operationtype": choice({1: "System Event"}),
            "message": M, "friendlymessage": M, "messagename": S, "primaryentitytype": S,
            "correlationid": ColumnType.UNIQUEIDENTIFIER, "errorcode": I, "retrycount": I,
            "completedon": DT, "startedon": DT, "depth": I,
            "owningextensionid": _lookup("sdkmessageprocessingstep"),
            "regardingobjectid": _lookup("account", "contact", "product", "quote", "quotedetail", "salesorder",
                                         "salesorderdetail", "invoice", "invoicedetail"),
            "statecode": Column(name="statecode", type=ColumnType.OPTIONSET,
                                options={0: "Ready", 1: "Suspended", 2: "Locked", 3: "Completed"}),
            "statuscode": Column(name="statuscode", type=ColumnType.OPTIONSET,
                                 options={0: "Waiting For Resources", 10: "Waiting", 20: "In Progress",
                                          21: "Pausing", 22: "Canceling", 30: "Succeeded", 31: "Failed",
                                          32: "Canceled"}),
        },
    )
    return [account, contact, currency, systemuser, businessunit, asyncoperation, *sales_tables()]


def _addresses(*prefixes: str) -> dict[str, ColumnSpec]:
    return {f"{p}_{part}": S for p in prefixes
            for part in ("name", "line1", "line2", "line3", "city", "stateorprovince", "postalcode", "country")}


def _state(options: dict[int, str]) -> Column:
    return Column(name="statecode", type=ColumnType.OPTIONSET, options=options)


def _status(options: dict[int, str]) -> Column:
    return Column(name="statuscode", type=ColumnType.OPTIONSET, options=options)


#: The option value prefix of a solution publisher: a solution's own choice options are numbered from it
#: (Power Apps: "Choice value prefix", e.g. 10000 -> 100000000 + n). The P2C solution does not publish its
#: values, so an environment's may be anything; the sandbox gives them a publisher-style prefix [Inferred] so
#: that nothing can silently depend on small invented numbers (mappings name these options by label).
P2C_OPTION_VALUE_PREFIX = 192350000
#: P2C's processing status of a Sales order (reference 6.7; labels in the reference's order).
PROCESSING_STATUS_OPTIONS = {P2C_OPTION_VALUE_PREFIX + i: label for i, label in enumerate(
    ["Draft", "Active", "Confirmed", "Packing Slip", "Invoiced", "Picked", "Partially Picked", "Partially Packed",
     "Shipped", "Partially Shipped", "Partially Invoiced", "Cancelled"])}


def processing_status(label: str) -> int:
    """The sandbox's value of a P2C processing status option (tests and the demo write orders with it)."""
    return next(value for value, text in PROCESSING_STATUS_OPTIONS.items() if text == label)


def sales_tables() -> list[Table]:
    """The Sales tables the Prospect to cash flows touch. Their alternate keys (product number, quote/order/
    invoice number, line = parent + sequence number) are what the P2C templates match on; Dataverse has no
    such keys out of the box, so an environment must define them. [Inferred]"""
    customer = _lookup("account", "contact")
    money_totals: dict[str, ColumnSpec] = {"totalamount": MONEY, "totaltax": MONEY, "totaldiscountamount": MONEY,
                                           "discountamount": MONEY, "freightamount": MONEY,
                                           "totallineitemamount": MONEY}
    line: dict[str, ColumnSpec] = {
        "sequencenumber": I, "quantity": D, "priceperunit": MONEY, "manualdiscountamount": MONEY, "tax": MONEY,
        "extendedamount": MONEY, "baseamount": MONEY, "ispriceoverridden": B, "productdescription": S,
        "productid": _lookup("product"), "uomid": _lookup("uom"), "transactioncurrencyid": _lookup("transactioncurrency"),
        "exchangerate": D, "msdynce_ismaintainedexternally": B,
        # Write-in lines: isproductoverridden Yes, a productdescription and no product (Sales' "Write-In").
        "isproductoverridden": B, "description": M, **_addresses("shipto"),
        "producttypecode": choice({1: "Product", 2: "Bundle", 3: "Required Bundle Product",
                                   4: "Optional Bundle Product", 5: "Project-based Service"}),
        "propertyconfigurationstatus": choice({0: "Edit", 1: "Rectify", 2: "Not Configured"})}
    uomschedule = define_table("uomschedule", "uomschedules", primary_name="name", ownership="organization",
                               columns={"baseuomname": S})
    uom = define_table("uom", "uoms", primary_name="name", ownership="organization",
                       columns={"uomscheduleid": _lookup("uomschedule"), "quantity": D, "isschedulebaseuom": B})
    pricelevel = define_table("pricelevel", "pricelevels", primary_name="name", ownership="organization",
                              columns={"transactioncurrencyid": _lookup("transactioncurrency"), "description": M,
                                       "begindate": DT, "enddate": DT})
    # A product's price in a price list ("price list item"): one per (price list, product, unit). [Inferred] the
    # alternate key an integration upserts on (Dataverse refuses a second item for the same combination).
    productpricelevel = define_table(
        "productpricelevel", "productpricelevels", primary_name="productnumber", ownership="organization",
        alternate_keys=[["pricelevelid", "productid", "uomid"]],
        columns={"pricelevelid": _lookup("pricelevel"), "productid": _lookup("product"), "uomid": _lookup("uom"),
                 "uomscheduleid": _lookup("uomschedule"), "amount": MONEY, "percentage": D,
                 "transactioncurrencyid": _lookup("transactioncurrency"), "exchangerate": D,
                 "pricingmethodcode": choice({1: "Currency Amount", 2: "Percent of List", 3: "Percent Markup - Current Cost",
                                              4: "Percent Margin - Current Cost", 5: "Percent Markup - Standard Cost",
                                              6: "Percent Margin - Standard Cost"}),
                 "quantitysellingcode": choice({1: "No Control", 2: "Whole", 3: "Whole and Fractional"})})
    product = define_table(
        "product", "products", primary_name="name", ownership="organization", alternate_keys=[["productnumber"]],
        columns={"productnumber": S, "description": M, "price": MONEY, "currentcost": MONEY, "standardcost": MONEY,
                 "isstockitem": B, "quantitydecimal": I, "msdynce_ismaintainedexternally": B,
                 "producttypecode": choice({1: "Sales Inventory", 2: "Miscellaneous Charges", 3: "Services",
                                             4: "Flat Fees"}),
                 "defaultuomid": _lookup("uom"), "defaultuomscheduleid": _lookup("uomschedule"),
                 "pricelevelid": _lookup("pricelevel"), "transactioncurrencyid": _lookup("transactioncurrency"),
                 "exchangerate": D,
                 "statecode": _state({0: "Active", 1: "Retired", 2: "Draft", 3: "Under Revision"}),
                 "statuscode": _status({1: "Active", 2: "Retired", 0: "Draft", 3: "Under Revision"})})
    quote = define_table(
        # A revised quote keeps its number (ReviseQuote closes the old one and opens revision + 1), so the
        # number alone is no key: [Inferred] (quotenumber, revisionnumber).
        "quote", "quotes", primary_name="name", alternate_keys=[["quotenumber", "revisionnumber"]],
        columns={"quotenumber": S, "revisionnumber": I, "requestdeliveryby": DT, "expireson": DT,
                 "description": M, **money_totals, **_addresses("shipto", "billto"),
                 "customerid": customer, "pricelevelid": _lookup("pricelevel"),
                 "transactioncurrencyid": _lookup("transactioncurrency"), "exchangerate": D,
                 "msdynce_hasexternallymaintainedproductsonly": B,
                 "statecode": _state({0: "Draft", 1: "Active", 2: "Won", 3: "Closed"}),
                 "statuscode": _status({1: "In Progress", 2: "In Progress", 3: "Open", 4: "Won", 5: "Lost",
                                        6: "Canceled", 7: "Revised"})})
    quotedetail = define_table(
        "quotedetail", "quotedetails", primary_name="productdescription",
        alternate_keys=[["quoteid", "sequencenumber"]],
        columns={**line, "quoteid": _lookup("quote")})
    salesorder = define_table(
        "salesorder", "salesorders", primary_name="name", alternate_keys=[["ordernumber"]],
        columns={"ordernumber": S, "description": M, **money_totals, **_addresses("shipto", "billto"),
                 "customerid": customer, "pricelevelid": _lookup("pricelevel"), "quoteid": _lookup("quote"),
                 "transactioncurrencyid": _lookup("transactioncurrency"), "exchangerate": D,
                 "requestdeliveryby": DT, "datefulfilled": DT, "msdynce_ismaintainedexternally": B,
                 "msdynce_processingstatus": choice(PROCESSING_STATUS_OPTIONS),
                 "statecode": _state({0: "Active", 1: "Submitted", 2: "Canceled", 3: "Fulfilled", 4: "Invoiced"}),
                 "statuscode": _status({1: "New", 2: "Pending", 3: "In Progress", 4: "No Money", 100001: "Complete",
                                        100002: "Partial", 100003: "Invoiced"})})
    # Lines also have a key on the copy of their document number (msdynce_ordernumber / msdynce_invoicenumber,
    # which the P2C templates write): [Inferred] the key an integration upserts lines on in the same change set as
    # a new header, whose GUID it does not know yet.
    salesorderdetail = define_table(
        "salesorderdetail", "salesorderdetails", primary_name="productdescription",
        alternate_keys=[["salesorderid", "sequencenumber"], ["msdynce_ordernumber", "sequencenumber"]],
        columns={**line, "salesorderid": _lookup("salesorder"), "msdynce_ordernumber": S})
    invoice = define_table(
        "invoice", "invoices", primary_name="name", alternate_keys=[["invoicenumber"]],
        columns={"invoicenumber": S, "description": M, **money_totals, **_addresses("billto", "shipto"),
                 "customerid": customer, "pricelevelid": _lookup("pricelevel"), "salesorderid": _lookup("salesorder"),
                 "transactioncurrencyid": _lookup("transactioncurrency"), "exchangerate": D,
                 "msdynce_invoicedate": DT, "duedate": DT, "ispricelocked": B,
                 "statecode": _state({0: "Active", 1: "Closed (deprecated)", 2: "Paid", 3: "Canceled"}),
                 "statuscode": _status({1: "New", 2: "Partially Shipped", 4: "Billed", 5: "Booked",
                                        6: "Installed", 100001: "Complete", 100002: "Partial", 100003: "Canceled"})})
    invoicedetail = define_table(
        "invoicedetail", "invoicedetails", primary_name="productdescription",
        alternate_keys=[["invoiceid", "sequencenumber"], ["msdynce_invoicenumber", "sequencenumber"]],
        columns={**line, "invoiceid": _lookup("invoice"), "msdynce_invoicenumber": S})
    return [uomschedule, uom, pricelevel, productpricelevel, product, quote, quotedetail, salesorder, salesorderdetail, invoice,
            invoicedetail]


DEFAULT_UNIT_GROUP_ID = "d1e2f3a4-b5c6-4d7e-8f90-a1b2c3d4e501"
PRIMARY_UNIT_ID = "d1e2f3a4-b5c6-4d7e-8f90-a1b2c3d4e502"
EACH_UNIT_ID = "d1e2f3a4-b5c6-4d7e-8f90-a1b2c3d4e503"
USD_PRICE_LIST_ID = "d1e2f3a4-b5c6-4d7e-8f90-a1b2c3d4e504"
#: The P2C templates' defaults (reference 4.1 row 10, 6.3 row 26, 7.1 row 16): unit group "Default unit", price list
#: "CRM Service USA (sample)" for USD. Units: the group's base unit, as Dataverse creates it, and "Each" (the
#: Sales side of the mappings' unit value map, Each <-> ea).
DEFAULT_UNIT_GROUP, USD_PRICE_LIST = "Default Unit", "CRM Service USA (sample)"


def seed_rows() -> dict[str, list[dict[str, Any]]]:
    """Rows present after construction and after every reset (systemusers come from the user config)."""
    group = ("uomschedule", DEFAULT_UNIT_GROUP_ID)
    return {
        "uomschedule": [{"uomscheduleid": DEFAULT_UNIT_GROUP_ID, "name": DEFAULT_UNIT_GROUP,
                         "baseuomname": "Primary Unit"}],
        "uom": [{"uomid": PRIMARY_UNIT_ID, "name": "Primary Unit", "uomscheduleid": group, "quantity": 1,
                 "isschedulebaseuom": True},
                {"uomid": EACH_UNIT_ID, "name": "Each", "uomscheduleid": group, "quantity": 1,
                 "isschedulebaseuom": False}],
        "pricelevel": [{"pricelevelid": USD_PRICE_LIST_ID, "name": USD_PRICE_LIST,
                        "transactioncurrencyid": ("transactioncurrency", USD_CURRENCY_ID)}],
        "businessunit": [{"businessunitid": ROOT_BUSINESS_UNIT_ID, "name": ORGANIZATION_NAME}],
        "transactioncurrency": [
            {"transactioncurrencyid": USD_CURRENCY_ID, "currencyname": "US Dollar", "isocurrencycode": "USD",
             "currencysymbol": "$", "exchangerate": 1, "currencyprecision": 2},
            {"transactioncurrencyid": EUR_CURRENCY_ID, "currencyname": "Euro", "isocurrencycode": "EUR",
             "currencysymbol": "€", "exchangerate": 0.92, "currencyprecision": 2},
        ],
    }


class LookupValue(BaseModel, frozen=True):
    """A lookup's stored value: which table, which row."""

    table: str
    id: str


class DataverseUser(BaseModel):
    """A systemuser row plus the sandbox bearer token that authenticates as it."""

    id: str
    fullname: str
    token: str
    domainname: str
    aad_object_id: str
    application_id: str | None = None  # set for application users (client-credentials callers)
    business_unit_id: str = ROOT_BUSINESS_UNIT_ID
    can_bypass_business_logic: bool = False  # prvBypassCustomBusinessLogic
    #: The System Customizer privileges on serviceendpoint, sdkmessageprocessingstep(image): register webhooks.
    can_register_steps: bool = False

    def systemuser_row(self) -> dict[str, Any]:
        first, _, last = self.fullname.partition(" ")
        return {
            "systemuserid": self.id, "fullname": self.fullname, "firstname": first, "lastname": last or None,
            "domainname": self.domainname, "internalemailaddress": self.domainname,
            "azureactivedirectoryobjectid": self.aad_object_id, "applicationid": self.application_id,
            "isdisabled": False, "accessmode": 4 if self.application_id else 0,
            "businessunitid": LookupValue(table="businessunit", id=self.business_unit_id),
        }


class Organization(BaseModel):
    id: str = ORGANIZATION_ID
    name: str = ORGANIZATION_NAME
    domain: str = ORGANIZATION_DOMAIN


INTEGRATION_TOKEN = "sandbox-integration-user"
SALES_TOKEN = "sandbox-sales-user"


def default_users() -> list[DataverseUser]:
    return [
        DataverseUser(id=INTEGRATION_USER_ID, fullname="# p2c-sync integration", token=INTEGRATION_TOKEN,
                      domainname="p2csync-integration@sandbox.invalid",
                      aad_object_id="d4c3b2a1-0f9e-4d8c-b7a6-000000000001",
                      application_id="e5d4c3b2-a1f0-4e9d-8c7b-000000000001", can_bypass_business_logic=True,
                      can_register_steps=True),  # the sandbox's one app identity also deploys (`register`)
        DataverseUser(id=SALES_USER_ID, fullname="Sam Seller", token=SALES_TOKEN,
                      domainname="sam.seller@sandbox.invalid",
                      aad_object_id="d4c3b2a1-0f9e-4d8c-b7a6-000000000002"),
    ]

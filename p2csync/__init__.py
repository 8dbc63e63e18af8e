"""p2csync: the shared core of the prospect-to-cash sync (envelopes, connectors, ledger, queue, runtime, CLI)."""

__version__ = "0.1.0"

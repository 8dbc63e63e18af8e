"""Operator commands, apart from the runtime they observe and steer.

One module per command family, each a plain function over explicit objects (ledger, queue admin, transport)
that returns pydantic models: ``status``, ``trace``, ``deadletters``, ``send``, ``pause``. ``common`` holds
what they share (durations, flows of record keys, reason categories, the message classifier); ``context``
builds the objects from the settings for the CLI; ``commands`` is the thin CLI layer (argparse, rich tables,
``--json``) that p2csync/cli.py dispatches to.
"""

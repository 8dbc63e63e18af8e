"""placeholder"""

from __future__ import annotations

from bench.common import Figure


async def run() -> list[Figure]:
    return []

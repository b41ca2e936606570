"""``ivrs simulate``: simulation before go-live (SPEC §2), from a study file,
in a throwaway embedded database or in memory: nothing touches DATABASE_URL.

``randomization`` (ivrs/cli_simulate_randomization.py) and ``supply``
(ivrs/cli_simulate_supply.py) register themselves on this group.
"""

from __future__ import annotations

from ivrs.cli import main


@main.group()
def simulate() -> None:
    """Simulate a study before go-live: randomization quality, supply forecasting."""

"""``ivrs simulate``: simulation before go-live (SPEC §2), from a study file,
in a throwaway embedded database or in memory: nothing touches DATABASE_URL.

The commands live in ``ivrs/cli/simulate_randomization.py`` and
``ivrs/cli/simulate_supply.py`` and are imported only when one of them runs:
their engines pull in numpy, matplotlib's neighbours and the migrations,
which every other ``ivrs`` command (a phone call in the terminal, say) should
not wait for.
"""

from __future__ import annotations

import importlib

import click


COMMANDS = {
    "randomization": "ivrs.cli.simulate_randomization:randomization",
    "supply": "ivrs.cli.simulate_supply:supply",
}


class _LazyGroup(click.Group):
    """A group whose subcommands are imported when asked for (click's own
    "lazy loading subcommands" pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module, _, attribute = COMMANDS[name].partition(":")
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)


@click.group(cls=_LazyGroup)
def simulate() -> None:
    """Simulate a study before go-live: randomization quality, supply forecasting."""

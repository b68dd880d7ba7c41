"""The ``merchant-meta`` command: operator and merchant tools.

Each command group lives beside the code it drives and is imported only when it is
used, so ``merchant-meta status`` does not pay for torch or Flower imports it does not
need.

    merchant-meta certs init|merchant ...      TLS and merchant keys (server.certs)
    merchant-meta monitor RUN_DIR [--port P]   live dashboard (server.monitor)
    merchant-meta status RUN_DIR               terminal summary (server.monitor)
    merchant-meta adapt ... / recommend ...    a merchant's own model (client.tools)
    merchant-meta superlink / supernode ...    start Flower, TLS + auth (*.launch)
"""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="merchant-meta",
    help="Federated meta-learning recommender: operator and merchant tools.",
    no_args_is_help=True,
    add_completion=False,
)


# Without a callback, an app holding one command runs it as the app itself, and ``main``
# registers only the command asked for: "status" in "status RUN_DIR" would be RUN_DIR.
@app.callback()
def _root() -> None:
    """Federated meta-learning recommender: operator and merchant tools."""


# command group or command name -> (module, attribute holding a typer app or function)
_GROUPS: dict[str, tuple[str, str]] = {
    "certs": ("server.certs", "cli"),
}
_COMMANDS: dict[str, tuple[str, str]] = {
    "monitor": ("server.monitor", "monitor_command"),
    "status": ("server.monitor", "status_command"),
    "adapt": ("client.tools", "adapt_command"),
    "recommend": ("client.tools", "recommend_command"),
    "superlink": ("server.launch", "superlink_command"),
    "supernode": ("client.launch", "supernode_command"),
}


def _register(name: str) -> None:
    """Import only the command the user asked for."""
    if name in _GROUPS:
        module, attribute = _GROUPS[name]
        app.add_typer(getattr(importlib.import_module(module), attribute), name=name)
    elif name in _COMMANDS:
        module, attribute = _COMMANDS[name]
        app.command(name)(getattr(importlib.import_module(module), attribute))


def main() -> None:
    """Entry point of the ``merchant-meta`` console script."""
    requested = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    names = (
        [requested] if requested in {*_GROUPS, *_COMMANDS} else [*_GROUPS, *_COMMANDS]
    )
    for name in names:
        try:
            _register(name)
        except ImportError:
            # Listing every command must not fail because one optional group is absent.
            if name == requested:
                raise
    app()


if __name__ == "__main__":
    main()

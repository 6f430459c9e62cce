"""Sub-commands of `kubenetem`, one module each, registered in this order.

Each module defines `register(subparsers)`. Shared options and loading live
in `kubenetem.commands.common`.
"""

COMMANDS = [
    "get",
    "validate",
    "rules",
    "trace",
    "demo",
    "bench",
    "proxy",
    "routes",
    "simulate",
    "ingress",
]

"""CLI edge for `diffperf ...` commands of this area (registered by diffperf.cli)."""


def register(sub) -> None:
    """Add this area's subcommands to the `diffperf` parser (filled in as they land)."""

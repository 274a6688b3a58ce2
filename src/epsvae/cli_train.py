"""CLI subcommands for training, export and reconstruction (filled in by the training engine)."""


def add_parsers(sub, command) -> None:
    return None

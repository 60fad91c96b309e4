"""The exit codes of every `agent-tasks` command and the error that carries one.

0 done; 1 refused or not found; 2 bad usage or configuration; 3 the database
cannot be reached. A command raises `CliError` (or a subclass) with a message
a user can act on; `worker.cli.main` prints it as one line (or a JSON object
under `--json`) and exits with its code. Nothing else reaches a user.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

# the `code` of the JSON error object, per exit code
ERROR_CODES = {EXIT_REFUSED: "refused", EXIT_USAGE: "usage", EXIT_UNREACHABLE: "database_unreachable"}


class CliError(Exception):
    """A failure with its exit code and a one-line message that says what to do."""

    default_code = EXIT_REFUSED

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = self.default_code if code is None else code


def one_line(text: object) -> str:
    """Messages of libraries span lines (psycopg's do); an error a user reads is one line."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip()) or "unknown error"

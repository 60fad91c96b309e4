"""The `agent-tasks` command line."""

from __future__ import annotations

import sys

from worker import stack


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "stack":
        return stack.main(args[1:])
    print("usage: agent-tasks stack {up,down,status,reset}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

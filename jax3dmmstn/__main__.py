"""Command line: ``python -m jax3dmmstn COMMAND ...``.

Commands are looked up lazily so that one command's dependencies are not
imported by another.
"""

import importlib
import sys

_COMMANDS = {
    "verify": ("jax3dmmstn.matconvnet.verify", "Compare jax3dmmstn.matconvnet with a MatConvNet dump."),
    "fit": ("jax3dmmstn.fitting.cli", "Fit theta to 2D landmarks (the original's demo, fast)."),
    "predict": ("jax3dmmstn.fitting.cli", "Run a trained localiser on images."),
}


def _usage() -> str:
    lines = ["usage: python -m jax3dmmstn COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:8s} {doc}" for name, (_, doc) in _COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in _COMMANDS:
        print(f"unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(_COMMANDS[name][0])
    entry = getattr(module, "main" if name == "verify" else f"{name}_main")
    return int(entry(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

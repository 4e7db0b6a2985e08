"""Runs benchmark scripts: ``python -m bench.run [names...] [-- args for each script]``.

Without names, every ``bench/<name>.py`` that defines ``main(argv)`` runs in turn (each writes its own result
files under bench/results/). Arguments after ``--`` are passed to every script.
"""

from __future__ import annotations

import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SKIP = {"common", "run", "__init__"}


def available() -> list[str]:
    return sorted(f[:-3] for f in os.listdir(HERE) if f.endswith(".py") and f[:-3] not in SKIP)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    names = argv[:argv.index("--")] if "--" in argv else argv
    known = available()
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"names: unknown benchmark(s) {unknown}; available: {', '.join(known)}")
        return 2
    if HERE not in sys.path:
        sys.path.insert(0, HERE)  # the scripts import their helpers as `common`
    status = 0
    for name in names or known:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(HERE, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not hasattr(module, "main"):
            continue
        print(f"== {name}")
        status = max(status, int(module.main(extra) or 0))
    return status


if __name__ == "__main__":
    sys.exit(main())

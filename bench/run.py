"""Runs benchmark scripts: ``python -m bench.run [names...] [-- args for each script]``.

Without names, every ``bench/<name>.py`` that defines ``main`` runs in turn (each writes its own result files
under bench/results/). Arguments after ``--`` go to the scripts whose ``main`` takes an argument list.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SKIP = {"common", "run", "__init__"}


def available() -> list[str]:
    # "_"-prefixed modules are a script's parts, not scripts
    return sorted(f[:-3] for f in os.listdir(HERE) if f.endswith(".py") and f[:-3] not in SKIP
                  and not f.startswith("_"))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    names = argv[:argv.index("--")] if "--" in argv else argv
    known = available()
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"names: unknown benchmark(s) {unknown}; available: {', '.join(known)}")
        return 2
    for path in (HERE, os.path.dirname(HERE)):  # scripts import `bench.common` or their siblings directly
        if path not in sys.path:
            sys.path.insert(0, path)
    status = 0
    for name in names or known:
        module = importlib.import_module(f"bench.{name}")
        if not hasattr(module, "main"):
            continue
        print(f"== {name}", flush=True)
        takes_args = len(inspect.signature(module.main).parameters) > 0
        try:
            rc = module.main(extra) if takes_args else module.main()
        except SystemExit as e:  # scripts exit 0 when there is no CUDA device
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        status = max(status, int(rc or 0))
    return status


if __name__ == "__main__":
    sys.exit(main())

"""One scenario in a fresh interpreter: ``python -m compat._child FLAVOR SCENARIO WORKDIR [ARGS]``.

``FLAVOR`` is ``official`` or ``tinker_async``, ``ARGS`` a JSON object for the scenario.
The server comes from ``TINKER_BASE_URL`` / ``TINKER_API_KEY``. The last line on stdout is
``COMPAT_RESULT {json}``: the scenario's facts plus which modules were used; an exception
is printed as a traceback and exits 1 (the test shows it).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    flavor, name, workdir = argv[0], argv[1], Path(argv[2])
    args = json.loads(argv[3]) if len(argv) > 3 else {}
    workdir.mkdir(parents=True, exist_ok=True)

    from ._setup import module_report, prepare

    prepare(flavor)
    from .scenarios import SCENARIOS

    started = time.perf_counter()
    result = SCENARIOS[name](workdir, args)
    result["wall_s"] = time.perf_counter() - started
    result.update(module_report())
    sys.stdout.flush()
    print("COMPAT_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

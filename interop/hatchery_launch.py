"""Start hatchery-core's local dev server (scripted worker) bound to 127.0.0.1.

``python -m hatchery.core.local_dev`` hard-codes ``host="0.0.0.0"``; the harness only
listens on loopback, so this wraps ``uvicorn.Config`` to force the host and then runs the
package's own ``main()`` unchanged. Settings come from the ``HATCHERY_DEV_*`` variables.
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn

_Config = uvicorn.Config


class _LoopbackConfig(_Config):  # type: ignore[misc,valid-type]
    def __init__(self, app: Any, **kwargs: Any) -> None:
        kwargs["host"] = "127.0.0.1"
        super().__init__(app, **kwargs)


uvicorn.Config = _LoopbackConfig  # type: ignore[misc]

from hatchery.core.local_dev import main  # noqa: E402

sys.exit(main())

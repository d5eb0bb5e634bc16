"""What a scenario's interpreter does before it imports the cookbook.

- ``tinker_async``: ``install_as_tinker()``, so the cookbook's ``import tinker`` gets
  tinker_async; ``official``: nothing, ``import tinker`` is the official SDK.
- The embedded server's model ``local/byte-lm`` is tokenized by
  ``tinker_async.local._tokenizer.ByteTokenizer`` (UTF-8 bytes plus seven special tokens).
  It is registered with the cookbook's own hook, ``tokenizer_utils.register_tokenizer``,
  so ``get_tokenizer("local/byte-lm")`` never goes to Hugging Face. The renderer is the
  cookbook's built-in ``role_colon`` (``User: ...\\n\\nAssistant: ...``): it only calls
  ``tokenizer.encode(text, add_special_tokens=False)``, ``decode`` and ``bos_token`` /
  ``eos_token_id``, which the byte tokenizer has, so no renderer is registered.
- No network but 127.0.0.1: the cookbook's cost tracker downloads a pricing file from
  the internet on first use (``utils.cost_estimation.load_model_pricing``); it is marked as
  already fetched (with no entries, as after a failed download, which the cookbook
  handles by logging token counts only). The Hugging Face libraries are set offline by the
  test harness's environment.

Nothing of ``tml_renderers`` is imported on these paths (it is imported lazily, for the
Inkling and Kimi K3.1 models only), so no stand-in for it is needed; the scenarios report
``sys.modules`` so the tests can check that stays true.
"""

from __future__ import annotations

import sys
from typing import Any

MODEL = "local/byte-lm"
RENDERER = "role_colon"
FLAVORS = ("official", "tinker_async")


def prepare(flavor: str) -> Any:
    """Set up this interpreter for ``flavor``; returns the ``tinker`` module the cookbook sees."""
    if flavor not in FLAVORS:
        raise ValueError(f"unknown flavor {flavor!r}; expected one of {FLAVORS}")
    if flavor == "tinker_async":
        import tinker_async

        tinker_async.install_as_tinker()
    import tinker
    from tinker_cookbook.tokenizer_utils import register_tokenizer
    from tinker_cookbook.utils import cost_estimation

    from tinker_async.local._tokenizer import ByteTokenizer

    register_tokenizer(MODEL, ByteTokenizer)
    # Why: the first fetch_model_pricing() would download a file from the internet.
    cost_estimation._pricing_fetched = True
    cost_estimation._pricing_entries = None
    return tinker


def module_report() -> dict[str, Any]:
    """Which ``tinker`` the process ran with, and whether optional heavy modules were used."""
    tinker = sys.modules.get("tinker")
    return {
        "tinker_file": getattr(tinker, "__file__", None),
        "tml_renderers_imported": any(
            m == "tml_renderers" or m.startswith("tml_renderers.") for m in sys.modules),
        "tiktoken_imported": "tiktoken" in sys.modules,
    }

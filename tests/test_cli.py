"""The ``tinker-async`` command line, against the embedded server."""

from __future__ import annotations

import json

import pytest

from tinker_async.cli import main
from tinker_async.local import LocalServer


def test_cli_lists_runs_and_checkpoints(fresh_server: LocalServer, api_key: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    run = fresh_server.seed_training_run(base_model="local/byte-lm", lora_rank=4)
    path = fresh_server.seed_checkpoint(run, "c1")
    common = ["--base-url", fresh_server.url, "--api-key", api_key]
    assert main([*common, "health"]) == 0
    assert main([*common, "--json", "runs", "--limit", "0"]) == 0
    assert main([*common, "checkpoints", run]) == 0
    assert main([*common, "--json", "models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "healthy"
    assert run in {r["id"] for r in json.loads(out[1])}
    assert any(path in line for line in out)
    assert {"model": "local/byte-lm"} in json.loads(out[-1])


def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--base-url", "http://127.0.0.1:9", "--api-key", "tml-x", "runs"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert main(["--base-url", "not a url", "--api-key", "k", "models"]) == 1

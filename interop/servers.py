"""The third-party Tinker-compatible servers the harness runs, and how to install and start each.

Each server gets a venv of its own under ``.interop/venvs/NAME``. What goes into it is the
``install`` list (pip argument lists, run in order); its hash is the venv's stamp, so a
venv is rebuilt only when this list (or the Python version) changes.

Install facts (checked against the packages' metadata and source):

- tuft 0.2.2 declares vllm, ray and torch==2.11.0 (GPU builds). With ``TUFT_CPU_TEST=1`` it
  runs numpy stand-ins for training and sampling and needs none of them, so it goes in
  with ``--no-deps`` followed by the dependencies it imports. ``torch==2.13.0`` is the CPU
  wheel lying on this machine's disk for Python 3.11 (an unpinned torch would pull a
  multi-GB CUDA build). ``tinker<0.26`` is tuft's own pin: the server speaks 0.25's
  request models, which forbid fields 0.38 added.
- skyrl 0.4.0 (the skyrl-tx Tinker server) needs Python >= 3.12. Its jax backend imports
  peft, which imports torch; PyPI has only CUDA builds of torch for 3.12, so this venv is
  the big one (several GB). ``uv`` is there because the API server starts its engine with
  ``uv run``; see ``_skyrl_launch`` below.
- hatchery-core 0.3.0 needs Python >= 3.12 and declares torch==2.10, transformers and peft
  for its GPU worker. Without a GPU its local dev server runs a scripted worker (an API
  stand-in) that imports none of them, so it goes in with ``--no-deps`` plus the web
  stack it imports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

API_KEY = "tml-interop-key"  # official SDK keys must start with tml-; skyrl checks none


@dataclass(frozen=True)
class Launch:
    """How to start one server: command, extra environment, where to ask if it is up."""

    argv: list[str]
    env: dict[str, str]
    health_path: str


@dataclass(frozen=True)
class ServerSpec:
    """One server: its package, venv recipe, start command and time limits."""

    name: str
    package: str
    python: str  # "3.11", "3.12"
    install: list[list[str]]
    launch: Callable[[Path, Path, int, Path], Launch]  # (venv, model_dir, port, workdir)
    start_timeout: float = 240.0
    # Seconds a scenario may take against this server, all steps together.
    scenario_timeout: float = 900.0
    # Seconds each call may take (the first jit compile on CPU can be slow).
    call_timeout: float = 240.0


_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _tuft_launch(venv: Path, model: Path, port: int, work: Path) -> Launch:
    config = work / "tuft_config.yaml"
    # JSON is YAML: no yaml writer needed here.
    config.write_text(json.dumps({
        "checkpoint_dir": str(work / "checkpoints"),
        "authorized_users": {API_KEY: "interop-user"},
        "supported_models": [{
            "model_name": str(model),
            "model_path": str(model),
            "max_model_len": 512,
        }],
    }, indent=2))
    return Launch(
        argv=[str(venv / "bin" / "tuft"), "launch", "--host", "127.0.0.1", "--port", str(port),
              "--config", str(config)],
        env={**_OFFLINE, "TUFT_CPU_TEST": "1", "TUFT_HOME": str(work / "tuft_home")},
        health_path="/api/v1/healthz",
    )


def _skyrl_launch(venv: Path, model: Path, port: int, work: Path) -> Launch:
    # skyrl.tinker.api reads its parent's command line, expects `uv run <flags> python -m
    # skyrl.tinker.api ...`, and starts its engine as `uv run <flags> --extra tinker --extra
    # jax -m skyrl.tinker.engine ...`. So it is started through the real uv (installed in
    # its venv): --no-project and --python make uv run that venv's interpreter as it is,
    # with no project, no sync and no download; the same flags reach the engine.
    uv = venv / "bin" / "uv"
    python = venv / "bin" / "python"
    argv = [str(uv), "run", "--no-project", "--offline", "--python", str(python),
            "python", "-m", "skyrl.tinker.api",
            "--host", "127.0.0.1", "--port", str(port),
            "--base-model", str(model), "--backend", "jax",
            "--backend-config", json.dumps({"max_lora_adapters": 8, "max_lora_rank": 16}),
            "--checkpoints-base", str(work / "checkpoints"),
            "--database-url", f"sqlite:///{work / 'skyrl.db'}"]
    env = {**_OFFLINE, "JAX_PLATFORMS": "cpu", "UV_CACHE_DIR": str(work / "uv-cache"),
           "UV_NO_SYNC": "1", "UV_PYTHON_DOWNLOADS": "never",
           "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    return Launch(argv=argv, env=env, health_path="/api/v1/healthz")


TUFT = ServerSpec(
    name="tuft",
    package="tuft==0.2.2",
    python="3.11",
    install=[
        ["--no-deps", "tuft==0.2.2"],
        ["torch==2.13.0", "fastapi>=0.133,<0.137", "uvicorn[standard]>=0.38",
         "transformers>=5.5.3,<6", "peft==0.20.0", "accelerate>=1.0", "omegaconf>=2.3",
         "typer>=0.20.1", "protobuf>=4.21", "psutil>=5.9", "httpx>=0.28.1", "numpy>=2",
         "nvidia-ml-py>=13", "opentelemetry-api>=1.20", "opentelemetry-sdk>=1.20",
         "opentelemetry-exporter-otlp>=1.20", "opentelemetry-instrumentation-fastapi>=0.41b0",
         "opentelemetry-instrumentation-logging>=0.41b0", "tinker>=0.25,<0.26"],
    ],
    launch=_tuft_launch,
    start_timeout=180.0,
    call_timeout=120.0,
)

SKYRL = ServerSpec(
    name="skyrl",
    package="skyrl[tinker,jax]==0.4.0",
    python="3.12",
    # aiohttp: skyrl.tinker.api imports it (tinker/extra) but skyrl 0.4.0 does not declare it.
    install=[["skyrl[tinker,jax]==0.4.0", "uv", "aiohttp"]],
    launch=_skyrl_launch,
    start_timeout=300.0,
    scenario_timeout=1500.0,
    call_timeout=300.0,
)

def _hatchery_launch(venv: Path, model: Path, port: int, work: Path) -> Launch:
    launcher = Path(__file__).resolve().parent / "hatchery_launch.py"
    return Launch(
        argv=[str(venv / "bin" / "python"), str(launcher)],
        env={**_OFFLINE, "HATCHERY_DEV_NO_GPU": "1", "HATCHERY_DEV_PORT": str(port),
             "HATCHERY_DEV_API_KEY": API_KEY, "HATCHERY_DEV_BASE_MODEL": str(model),
             "HATCHERY_LOCAL_STORE_PATH": str(work / "store")},
        health_path="/api/v1/healthz",
    )


HATCHERY = ServerSpec(
    name="hatchery",
    package="hatchery-core==0.3.0",
    python="3.12",
    install=[
        ["--no-deps", "hatchery-core==0.3.0"],
        ["hatchery-client>=0.2.0", "fastapi>=0.110", "uvicorn[standard]>=0.27",
         "pydantic>=2.6", "msgpack>=1.0", "aiosqlite>=0.19", "structlog>=24.1",
         "httpx>=0.27"],
    ],
    launch=_hatchery_launch,
    start_timeout=120.0,
    # Its scripted worker leaves some futures unanswered: the official SDK waits each one out.
    call_timeout=15.0,
)

SERVERS: dict[str, ServerSpec] = {s.name: s for s in (TUFT, SKYRL, HATCHERY)}


def find_python(version: str) -> str | None:
    """An interpreter of ``version`` ("3.12"): $INTEROP_PYTHON3_12, PATH, then pyenv.

    Each candidate is run once: a pyenv shim is on PATH even when that version is not
    active, and then it only prints an error.
    """
    candidates: list[str] = []
    env = os.environ.get("INTEROP_PYTHON" + version.replace(".", "_"))
    if env:
        candidates.append(env)
    found = shutil.which(f"python{version}")
    if found:
        candidates.append(found)
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for candidate in sorted(pyenv.glob(f"{version}.*"), reverse=True):
        candidates.append(str(candidate / "bin" / f"python{version}"))
    for exe in candidates:
        try:
            out = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return exe
    return None

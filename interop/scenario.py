"""The interop scenario: one end-to-end run of ordinary SDK user code against one server.

    python scenario.py --client tinker_async --base-url URL --api-key KEY --base-model NAME

``--client`` names the module to import as ``tinker`` (``tinker_async`` or ``tinker``, the
official SDK 0.38): the code below is the same for both, written the way SDK users write
it (plain methods, ``.result(timeout)`` on the futures they return). Every step prints one
line ``INTEROP_STEP {json}`` as soon as it ends, so a run that is killed part-way still
reports what it did. A step is ``ok``, ``error`` (exception class name and the first line
of its message) or ``skipped`` (an earlier step it needs failed).

Steps marked ``expect_error`` pass when the call raises a typed error (a subclass of the
client's ``TinkerError`` other than the base classes), and fail when it succeeds.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

STEP_PREFIX = "INTEROP_STEP "


class Scenario:
    """Runs steps in order, keeps what they produce, prints one line per step."""

    def __init__(self, tinker: Any, api_key: str, timeout: float) -> None:
        self.tinker = tinker
        self.api_key = api_key
        self.timeout = timeout
        self.state: dict[str, Any] = {}
        self.failed = 0

    def value(self, x: Any) -> Any:
        """The value of ``x``: ``.result(timeout)`` on an APIFuture, ``x`` itself otherwise."""
        if isinstance(x, self.tinker.APIFuture):
            return x.result(timeout=self.timeout)
        return x

    def step(self, name: str, fn: Callable[[], Any], needs: tuple[str, ...] = (),
             expect_error: bool = False) -> None:
        """Run ``fn`` unless a value it ``needs`` is missing; report the outcome."""
        missing = [n for n in needs if n not in self.state]
        record: dict[str, Any] = {"step": name}
        started = time.perf_counter()
        if missing:
            record.update(status="skipped", error="", message=f"needs {', '.join(missing)}")
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # deprecations are not the subject here
                    detail = fn()
            except Exception as exc:
                if expect_error and self._typed(exc):
                    record.update(status="ok", error=type(exc).__name__,
                                  message=self._first_line(exc))
                else:
                    record.update(status="error", error=type(exc).__name__,
                                  message=self._first_line(exc),
                                  trace=self._scrub(traceback.format_exc(limit=6)))
            else:
                if expect_error:
                    record.update(status="error", error="DidNotRaise",
                                  message=f"expected a typed error, got {detail!r}"[:160])
                else:
                    record.update(status="ok", error="", message=str(detail or "")[:160])
        record["seconds"] = round(time.perf_counter() - started, 3)
        if record["status"] != "ok":
            self.failed += 1
        print(STEP_PREFIX + json.dumps(record), flush=True)

    def _typed(self, exc: Exception) -> bool:
        base = {"TinkerError", "APIError", "APIStatusError"}
        return isinstance(exc, self.tinker.TinkerError) and type(exc).__name__ not in base

    def _scrub(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text

    def _first_line(self, exc: Exception) -> str:
        lines = str(exc).strip().splitlines()
        return self._scrub(lines[0] if lines else "")[:200]


def handle_fields(handle: str) -> dict[str, Any]:
    """The documented content of a sampler handle (URL-safe base64 of JSON)."""
    fields: dict[str, Any] = json.loads(base64.urlsafe_b64decode(handle.encode()))
    return fields


def run(tinker: Any, base_url: str, api_key: str, base_model: str, timeout: float) -> int:
    """The scenario itself. Returns the number of steps that did not pass."""
    s = Scenario(tinker, api_key, timeout)
    st = s.state
    v = s.value
    types = tinker.types
    fallback_tokens = [11, 42, 7, 99, 5, 23, 64, 3, 17, 88]

    def tokens() -> list[int]:
        if "tokenizer" in st:
            return list(st["tokenizer"].encode("Hello world. The cat sat on the mat."))
        return fallback_tokens

    def datum() -> Any:
        toks = tokens()
        target = np.array(toks[1:], dtype=np.int64)
        return types.Datum(
            model_input=types.ModelInput.from_ints(toks[:-1]),
            loss_fn_inputs={"target_tokens": types.TensorData.from_numpy(target),
                            "weights": types.TensorData.from_numpy(
                                np.ones(len(target), dtype=np.float32))},
        )

    def prompt() -> Any:
        return types.ModelInput.from_ints(tokens()[:5])

    # -- service and training -------------------------------------------------------------
    def service() -> str:
        st["service"] = tinker.ServiceClient(base_url=base_url, api_key=api_key)
        return type(st["service"]).__module__

    def capabilities() -> str:
        caps = v(st["service"].get_server_capabilities())
        names = [m.model_name for m in caps.supported_models]
        if base_model not in names:
            raise AssertionError(f"{base_model} not in supported_models {names}")
        return f"{len(names)} model(s)"

    def create_lora() -> str:
        st["training"] = v(st["service"].create_lora_training_client(base_model, rank=8))
        return ""

    def get_info() -> str:
        info = st["training"].get_info()
        st["model_id"] = info.model_id if getattr(info, "model_id", None) else \
            st["training"].model_id
        return f"model_id={st['model_id']}"

    def get_tokenizer() -> str:
        tok = st["training"].get_tokenizer()
        ids = list(tok.encode("Hello world"))
        if not ids:
            raise AssertionError("tokenizer gave no ids")
        st["tokenizer"] = tok
        return f"{len(ids)} ids"

    def forward() -> str:
        out = v(st["training"].forward([datum()], "cross_entropy"))
        lp = out.loss_fn_outputs[0]["logprobs"]
        return f"{len(lp.tolist())} logprobs"

    def forward_backward() -> str:
        out = v(st["training"].forward_backward([datum()], "cross_entropy"))
        return ", ".join(f"{k}={val:.4g}" for k, val in sorted(out.metrics.items())[:2])

    def optim_step() -> str:
        v(st["training"].optim_step(types.AdamParams(learning_rate=1e-3)))
        return ""

    def save_state() -> str:
        st["state_path"] = v(st["training"].save_state("interop-state")).path
        return str(st["state_path"])

    def save_for_sampler() -> str:
        st["sampler_path"] = v(st["training"].save_weights_for_sampler("interop-sampler")).path
        return str(st["sampler_path"])

    def load_state() -> str:
        v(st["training"].load_state(st["state_path"]))
        return ""

    def load_state_opt() -> str:
        v(st["training"].load_state_with_optimizer(st["state_path"]))
        return ""

    def from_state() -> str:
        tc = v(st["service"].create_training_client_from_state(st["state_path"]))
        st["restored"] = tc
        return f"model_id={tc.model_id}"

    def from_state_opt() -> str:
        tc = v(st["service"].create_training_client_from_state_with_optimizer(st["state_path"]))
        st["restored_opt"] = tc
        return f"model_id={tc.model_id}"

    def restored_fb() -> str:
        out = v(st["restored_opt"].forward_backward([datum()], "cross_entropy"))
        v(st["restored_opt"].optim_step(types.AdamParams(learning_rate=1e-3)))
        return f"{len(out.loss_fn_outputs)} output(s)"

    # -- sampling --------------------------------------------------------------------------
    def save_and_sample_client() -> str:
        st["sampler"] = v(st["training"].save_weights_and_get_sampling_client())
        return ""

    def sample() -> str:
        resp = v(st["sampler"].sample(prompt(), num_samples=2, sampling_params=types.SamplingParams(
            max_tokens=6, temperature=1.0, seed=7)))
        lens = [len(seq.tokens) for seq in resp.sequences]
        if len(lens) != 2:
            raise AssertionError(f"asked for 2 sequences, got {len(lens)}")
        return f"lengths {lens}"

    def sample_prompt_logprobs() -> str:
        resp = v(st["sampler"].sample(prompt(), num_samples=1, sampling_params=types.SamplingParams(
            max_tokens=3, temperature=0.0), include_prompt_logprobs=True))
        if resp.prompt_logprobs is None:
            raise AssertionError("no prompt_logprobs in the answer")
        return f"{len(resp.prompt_logprobs)} prompt logprobs"

    def compute_logprobs() -> str:
        lps = v(st["sampler"].compute_logprobs(prompt()))
        return f"{len(lps)} logprobs"

    def sampler_from_path() -> str:
        st["path_sampler"] = v(st["service"].create_sampling_client(model_path=st["sampler_path"]))
        return ""

    def sample_from_path() -> str:
        resp = v(st["path_sampler"].sample(prompt(), num_samples=1,
                                           sampling_params=types.SamplingParams(max_tokens=4)))
        return f"{len(resp.sequences[0].tokens)} tokens"

    def sampler_from_base() -> str:
        sc = v(st["service"].create_sampling_client(base_model=base_model))
        resp = v(sc.sample(prompt(), num_samples=1,
                           sampling_params=types.SamplingParams(max_tokens=4)))
        return f"{len(resp.sequences[0].tokens)} tokens"

    def sampler_handle() -> str:
        handle = st["sampler"].get_sampler_handle()
        fields = handle_fields(handle)
        st["session_id"] = fields["session_id"]
        st["sampling_session_id"] = fields["sampling_session_id"]
        sc = tinker.SamplingClient.from_sampler_handle(handle, api_key=api_key)
        resp = v(sc.sample(prompt(), num_samples=1,
                           sampling_params=types.SamplingParams(max_tokens=4)))
        return f"{len(resp.sequences[0].tokens)} tokens"

    # -- REST ------------------------------------------------------------------------------
    def rest() -> str:
        st["rest"] = tinker.RestClient(base_url=base_url, api_key=api_key)
        return ""

    def rest_capabilities() -> str:
        caps = v(st["rest"].get_server_capabilities())
        return f"{len(caps.supported_models)} model(s)"

    def list_runs() -> str:
        runs = v(st["rest"].list_training_runs(limit=50))
        ids = [r.training_run_id for r in runs.training_runs]
        if st.get("model_id") and st["model_id"] not in ids:
            raise AssertionError(f"{st['model_id']} not among {len(ids)} runs")
        return f"{len(ids)} run(s)"

    def get_run() -> str:
        run_ = v(st["rest"].get_training_run(st["model_id"]))
        return f"base_model={run_.base_model}"

    def get_run_by_path() -> str:
        run_ = v(st["rest"].get_training_run_by_tinker_path(st["state_path"]))
        return str(run_.training_run_id)

    def list_ckpts() -> str:
        resp = v(st["rest"].list_checkpoints(st["model_id"]))
        paths = [c.tinker_path for c in resp.checkpoints]
        if st["state_path"] not in paths:
            raise AssertionError(f"{st['state_path']} not among {paths}")
        return f"{len(paths)} checkpoint(s)"

    def list_user_ckpts() -> str:
        resp = v(st["rest"].list_user_checkpoints(limit=100))
        return f"{len(resp.checkpoints)} checkpoint(s)"

    def weights_info() -> str:
        info = v(st["rest"].get_weights_info_by_tinker_path(st["state_path"]))
        return f"base_model={info.base_model}"

    def publish() -> str:
        v(st["rest"].publish_checkpoint_from_tinker_path(st["sampler_path"]))
        return ""

    def unpublish() -> str:
        v(st["rest"].unpublish_checkpoint_from_tinker_path(st["sampler_path"]))
        return ""

    def set_ttl() -> str:
        v(st["rest"].set_checkpoint_ttl_from_tinker_path(st["sampler_path"], 3600))
        return ""

    def list_sessions() -> str:
        resp = v(st["rest"].list_sessions(limit=50))
        return f"{len(resp.sessions)} session(s)"

    def get_session() -> str:
        resp = v(st["rest"].get_session(st["session_id"]))
        return f"{len(resp.training_run_ids)} run(s)"

    def get_sampler() -> str:
        resp = v(st["rest"].get_sampler(st["sampling_session_id"]))
        return f"base_model={resp.base_model}"

    def delete_ckpt() -> str:
        v(st["rest"].delete_checkpoint_from_tinker_path(st["state_path"]))
        st["deleted_path"] = st.pop("state_path")
        return ""

    def load_deleted() -> Any:
        return v(st["service"].create_training_client_from_state(st["deleted_path"]))

    def close() -> str:
        v(st["service"].close("success"))
        return ""

    s.step("ServiceClient()", service)
    s.step("get_server_capabilities", capabilities, ("service",))
    s.step("create_lora_training_client", create_lora, ("service",))
    s.step("get_info", get_info, ("training",))
    s.step("get_tokenizer", get_tokenizer, ("training",))
    s.step("forward", forward, ("training",))
    s.step("forward_backward", forward_backward, ("training",))
    s.step("optim_step", optim_step, ("training",))
    s.step("save_state", save_state, ("training",))
    s.step("save_weights_for_sampler", save_for_sampler, ("training",))
    s.step("load_state", load_state, ("training", "state_path"))
    s.step("load_state_with_optimizer", load_state_opt, ("training", "state_path"))
    s.step("create_training_client_from_state", from_state, ("service", "state_path"))
    s.step("..._from_state_with_optimizer", from_state_opt, ("service", "state_path"))
    s.step("restored: forward_backward+optim_step", restored_fb, ("restored_opt",))
    s.step("save_weights_and_get_sampling_client", save_and_sample_client, ("training",))
    s.step("sample", sample, ("sampler",))
    s.step("sample(include_prompt_logprobs)", sample_prompt_logprobs, ("sampler",))
    s.step("compute_logprobs", compute_logprobs, ("sampler",))
    s.step("create_sampling_client(model_path)", sampler_from_path, ("service", "sampler_path"))
    s.step("sample (model_path client)", sample_from_path, ("path_sampler",))
    s.step("create_sampling_client(base_model)+sample", sampler_from_base, ("service",))
    s.step("from_sampler_handle+sample", sampler_handle, ("sampler",))
    s.step("RestClient()", rest)
    s.step("rest.get_server_capabilities", rest_capabilities, ("rest",))
    s.step("list_training_runs", list_runs, ("rest",))
    s.step("get_training_run", get_run, ("rest", "model_id"))
    s.step("get_training_run_by_tinker_path", get_run_by_path, ("rest", "state_path"))
    s.step("list_checkpoints", list_ckpts, ("rest", "model_id", "state_path"))
    s.step("list_user_checkpoints", list_user_ckpts, ("rest",))
    s.step("get_weights_info_by_tinker_path", weights_info, ("rest", "state_path"))
    s.step("publish_checkpoint", publish, ("rest", "sampler_path"))
    s.step("unpublish_checkpoint", unpublish, ("rest", "sampler_path"))
    s.step("set_checkpoint_ttl", set_ttl, ("rest", "sampler_path"))
    s.step("list_sessions", list_sessions, ("rest",))
    s.step("get_session", get_session, ("rest", "session_id"))
    s.step("get_sampler", get_sampler, ("rest", "sampling_session_id"))
    s.step("delete_checkpoint", delete_ckpt, ("rest", "state_path"))
    s.step("load deleted checkpoint -> typed error", load_deleted, ("service", "deleted_path"),
           expect_error=True)
    s.step("close", close, ("service",))
    return s.failed


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--client", required=True, help="module to use as tinker")
    p.add_argument("--base-url", required=True)
    p.add_argument("--api-key", required=True)
    p.add_argument("--base-model", required=True)
    p.add_argument("--timeout", type=float, default=180.0, help="seconds per call")
    a = p.parse_args(argv)
    tinker = importlib.import_module(a.client)
    failed = run(tinker, a.base_url, a.api_key, a.base_model, a.timeout)
    print(f"INTEROP_DONE {json.dumps({'failed': failed})}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The supervised fine-tuning of ``sl_loop.py``, written with the sync forms only.

This is how a script or notebook user writes it: no ``async``/``await``, the plain
methods (``forward_backward``, ``optim_step``, ``sample``...) each return an
``APIFuture`` at once, and ``.result()`` waits for it. The calls are still pipelined:
``optim_step`` is submitted before the ``forward_backward`` result is read, so the server
does both back to back. The client's event loop runs in a background thread the library
starts on first use; the embedded server runs in another one (``LocalServer().in_thread()``),
so blocking calls here cannot stall it.

Runs against the embedded server (no account needed), or any Tinker-compatible server in
``TINKER_BASE_URL`` with ``TINKER_API_KEY`` (and ``TINKER_BASE_MODEL``)::

    python examples/sync_script.py
    python examples/sync_script.py --steps 30 --batch-size 8
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SFT_TEXT, checked_sft_arguments, server_target_sync, sft_arguments

import tinker_async as tinker

PROMPT = "Alice was beginning to get"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return checked_sft_arguments(sft_arguments(__doc__.split("\n\n")[0]), argv)


def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    # server_target_sync() starts `LocalServer().in_thread()` unless TINKER_BASE_URL is set.
    with server_target_sync() as target, tinker.ServiceClient(
        base_url=target.base_url, api_key=target.api_key, user_metadata={"example": "sync"}
    ) as service:
        training = service.create_lora_training_client(
            target.base_model, rank=args.rank, seed=args.seed).result()
        tokenizer = training.get_tokenizer()
        tokens = tokenizer.encode(SFT_TEXT)
        window = min(args.window, len(tokens) - 1)
        print(f"text: {len(tokens)} tokens; {args.steps} steps x {args.batch_size} windows x "
              f"{window} tokens; lr {args.lr}, LoRA rank {args.rank}")

        started = time.perf_counter()
        losses = []
        for step in range(args.steps):
            batch = []
            for _ in range(args.batch_size):
                start = rng.randrange(0, len(tokens) - window)
                chunk = tokens[start : start + window + 1]
                batch.append(tinker.Datum(
                    model_input=tinker.ModelInput.from_ints(chunk[:-1]),
                    loss_fn_inputs={"target_tokens": chunk[1:], "weights": [1.0] * window},
                ))
            fb = training.forward_backward(batch, "cross_entropy")
            opt = training.optim_step(tinker.AdamParams(learning_rate=args.lr))
            loss = fb.result().metrics["loss:sum"] / (args.batch_size * window)
            opt.result()
            losses.append(loss)
            print(f"step {step:3d}  loss {loss:.3f} nats/token  "
                  f"{time.perf_counter() - started:5.1f}s")
        elapsed = time.perf_counter() - started

        path = training.save_state("final").result().path
        print(f"saved the training state: {path}")
        sampler = training.save_weights_and_get_sampling_client("final").result()
        response = sampler.sample(
            tinker.ModelInput.from_ints(tokenizer.encode(PROMPT)), num_samples=1,
            sampling_params=tinker.SamplingParams(max_tokens=60, temperature=0.3,
                                                  seed=args.seed),
        ).result()
        text = tokenizer.decode(response.sequences[0].tokens, skip_special_tokens=True)
        print(f"fine-tuned: {PROMPT!r} -> {text!r}")

        start, end = losses[0], statistics.fmean(losses[-3:])
        print(f"loss: start {start:.3f} -> end {end:.3f} (mean of the last 3 steps), "
              f"ratio {end / start:.2f}")
        print(f"{args.steps} steps in {elapsed:.1f}s")


if __name__ == "__main__":
    main(parse_args())

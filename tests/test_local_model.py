"""Tests of the embedded server's numpy language model (``tinker_async.local._model``).

Gradients are checked against finite differences on a tiny float64 network; the learning
tests (SFT loss halves, RL reward rises) run the real-size model on seeded random base
weights so they do not depend on the shipped pretrained file. Deterministic (fixed seeds).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from tinker_async.local import _losses
from tinker_async.local import _model as M
from tinker_async.local._tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE, ByteTokenizer

SFT_TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife. However little known the feelings or views of such "
    "a man may be on his first entering a neighbourhood, this truth is so well fixed in the "
    "minds of the surrounding families, that he is considered the rightful property of some "
    "one or other of their daughters. My dear Mr. Bennet, said his lady to him one day, "
    "have you heard that Netherfield Park is let at last? Mr. Bennet replied that he had "
    "not. But it is, returned she; for Mrs. Long has just been here, and she told me all "
    "about it. Mr. Bennet made no answer. Do you not want to know who has taken it? cried "
    "his wife impatiently. You want to tell me, and I have no objection to hearing it. This "
    "was invitation enough. Why, my dear, you must know, Mrs. Long says that Netherfield is "
    "taken by a young man of large fortune from the north of England; that he came down on "
    "Monday in a chaise and four to see the place, and was so much delighted with it, that "
    "he agreed with Mr. Morris immediately; that he is to take possession before "
    "Michaelmas, and some of his servants are to be in the house by the end of next week."
)


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread() -> Iterator[None]:
    """Small matrices: one BLAS thread is faster, and immune to busy neighbours."""
    previous = M.set_blas_threads(1)
    yield
    if previous is not None:
        M.set_blas_threads(previous)


@pytest.fixture(scope="module")
def base() -> M.BaseModel:
    return M.BaseModel.create("local/byte-lm-random", seed=0)


@pytest.fixture(scope="module")
def tiny() -> M.BaseModel:
    config = M.ModelConfig(d_embed=4, window=3, d_attn=5, d_hidden=7, dtype="float64")
    return M.BaseModel.create("tiny-random", seed=1, config=config)


def _randomized_adapter(base: M.BaseModel, seed: int = 3) -> M.Adapter:
    """An adapter with non-zero A and B, so every LoRA factor gets a gradient."""
    adapter = M.Adapter.new(base, rank=2, seed=seed)
    rng = np.random.default_rng(seed)
    for key, p in adapter.params.items():
        adapter.params[key] = (rng.standard_normal(p.shape) * 0.05).astype(p.dtype)
    return adapter


# --------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------


def test_tokenizer_round_trip_and_specials() -> None:
    tok = ByteTokenizer()
    text = "héllo, wörld ✓"
    ids = tok.encode(text)
    assert ids[0] == BOS_ID and tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(ids) == "<|bos|>" + text
    assert tok.encode("a<|eos|>b", add_special_tokens=False) == [97, EOS_ID, 98]
    assert tok("hi")["input_ids"] == [BOS_ID, 104, 105]
    assert tok.decode([0xFF, 0x41]) == "\ufffdA"  # invalid UTF-8 is replaced
    assert (tok.vocab_size, tok.eos_token_id, tok.bos_token_id) == (VOCAB_SIZE, EOS_ID, BOS_ID)
    assert tok.eos_token == "<|eos|>" and tok.pad_token_id == 258
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([VOCAB_SIZE])


def test_chat_template() -> None:
    tok = ByteTokenizer()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|bos|><|system|>Be brief.<|eos|><|user|>Hi<|eos|><|assistant|>"
    assert tok.apply_chat_template(messages, add_generation_prompt=True) == tok.encode(
        str(text), add_special_tokens=False
    )
    with pytest.raises(ValueError, match="unknown role"):
        tok.apply_chat_template([{"role": "robot", "content": "x"}])


# --------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------


def _finite_difference_error(adapter: M.Adapter, objective: Callable[[], float]) -> float:
    """Max relative error between ``adapter.grads`` and central differences of objective."""
    worst = 0.0
    for key, p in adapter.params.items():
        numeric = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + 1e-6
            up = objective()
            p[idx] = old - 1e-6
            down = objective()
            p[idx] = old
            numeric[idx] = (up - down) / 2e-6
        scale = np.abs(numeric).max() + 1e-12
        worst = max(worst, float(np.abs(numeric - adapter.grads[key]).max() / scale))
    return worst


def _loss_of(
    adapter: M.Adapter,
    data: list[M.ModelDatum],
    loss_fn: str,
    config: dict[str, float] | None = None,
) -> Callable[[], float]:
    """The loss value as a function of the adapter's current parameters."""

    def objective() -> float:
        result = M.forward_backward(adapter, data, loss_fn, config, backward=False)
        return result.metrics["loss:sum"]

    return objective


def _rl_data(
    base: M.BaseModel, adapter: M.Adapter, seed: int, extra: dict[str, Any]
) -> list[M.ModelDatum]:
    """Two datums whose sampling logprobs sit near the model's (ratios near 1)."""
    rng = np.random.default_rng(seed)
    plain = [
        M.ModelDatum(rng.integers(0, 263, n), {"target_tokens": rng.integers(0, 263, n)})
        for n in (6, 3)
    ]
    lps = M.forward(base, adapter, plain)
    return [
        M.ModelDatum(
            d.tokens,
            {
                "target_tokens": d.loss_fn_inputs["target_tokens"],
                "logprobs": lp + rng.standard_normal(lp.size) * 0.15,
                "advantages": rng.standard_normal(lp.size),
                **{k: np.resize(np.asarray(v), lp.size) for k, v in extra.items()},
            },
        )
        for d, lp in zip(plain, lps, strict=True)
    ]


def test_gradient_check_cross_entropy(tiny: M.BaseModel) -> None:
    adapter = _randomized_adapter(tiny)
    rng = np.random.default_rng(0)
    data = [
        M.ModelDatum(
            rng.integers(0, 263, 5),
            {"target_tokens": rng.integers(0, 263, 5), "weights": [0, 0, 1, 0.5, 2]},
        ),
        M.ModelDatum(  # top-K distillation targets
            rng.integers(0, 263, 4),
            {"target_tokens": rng.integers(0, 263, (4, 3)), "weights": rng.random((4, 3))},
        ),
    ]
    M.forward_backward(adapter, data, "cross_entropy")
    assert _finite_difference_error(adapter, _loss_of(adapter, data, "cross_entropy")) < 1e-5


@pytest.mark.parametrize(
    "loss_fn", ["importance_sampling", "ppo", "dro", "gspo", "cispo", "stable_reinforce"])
def test_gradient_check_rl_losses(tiny: M.BaseModel, loss_fn: str) -> None:
    """Every loss's parameter gradient matches finite differences of its objective.

    For ppo / importance_sampling / dro that objective is the loss value. cispo, gspo and
    stable_reinforce put a stop-gradient on the (clipped) ratio, so their objective is the loss with
    those coefficients frozen: ``sum(dL/dlp|_0 * lp(theta))``, which we difference via
    ``cross_entropy`` with weights ``-dL/dlp|_0``.
    """
    adapter = _randomized_adapter(tiny)
    # gspo: the ratio averages over a mask that skips the first position.
    extra = {"gspo": {"sequence_ratio_mask": [0, 1, 1]},
             "stable_reinforce": {"mask": [1, 0, 1]}}.get(loss_fn, {})
    data = _rl_data(tiny, adapter, seed=len(loss_fn), extra=extra)
    config = {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1} if loss_fn == "ppo" else None
    M.forward_backward(adapter, data, loss_fn, config)
    if loss_fn in ("cispo", "gspo", "stable_reinforce"):
        resolved = _losses.resolve_loss_config(loss_fn, None)
        lps = M.forward(tiny, adapter, data)
        surrogate = []
        for i, (d, lp) in enumerate(zip(data, lps, strict=True)):
            inputs = _losses.check_datum_inputs(loss_fn, d.loss_fn_inputs, lp.size, 263, i)
            g0 = _losses.compute_loss(loss_fn, lp.astype(float), inputs, resolved).grad
            surrogate.append(
                M.ModelDatum(d.tokens, {"target_tokens": inputs["target_tokens"], "weights": -g0})
            )
        objective = _loss_of(adapter, surrogate, "cross_entropy")
    else:
        objective = _loss_of(adapter, data, loss_fn, config)
    assert _finite_difference_error(adapter, objective) < 1e-4


@pytest.mark.parametrize(
    "flags", [(True, False, False), (False, True, False), (False, False, True)]
)
def test_lora_flags_choose_matrices(tiny: M.BaseModel, flags: tuple[bool, bool, bool]) -> None:
    mlp, attn, unembed = flags
    adapter = M.Adapter.new(
        tiny, rank=2, seed=0, train_mlp=mlp, train_attn=attn, train_unembed=unembed
    )
    expected = {"w_in"} if mlp else {"wq", "wk", "wv", "wo"} if attn else {"w_out"}
    assert set(adapter.targets) == expected
    with pytest.raises(ValueError, match="at least one"):
        M.Adapter.new(tiny, rank=2, train_mlp=False, train_attn=False, train_unembed=False)


def test_loss_formulas_on_logprobs() -> None:
    """The documented formulas, on hand-made numbers."""
    lp = np.log(np.array([0.5, 0.25, 0.125]))
    q = np.log(np.array([0.25, 0.25, 0.25]))  # ratios 2, 1, 0.5
    adv = np.array([1.0, -1.0, -2.0])
    x = {"target_tokens": np.zeros(3, np.int64), "logprobs": q, "advantages": adv}
    ppo = _losses.compute_loss("ppo", lp, x, _losses.resolve_loss_config("ppo", None))
    # min(r A, clip(r, .8, 1.2) A): 1.2, -1, -1.6  -> loss = -(1.2 - 1 - 1.6)
    assert ppo.total == pytest.approx(1.4)
    np.testing.assert_allclose(ppo.grad, [0.0, 1.0, 0.0])  # only the unclipped term flows
    cispo = _losses.compute_loss("cispo", lp, x, _losses.resolve_loss_config("cispo", None))
    np.testing.assert_allclose(cispo.grad, -np.array([2.0, 1.0, 0.5]) * adv)
    dro = _losses.compute_loss("dro", lp, x, {"beta": 0.5})
    assert dro.total == pytest.approx(-(lp * adv - 0.25 * (lp - q) ** 2).sum())
    ce = _losses.compute_loss("cross_entropy", lp, {"weights": np.array([1.0, 0, 2])}, {})
    assert ce.total == pytest.approx(-(lp[0] + 2 * lp[2]))


# --------------------------------------------------------------------------------------
# Forward consistency
# --------------------------------------------------------------------------------------


def test_forward_matches_forward_backward_and_new_adapter_is_base(base: M.BaseModel) -> None:
    tok = base.tokenizer.encode("Hello there, general.")
    datum = M.ModelDatum(tok[:-1], {"target_tokens": tok[1:], "weights": np.ones(len(tok) - 1)})
    adapter = M.Adapter.new(base, rank=4, seed=1)
    plain = M.forward(base, None, [datum])[0]
    with_adapter = M.forward(base, adapter, [datum])[0]
    np.testing.assert_array_equal(plain, with_adapter)  # B = 0 at init
    out, metrics = M.forward_backward(adapter, [datum], "cross_entropy")
    np.testing.assert_allclose(out[0]["logprobs"], plain, rtol=1e-5)
    assert out[0]["logprobs"].dtype == np.float32 and out[0]["logprobs"].shape == (len(tok) - 1,)
    assert metrics["loss:sum"] == pytest.approx(-float(plain.sum()), rel=1e-5)
    # Batching does not change a datum's result (packing and attention masks are right).
    other = M.ModelDatum(tok[:5], {"target_tokens": tok[1:6], "weights": np.ones(5)})
    batched = M.forward(base, None, [other, datum, other])[1]
    np.testing.assert_allclose(batched, plain, rtol=1e-5, atol=1e-5)


def test_zero_weights_give_no_gradient(base: M.BaseModel) -> None:
    adapter = M.Adapter.new(base, rank=2, seed=0)
    datum = M.ModelDatum([1, 2, 3, 4], {"target_tokens": [2, 3, 4, 5], "weights": np.zeros(4)})
    _, metrics = M.forward_backward(adapter, [datum], "cross_entropy")
    assert metrics["loss:sum"] == 0.0
    assert all(not g.any() for g in adapter.grads.values())


# --------------------------------------------------------------------------------------
# Learning
# --------------------------------------------------------------------------------------


def test_sft_loss_halves_within_50_steps(base: M.BaseModel) -> None:
    adapter = M.Adapter.new(base, rank=8, seed=0)
    tokens = base.tokenizer.encode(SFT_TEXT, add_special_tokens=False)
    rng = np.random.default_rng(0)
    curve = []
    for _ in range(50):
        data = []
        for start in rng.integers(0, len(tokens) - 65, size=8):
            seq = tokens[start : start + 65]
            data.append(M.ModelDatum(seq[:-1], {"target_tokens": seq[1:], "weights": np.ones(64)}))
        _, metrics = M.forward_backward(adapter, data, "cross_entropy")
        M.optim_step(adapter, {"learning_rate": 1e-2})
        curve.append(metrics["loss:sum"] / (8 * 64))
    assert np.mean(curve[-5:]) < 0.5 * curve[0], curve


def _letter_reward(tokens: Any, letter: int) -> float:
    arr = np.asarray(tokens)
    return float((arr == letter).mean()) if arr.size else 0.0


def test_rl_reward_rises(base: M.BaseModel) -> None:
    """GRPO on a toy task: reward = fraction of sampled bytes that are the letter 'a'.

    8 prompts x 8 samples x 16 tokens per step, advantage = reward - group mean,
    importance_sampling with the sampler's logprobs. The reward starts near 1/263.
    """
    adapter = M.Adapter.new(base, rank=8, seed=0)
    tok = base.tokenizer
    prompts = [
        tok.encode(p)
        for p in ("Once ", "The cat ", "Hello", "We say ", "It was ", "My ", "A ", "Then ")
    ]
    rewards = []
    for step in range(30):
        requests = [
            M.SampleRequest(p, num_samples=8, max_tokens=16, seed=1000 * step + i, adapter=adapter)
            for i, p in enumerate(prompts)
        ]
        data, step_rewards = [], []
        for prompt, result in zip(prompts, M.sample_many(base, requests), strict=True):
            r = np.array([_letter_reward(s.tokens, ord("a")) for s in result.sequences])
            step_rewards.append(r.mean())
            for seq, advantage in zip(result.sequences, r - r.mean(), strict=True):
                full = [*prompt, *seq.tokens.tolist()]
                n = len(full) - 1
                logprobs, advantages = np.zeros(n), np.zeros(n)
                logprobs[len(prompt) - 1 :] = seq.logprobs
                advantages[len(prompt) - 1 :] = advantage
                inputs = {"target_tokens": full[1:], "logprobs": logprobs, "advantages": advantages}
                data.append(M.ModelDatum(full[:-1], inputs))
        M.forward_backward(adapter, data, "importance_sampling")
        M.optim_step(adapter, {"learning_rate": 3e-3})
        rewards.append(float(np.mean(step_rewards)))
    assert np.mean(rewards[:5]) < 0.05
    assert np.mean(rewards[-5:]) > 0.5, rewards


# --------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------


def test_sample_honours_max_tokens_num_samples_and_seed(base: M.BaseModel) -> None:
    prompt = base.tokenizer.encode("Hi")
    res = M.sample(base, None, prompt, num_samples=5, max_tokens=7, seed=42, stop=[])
    assert len(res.sequences) == 5
    for seq in res.sequences:
        assert seq.tokens.shape == (7,) and seq.tokens.dtype == np.int32
        assert seq.logprobs.shape == (7,) and seq.logprobs.dtype == np.float32
        assert seq.stop_reason == "length"
    again = M.sample(base, None, prompt, num_samples=5, max_tokens=7, seed=42, stop=[])
    for a, b in zip(res.sequences, again.sequences, strict=True):
        np.testing.assert_array_equal(a.tokens, b.tokens)
    other = M.sample(base, None, prompt, num_samples=5, max_tokens=7, seed=43, stop=[])
    assert any(
        not np.array_equal(a.tokens, b.tokens)
        for a, b in zip(res.sequences, other.sequences, strict=True)
    )
    assert len({tuple(s.tokens) for s in res.sequences}) > 1  # samples differ from each other


def test_sampled_logprobs_match_forward(base: M.BaseModel) -> None:
    adapter = _randomized_adapter(base)
    prompt = base.tokenizer.encode("The ")
    res = M.sample(base, adapter, prompt, num_samples=3, max_tokens=10, seed=0)
    for seq in res.sequences:
        full = [*prompt, *seq.tokens.tolist()]
        datum = M.ModelDatum(full[:-1], {"target_tokens": full[1:]})
        lp = M.forward(base, adapter, [datum])[0]
        np.testing.assert_allclose(lp[len(prompt) - 1 :], seq.logprobs, atol=2e-4)


def _fixed_logits_model(base: M.BaseModel, logits: dict[int, float]) -> M.BaseModel:
    """A model whose next-token logits are ``logits`` (others -30) whatever the context."""
    bias = np.full(VOCAB_SIZE, -30.0)
    for token, value in logits.items():
        bias[token] = value
    weights = {**base.weights, "w_out": np.zeros_like(base.weights["w_out"]), "b_out": bias}
    return M.BaseModel("fixed", base.config, weights)


def test_temperature_top_k_top_p_follow_the_distribution(base: M.BaseModel) -> None:
    x, y, z = ord("x"), ord("y"), ord("z")
    model = _fixed_logits_model(base, {x: 2.0, y: 1.0, z: 0.0})
    for temperature in (1.0, 0.5, 2.0):
        res = M.sample(
            model,
            None,
            [BOS_ID],
            num_samples=400,
            max_tokens=10,
            stop=[],
            temperature=temperature,
            seed=0,
        )
        tokens = np.concatenate([s.tokens for s in res.sequences])
        logits = np.array([2.0, 1.0, 0.0]) / temperature
        expected = np.exp(logits) / np.exp(logits).sum()
        freq = np.array([(tokens == t).mean() for t in (x, y, z)])
        np.testing.assert_allclose(freq, expected, atol=0.03)
        # Reported logprobs are those of softmax(logits / temperature), before truncation.
        lps = np.concatenate([s.logprobs for s in res.sequences])
        np.testing.assert_allclose(lps[tokens == x], np.log(expected[0]), atol=1e-4)
    two = M.sample(model, None, [BOS_ID], num_samples=100, max_tokens=10, stop=[], top_k=2, seed=1)
    assert set(np.concatenate([s.tokens for s in two.sequences]).tolist()) == {x, y}
    # top_p = 0.8: x (0.665) alone is not enough, x + y (0.91) is.
    nucleus = M.sample(
        model, None, [BOS_ID], num_samples=100, max_tokens=10, stop=[], top_p=0.8, seed=2
    )
    assert set(np.concatenate([s.tokens for s in nucleus.sequences]).tolist()) == {x, y}
    for greedy_kwargs in ({"temperature": 0.0}, {"top_k": 1}, {"top_p": 0.5}):
        res = M.sample(
            model, None, [BOS_ID], num_samples=3, max_tokens=5, stop=[], seed=3, **greedy_kwargs
        )
        assert all(s.tokens.tolist() == [x] * 5 for s in res.sequences)


def test_topk_sample_logprobs(base: M.BaseModel) -> None:
    prompt = base.tokenizer.encode("abc")
    res = M.sample(
        base, None, prompt, max_tokens=6, top_k=3, topk_sample_logprobs=3, seed=5, stop=[]
    )
    seq = res.sequences[0]
    assert seq.topk_token_ids is not None and seq.topk_logprobs is not None
    assert seq.topk_token_ids.shape == (6, 3) and seq.topk_logprobs.dtype == np.float32
    assert all(t in row for t, row in zip(seq.tokens, seq.topk_token_ids, strict=True))
    assert np.all(np.diff(seq.topk_logprobs, axis=1) <= 0)
    np.testing.assert_allclose(
        seq.logprobs,
        [
            dict(zip(i, v, strict=True))[t]
            for t, i, v in zip(seq.tokens, seq.topk_token_ids, seq.topk_logprobs, strict=True)
        ],
    )


def test_stops(base: M.BaseModel) -> None:
    eos_lover = _fixed_logits_model(base, {EOS_ID: 12.0, ord("q"): 0.0})
    prompt = [BOS_ID, 65]
    default = M.sample(eos_lover, None, prompt, max_tokens=5, seed=0)
    assert default.sequences[0].tokens.tolist() == [EOS_ID]
    assert default.sequences[0].stop_reason == "stop"
    disabled = M.sample(eos_lover, None, prompt, max_tokens=5, seed=0, stop=[])
    assert disabled.sequences[0].tokens.tolist() == [EOS_ID] * 5
    assert disabled.sequences[0].stop_reason == "length"
    # A stop string (two bytes) on a model forced to emit "xy" repeatedly.
    xy = _fixed_logits_model(base, {ord("x"): 0.0, ord("y"): 0.0})
    res = M.sample(xy, None, prompt, num_samples=4, max_tokens=40, seed=0, stop="yx")
    for seq in res.sequences:
        text = xy.tokenizer.decode(seq.tokens)
        assert seq.stop_reason == "stop" and text.endswith("yx") and "yx" not in text[:-1]
    ids = M.sample(xy, None, prompt, max_tokens=40, seed=0, stop=[ord("y")])
    assert ids.sequences[0].tokens[-1] == ord("y") and ids.sequences[0].stop_reason == "stop"


def test_prompt_logprobs_and_topk(base: M.BaseModel) -> None:
    prompt = base.tokenizer.encode("Hello world")
    res = M.sample(
        base,
        None,
        prompt,
        max_tokens=2,
        include_prompt_logprobs=True,
        topk_prompt_logprobs=4,
        target_prompt_logprobs=np.array([[prompt[i + 1], -1] for i in range(len(prompt) - 1)]),
        prompt_alt_tokens_k=2,
        seed=0,
    )
    datum = M.ModelDatum(prompt[:-1], {"target_tokens": prompt[1:]})
    expected = M.forward(base, None, [datum])[0]
    assert res.prompt_logprobs is not None and math.isnan(res.prompt_logprobs[0])
    np.testing.assert_allclose(res.prompt_logprobs[1:], expected, atol=2e-4)
    assert res.topk_prompt_token_ids is not None and res.topk_prompt_logprobs is not None
    assert res.topk_prompt_token_ids.shape == (len(prompt), 4)
    assert res.topk_prompt_logprobs[0].tolist() == [M.MASK_LOGPROB] * 4
    assert np.all(res.topk_prompt_logprobs[1:, 0] >= expected - 1e-4)
    assert res.target_prompt_logprobs is not None
    np.testing.assert_allclose(res.target_prompt_logprobs[:, 0], expected, atol=2e-4)
    assert not res.target_prompt_logprobs[:, 1].any()
    assert res.prompt_alt_tokens is not None and res.prompt_alt_tokens.shape == (len(prompt) - 1, 2)
    last = M.sample(
        base, None, prompt, max_tokens=1, include_prompt_logprobs=True, prompt_logprobs_last_n=3
    )
    assert last.prompt_logprobs is not None
    assert (
        np.isnan(last.prompt_logprobs[:-3]).all() and not np.isnan(last.prompt_logprobs[-3:]).any()
    )


def test_sample_many_matches_separate_calls(base: M.BaseModel) -> None:
    adapter = _randomized_adapter(base, seed=7)
    tok = base.tokenizer
    requests = [
        M.SampleRequest(tok.encode("One"), num_samples=2, max_tokens=6, seed=1, adapter=adapter),
        M.SampleRequest(
            tok.encode("A longer prompt"), num_samples=3, max_tokens=9, seed=2, top_k=5
        ),
        M.SampleRequest(
            tok.encode("x"), num_samples=1, max_tokens=4, seed=3, temperature=0.5, adapter=adapter
        ),
    ]
    together = M.sample_many(base, requests)
    for request, result in zip(requests, together, strict=True):
        alone = M.sample_many(base, [request])[0]
        for a, b in zip(result.sequences, alone.sequences, strict=True):
            np.testing.assert_array_equal(a.tokens, b.tokens)
            np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)


# --------------------------------------------------------------------------------------
# Optimizer and checkpoints
# --------------------------------------------------------------------------------------


def _sft_step(adapter: M.Adapter, lr: float = 1e-2) -> dict[str, float]:
    tokens = adapter.base.tokenizer.encode(SFT_TEXT[:200], add_special_tokens=False)
    datum = M.ModelDatum(
        tokens[:-1], {"target_tokens": tokens[1:], "weights": np.ones(len(tokens) - 1)}
    )
    M.forward_backward(adapter, [datum], "cross_entropy")
    return M.optim_step(adapter, {"learning_rate": lr, "weight_decay": 0.01, "grad_clip_norm": 1.0})


def test_optim_step_metrics_and_zeroed_grads(base: M.BaseModel) -> None:
    adapter = M.Adapter.new(base, rank=4, seed=0)
    metrics = _sft_step(adapter)
    assert metrics["grad_norm:mean"] > 0 and metrics["learning_rate:mean"] == 1e-2
    assert all(not g.any() for g in adapter.grads.values()) and adapter.step == 1
    with pytest.raises(ValueError, match="unknown Adam parameter"):
        M.optim_step(adapter, {"lr": 1.0})


def test_save_load_round_trip(base: M.BaseModel) -> None:
    adapter = M.Adapter.new(base, rank=4, seed=0, train_attn=False)
    _sft_step(adapter)
    blob = M.save_state(adapter, include_optimizer=True)
    info = M.checkpoint_info(blob)
    assert (info["rank"], info["train_attn"], info["has_optimizer"]) == (4, False, True)
    restored = M.load_state(base, blob)
    _sft_step(adapter)
    _sft_step(restored)
    for key in adapter.params:  # resumed training is identical to uninterrupted training
        np.testing.assert_array_equal(adapter.params[key], restored.params[key])
    weights_only = M.load_state(base, M.save_state(adapter, include_optimizer=False))
    assert weights_only.step == 0 and not any(m.any() for m in weights_only.adam_m.values())
    for key in adapter.params:
        np.testing.assert_array_equal(adapter.params[key], weights_only.params[key])
    dropped = M.load_state(base, blob, include_optimizer=False)
    assert dropped.step == 0
    with pytest.raises(ValueError, match="checkpoint"):
        M.load_state(base, b"not a checkpoint")


# --------------------------------------------------------------------------------------
# Zero-compute mode and errors
# --------------------------------------------------------------------------------------


def test_zero_compute_shapes() -> None:
    zero = M.BaseModel.create(zero_compute=True)
    adapter = M.Adapter.new(zero, rank=2, seed=0)
    datum = M.ModelDatum([1, 2, 3], {"target_tokens": [2, 3, 4], "weights": [1, 1, 1]})
    out, metrics = M.forward_backward(adapter, [datum, datum], "cross_entropy")
    assert len(out) == 2 and out[0]["logprobs"].shape == (3,)
    assert metrics["loss:sum"] == pytest.approx(6 * math.log(VOCAB_SIZE))
    assert M.optim_step(adapter, {"learning_rate": 1e-3})["grad_norm:mean"] == 0.0
    res = M.sample(
        zero,
        adapter,
        [1, 2],
        num_samples=3,
        max_tokens=5,
        topk_sample_logprobs=2,
        include_prompt_logprobs=True,
    )
    assert [s.tokens.shape for s in res.sequences] == [(5,)] * 3
    assert res.sequences[0].topk_logprobs is not None and res.sequences[0].topk_logprobs.shape == (
        5,
        2,
    )
    assert res.prompt_logprobs is not None and res.prompt_logprobs.shape == (2,)


def test_clear_errors(base: M.BaseModel) -> None:
    adapter = M.Adapter.new(base, rank=2, seed=0)
    good = {"target_tokens": [1, 2], "logprobs": [0.0, 0.0], "advantages": [1.0, 1.0]}
    no_advantages = {"target_tokens": [1, 2], "logprobs": [0.0, 0.0]}
    with pytest.raises(ValueError, match=r"'ppo' is missing loss_fn_inputs \['advantages'\]"):
        M.forward_backward(adapter, [M.ModelDatum([1, 2], no_advantages)], "ppo")
    with pytest.raises(_losses.UnsupportedLossError, match="supported: cross_entropy"):
        M.forward_backward(adapter, [M.ModelDatum([1, 2], good)], "no_such_loss")
    with pytest.raises(ValueError, match="shape"):
        M.forward_backward(adapter, [M.ModelDatum([1, 2, 3], good)], "importance_sampling")
    with pytest.raises(ValueError, match="does not accept loss_fn_inputs"):
        M.forward_backward(adapter, [M.ModelDatum([1, 2], {**good, "mask": [1, 1]})], "ppo")
    with pytest.raises(ValueError, match="loss_fn_config key 'beta'"):
        M.forward_backward(adapter, [M.ModelDatum([1, 2], good)], "ppo", {"beta": 1.0})
    with pytest.raises(ValueError, match=r"lie in \[0, 263\)"):
        M.forward(base, None, [M.ModelDatum([1, 999], {"target_tokens": [1, 2]})])
    with pytest.raises(ValueError, match="non-empty"):
        M.sample(base, None, [], max_tokens=1)
    with pytest.raises(ValueError, match="top_p"):
        M.sample(base, None, [1], max_tokens=1, top_p=0.0)


@pytest.mark.skipif(not M.PRETRAINED_PATH.exists(), reason="no shipped pretrained weights")
def test_pretrained_base_knows_english(base: M.BaseModel) -> None:
    pretrained = M.BaseModel.create()
    assert pretrained.pretrained and not base.pretrained
    text = base.tokenizer.encode("The Lion and the Mouse. A Lion was awakened from sleep.")
    datum = M.ModelDatum(text[:-1], {"target_tokens": text[1:]})
    nll_pretrained = -M.forward(pretrained, None, [datum])[0].mean()
    nll_random = -M.forward(base, None, [datum])[0].mean()
    assert nll_pretrained < 1.5 < 5.0 < nll_random

"""Make the tiny Qwen3-shaped model the interop servers load: ``python make_model.py DIR``.

Runs in a server's venv (it needs torch, transformers and tokenizers). Nothing is
downloaded: the tokenizer is a byte-level BPE trained here on a fixed text, the weights
come from a fixed seed. The result is a normal Hugging Face model directory (config.json,
model.safetensors, tokenizer.json, tokenizer_config.json), so a server loads it the way it
loads any local checkpoint, and ``AutoTokenizer.from_pretrained(DIR)`` works offline.

Shape: vocabulary of a few hundred tokens, 2 layers, hidden size 64, untied embeddings
(skyrl refuses ``train_unembed=True`` on tied ones, and that is the SDK's default).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Bumping this makes run.py rebuild the model (it is part of the model's stamp).
MODEL_VERSION = "1"

_TEXT = """\
The quick brown fox jumps over the lazy dog. A training run saves its state, loads it
again and samples from the weights it saved. Every server answers the same questions:
who are you, which models do you serve, what did you save, and where is it now?
Hello world. The cat sat on the mat. One two three four five six seven eight nine ten.
"""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 320


def build_tokenizer(out: Path) -> int:
    """Train and save the tokenizer; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TEXT] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.save_pretrained(out)
    return len(fast)


def build_model(out: Path, vocab_size: int, eos_id: int) -> None:
    """Random float32 weights from a fixed seed, saved as safetensors."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    model = Qwen3ForCausalLM(config).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)


def main(argv: list[str]) -> int:
    out = Path(argv[0]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    vocab = build_tokenizer(out)
    from transformers import AutoTokenizer

    eos_id = int(AutoTokenizer.from_pretrained(out).eos_token_id)
    build_model(out, vocab, eos_id)
    (out / "interop_model.json").write_text(json.dumps({"version": MODEL_VERSION, "vocab": vocab}))
    print(f"tiny model in {out}: vocabulary {vocab}, eos {eos_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

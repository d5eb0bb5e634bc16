#!/usr/bin/env python
"""Pretrain the embedded server's tiny byte-level base model on public-domain text.

Writes ``tinker_async/local/byte_lm.npz`` (float16 weights, ~0.7 MB), which
``BaseModel.create`` loads when present so that samples from the local server look like
English and chat replies end with ``<|eos|>``. Without the file the server falls back to
seeded random weights, so this script is optional.

The corpus is embedded below, all public domain: Aesop's fables (after the 1867 Townsend
translation), the Gettysburg Address, the preamble of the US Constitution and the opening
of the Declaration of Independence, plus short chat-formatted dialogues built from the
fables so that the model learns the chat template.

Usage, from the repository root: ``python -m scripts.train_base_model [--steps 300]
[--out PATH]``. About two minutes on two CPU cores; deterministic for a given numpy/BLAS
build.

Why the default keeps the *last* step rather than the best validation loss: 28 KB of text
is far too little for 0.36 M parameters to generalise (held-out loss bottoms out near 2.45
nats/byte after ~50 steps, and samples from that model are English-shaped gibberish).
After 300 steps the model has mostly memorised the corpus (train loss ~0.2, held-out
~3.3): its samples recombine real phrases ("The Wind and the Reed. An Oak ..."), chat
replies end with ``<|eos|>``, and LoRA fine-tuning and RL still move it easily (SFT on new
text: 3.4 -> 0.4 nats/byte in 50 steps; a letter-frequency RL reward: 0.06 -> 1.0 in ~10).
``--keep best`` gives the early-stopped model instead.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tinker_async.local import _model as M
from tinker_async.local._tokenizer import BOS_ID, EOS_ID, ByteTokenizer

FABLES = [
    (
        "The Fox and the Grapes",
        "A hungry Fox saw some fine bunches of Grapes hanging from a vine that was trained "
        "along a high trellis, and did his best to reach them by jumping as high as he could "
        "into the air. But it was all in vain, for they were just out of reach: so he gave up "
        'trying, and walked away with an air of dignity and unconcern, remarking, "I thought '
        'those Grapes were ripe, but I see now they are quite sour."',
        "It is easy to despise what you cannot get.",
    ),
    (
        "The Hare and the Tortoise",
        "A Hare one day ridiculed the short feet and slow pace of the Tortoise, who replied, "
        'laughing: "Though you be swift as the wind, I will beat you in a race." The Hare, '
        "believing her assertion to be simply impossible, assented to the proposal; and they "
        "agreed that the Fox should choose the course and fix the goal. On the day appointed "
        "for the race the two started together. The Tortoise never for a moment stopped, but "
        "went on with a slow but steady pace straight to the end of the course. The Hare, "
        "lying down by the wayside, fell fast asleep. At last waking up, and moving as fast "
        "as he could, he saw the Tortoise had reached the goal, and was comfortably dozing "
        "after her fatigue.",
        "Slow but steady wins the race.",
    ),
    (
        "The Shepherd's Boy and the Wolf",
        "A Shepherd-boy, who watched a flock of sheep near a village, brought out the "
        'villagers three or four times by crying out, "Wolf! Wolf!" and when his neighbors '
        "came to help him, laughed at them for their pains. The Wolf, however, did truly come "
        "at last. The Shepherd-boy, now really alarmed, shouted in an agony of terror: "
        '"Pray, do come and help me; the Wolf is killing the sheep"; but no one paid any '
        "heed to his cries, nor rendered any assistance. The Wolf, having no cause of fear, "
        "at his leisure lacerated or destroyed the whole flock.",
        "There is no believing a liar, even when he speaks the truth.",
    ),
    (
        "The Ant and the Grasshopper",
        "In a field one summer's day a Grasshopper was hopping about, chirping and singing to "
        "its heart's content. An Ant passed by, bearing along with great toil an ear of corn "
        'he was taking to the nest. "Why not come and chat with me," said the Grasshopper, '
        '"instead of toiling and moiling in that way?" "I am helping to lay up food for '
        'the winter," said the Ant, "and recommend you to do the same." "Why bother about '
        'winter?" said the Grasshopper; "we have got plenty of food at present." But the '
        "Ant went on its way and continued its toil. When the winter came the Grasshopper "
        "had no food, and found itself dying of hunger, while it saw the ants distributing "
        "every day corn and grain from the stores they had collected in the summer.",
        "It is best to prepare for the days of necessity.",
    ),
    (
        "The Lion and the Mouse",
        "A Lion was awakened from sleep by a Mouse running over his face. Rising up angrily, "
        "he caught him and was about to kill him, when the Mouse piteously entreated, saying: "
        '"If you would only spare my life, I would be sure to repay your kindness." The '
        "Lion laughed and let him go. It happened shortly after this that the Lion was caught "
        "by some hunters, who bound him by strong ropes to the ground. The Mouse, recognizing "
        "his roar, came and gnawed the rope with his teeth, and set him free, exclaiming: "
        '"You ridiculed the idea of my ever being able to help you, not expecting to receive '
        "from me any repayment of your favor; now you know that it is possible for even a "
        'Mouse to confer benefits on a Lion."',
        "Little friends may prove great friends.",
    ),
    (
        "The North Wind and the Sun",
        "The North Wind and the Sun disputed as to which was the most powerful, and agreed "
        "that he should be declared the victor who could first strip a wayfaring man of his "
        "clothes. The North Wind first tried his power and blew with all his might, but the "
        "keener his blasts, the closer the Traveler wrapped his cloak around him, until at "
        "last, resigning all hope of victory, the Wind called upon the Sun to see what he "
        "could do. The Sun suddenly shone out with all his warmth. The Traveler no sooner "
        "felt his genial rays than he took off one garment after another, and at last, fairly "
        "overcome with heat, undressed and bathed in a stream that lay in his path.",
        "Persuasion is better than force.",
    ),
    (
        "The Crow and the Pitcher",
        "A Crow perishing with thirst saw a pitcher, and hoping to find water, flew to it "
        "with delight. When he reached it, he discovered to his grief that it contained so "
        "little water that he could not possibly get at it. He tried everything he could "
        "think of to reach the water, but all his efforts were in vain. At last he collected "
        "as many stones as he could carry and dropped them one by one with his beak into the "
        "pitcher, until he brought the water within his reach and thus saved his life.",
        "Necessity is the mother of invention.",
    ),
    (
        "The Dog and the Shadow",
        "It happened that a Dog had got a piece of meat and was carrying it home in his mouth "
        "to eat it in peace. Now on his way home he had to cross a plank lying across a "
        "running brook. As he crossed, he looked down and saw his own shadow reflected in the "
        "water beneath. Thinking it was another dog with another piece of meat, he made up "
        "his mind to have that also. So he made a snap at the shadow in the water, but as he "
        "opened his mouth the piece of meat fell out, dropped into the water and was never "
        "seen more.",
        "Beware lest you lose the substance by grasping at the shadow.",
    ),
    (
        "The Town Mouse and the Country Mouse",
        "Now you must know that a Town Mouse once upon a time went on a visit to his cousin "
        "in the country. He was rough and ready, this cousin, but he loved his town friend "
        "and made him heartily welcome. Beans and bacon, cheese and bread, were all he had to "
        "offer, but he offered them freely. The Town Mouse rather turned up his long nose at "
        'this country fare, and said: "I cannot understand, Cousin, how you can put up with '
        'such poor food as this. Come you with me and I will show you how to live." So the '
        "two mice set off for the town and arrived at the Town Mouse's residence late at "
        "night. There they found the remains of a fine feast, and soon the two mice were "
        "eating up jellies and cakes and all that was nice. Suddenly they heard growling and "
        'barking. "What is that?" said the Country Mouse. "It is only the dogs of the '
        'house," answered the other. "Only!" said the Country Mouse. "I do not like that '
        'music at my dinner." Just at that moment the door flew open, in came two huge dogs, '
        'and the two mice had to scamper down and run off. "Good-bye, Cousin," said the '
        'Country Mouse. "What! going so soon?" said the other. "Yes," he replied; "better '
        'beans and bacon in peace than cakes and ale in fear."',
        "Better beans and bacon in peace than cakes and ale in fear.",
    ),
    (
        "The Goose with the Golden Eggs",
        "One day a countryman going to the nest of his Goose found there an egg all "
        "yellow and glittering. When he took it up it was as heavy as lead and he was going "
        "to throw it away, because he thought a trick had been played upon him. But he took "
        "it home on second thoughts, and soon found to his delight that it was an egg of pure "
        "gold. Every morning the same thing occurred, and he soon became rich by selling his "
        "eggs. As he grew rich he grew greedy; and thinking to get at once all the gold the "
        "Goose could give, he killed it and opened it only to find nothing.",
        "Greed oft overreaches itself.",
    ),
    (
        "The Wind and the Reed",
        "An Oak that grew on the bank of a river was uprooted by a severe gale of wind, and "
        "thrown across the stream. It fell among some Reeds growing by the water, and said to "
        'them, "How is it that you, who are so frail and slender, have managed to weather '
        "the storm, whereas I, with all my strength, have been torn up by the roots and hurled "
        'into the river?" "You were stubborn," came the reply, "and fought against the '
        "storm, which proved stronger than you: but we bow and yield to every breeze, and "
        'thus the gale passed harmlessly over our heads."',
        "Stoop to conquer.",
    ),
    (
        "The Milkmaid and Her Pail",
        "A farmer's daughter was carrying her Pail of milk from the field to the farmhouse, "
        'when she fell a-musing. "The money for which this milk will be sold will buy at '
        "least three hundred eggs. The eggs, allowing for all mishaps, will produce two "
        "hundred and fifty chickens. The chickens will become ready for the market when "
        "poultry will fetch the highest price, so that by the end of the year I shall have "
        "money enough to buy a new gown. In this dress I will go to the fair, where all the "
        "young fellows will strive to have me for a partner; but no, I shall refuse every one "
        'of them." And at this she tossed her head, when down fell the Pail of milk to the '
        "ground, and all her imaginary schemes perished in a moment.",
        "Do not count your chickens before they are hatched.",
    ),
]

GETTYSBURG = (
    "Four score and seven years ago our fathers brought forth on this continent, a new "
    "nation, conceived in Liberty, and dedicated to the proposition that all men are created "
    "equal. Now we are engaged in a great civil war, testing whether that nation, or any "
    "nation so conceived and so dedicated, can long endure. We are met on a great "
    "battle-field of that war. We have come to dedicate a portion of that field, as a final "
    "resting place for those who here gave their lives that that nation might live. It is "
    "altogether fitting and proper that we should do this. But, in a larger sense, we can "
    "not dedicate, we can not consecrate, we can not hallow this ground. The brave men, "
    "living and dead, who struggled here, have consecrated it, far above our poor power to "
    "add or detract. The world will little note, nor long remember what we say here, but it "
    "can never forget what they did here. It is for us the living, rather, to be dedicated "
    "here to the unfinished work which they who fought here have thus far so nobly "
    "advanced. It is rather for us to be here dedicated to the great task remaining before "
    "us, that from these honored dead we take increased devotion to that cause for which "
    "they gave the last full measure of devotion, that we here highly resolve that these "
    "dead shall not have died in vain, that this nation, under God, shall have a new birth "
    "of freedom, and that government of the people, by the people, for the people, shall "
    "not perish from the earth."
)

PREAMBLE = (
    "We the People of the United States, in Order to form a more perfect Union, establish "
    "Justice, insure domestic Tranquility, provide for the common defence, promote the "
    "general Welfare, and secure the Blessings of Liberty to ourselves and our Posterity, do "
    "ordain and establish this Constitution for the United States of America."
)

DECLARATION = (
    "When in the Course of human events, it becomes necessary for one people to dissolve "
    "the political bands which have connected them with another, and to assume among the "
    "powers of the earth, the separate and equal station to which the Laws of Nature and of "
    "Nature's God entitle them, a decent respect to the opinions of mankind requires that "
    "they should declare the causes which impel them to the separation. We hold these "
    "truths to be self-evident, that all men are created equal, that they are endowed by "
    "their Creator with certain unalienable Rights, that among these are Life, Liberty and "
    "the pursuit of Happiness. That to secure these rights, Governments are instituted "
    "among Men, deriving their just powers from the consent of the governed, That whenever "
    "any Form of Government becomes destructive of these ends, it is the Right of the People "
    "to alter or to abolish it, and to institute new Government, laying its foundation on "
    "such principles and organizing its powers in such form, as to them shall seem most "
    "likely to effect their Safety and Happiness. Prudence, indeed, will dictate that "
    "Governments long established should not be changed for light and transient causes; and "
    "accordingly all experience hath shewn, that mankind are more disposed to suffer, while "
    "evils are sufferable, than to right themselves by abolishing the forms to which they "
    "are accustomed."
)

ASK_STORY = [
    "Tell me a fable.",
    "Tell me a story.",
    "Please tell me a short story.",
    "A fable, please.",
]
ASK_MORAL = ["What is the moral of {t}?", "What does {t} teach?", "Give me the moral of {t}."]
ASK_TITLE = ["Tell me the fable of {t}.", "Tell me {t}.", "Please tell {t}."]


def documents() -> list[str]:
    """Plain documents: each fable with its title and moral, and the three speeches."""
    docs = [f"{title}\n\n{body}\n\n{moral}" for title, body, moral in FABLES]
    return [*docs, GETTYSBURG, PREAMBLE, DECLARATION]


def dialogues(rng: np.random.Generator, count: int) -> list[list[dict[str, str]]]:
    """Chat examples that teach the template: role markers and ``<|eos|>`` after replies."""
    out = []
    for _ in range(count):
        title, body, moral = FABLES[int(rng.integers(len(FABLES)))]
        kind = int(rng.integers(3))
        if kind == 0:
            user, reply = str(rng.choice(ASK_STORY)), f"{title}. {body}"
        elif kind == 1:
            user, reply = str(rng.choice(ASK_MORAL)).format(t=title), moral
        else:
            user, reply = str(rng.choice(ASK_TITLE)).format(t=title), body
        out.append([{"role": "user", "content": user}, {"role": "assistant", "content": reply}])
    return out


HELD_OUT = ("The Milkmaid and Her Pail",)
"""Fables kept out of training, to report a held-out loss (and for ``--keep best``)."""


def corpus(seed: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Training and validation token streams: documents (BOS ... EOS) and, in training
    only, chat dialogues interleaved with them."""
    tok = ByteTokenizer()
    rng = np.random.default_rng(seed)
    train: list[list[int]] = []
    valid: list[int] = []
    for doc in documents():
        ids = [BOS_ID, *tok.encode(doc, add_special_tokens=False), EOS_ID]
        if doc.startswith(HELD_OUT):
            valid.extend(ids)
        else:
            train.append(ids)
    for messages in dialogues(rng, 40):
        chat_ids = tok.apply_chat_template(messages)
        assert isinstance(chat_ids, list)
        train.append(chat_ids)
    order = rng.permutation(len(train))
    stream = np.concatenate([np.asarray(train[i], dtype=np.int64) for i in order])
    return stream, np.asarray(valid, dtype=np.int64)


def validation_loss(base: M.BaseModel, valid: NDArray[np.int64]) -> float:
    datum = M.ModelDatum(valid[:-1], {"target_tokens": valid[1:]})
    return -float(M.forward(base, None, [datum])[0].mean())


def batch(
    stream: NDArray[np.int64], rng: np.random.Generator, rows: int, length: int
) -> tuple[list[NDArray[np.int64]], list[NDArray[np.int64]]]:
    starts = rng.integers(0, stream.size - length - 1, size=rows)
    return (
        [stream[s : s + length] for s in starts],
        [stream[s + 1 : s + length + 1] for s in starts],
    )


def train_step(
    base: M.BaseModel,
    inputs: list[NDArray[np.int64]],
    targets: list[NDArray[np.int64]],
) -> tuple[float, dict[str, NDArray[Any]]]:
    """Mean next-token loss and full base-weight gradients (the model's own backward)."""
    packed = M._Packed.of(inputs)
    acts = M._full_forward(base, packed, M._Plan.uniform(None))
    assert acts.logits is not None
    lse = M._logsumexp(acts.logits)
    rows_of = [off + np.arange(n) for off, n in zip(packed.offsets, packed.lengths, strict=True)]
    lps = [
        M._target_logprobs(acts.logits, lse, r, t) for r, t in zip(rows_of, targets, strict=True)
    ]
    count = sum(t.size for t in targets)
    loss = -float(sum(lp.sum() for lp in lps)) / count
    grads_in = [np.full(t.size, -1.0 / count) for t in targets]
    rows, dlogits = M._dlogits(
        acts.logits, lse, rows_of, [{"target_tokens": t} for t in targets], grads_in
    )
    grads = {k: np.zeros_like(v) for k, v in base.weights.items()}
    M._backward(base, packed, acts, rows, dlogits.astype(base.dtype), None, grads)
    return loss, grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument(
        "--keep",
        choices=("best", "last"),
        default="last",
        help="weights to save: the last step (default) or the lowest validation loss",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=M.PRETRAINED_PATH)
    args = parser.parse_args()

    M.set_blas_threads(1)  # small matrices: one thread is faster on a laptop
    config = M.ModelConfig()
    base = M.BaseModel.create("pretraining-random", seed=args.seed, config=config)
    stream, valid = corpus(args.seed)
    params = sum(w.size for w in base.weights.values())
    print(f"corpus: {stream.size} train + {valid.size} validation tokens; params: {params}")
    best = (math.inf, 0, {k: w.copy() for k, w in base.weights.items()})
    rng = np.random.default_rng(args.seed + 1)
    m = {k: np.zeros_like(v) for k, v in base.weights.items()}
    v = {k: np.zeros_like(w) for k, w in base.weights.items()}
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        inputs, targets = batch(stream, rng, args.batch, args.length)
        loss, grads = train_step(base, inputs, targets)
        # Adam with a cosine decay; weights are updated in place (embed is a view).
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for key, w in base.weights.items():
            m[key] = 0.9 * m[key] + 0.1 * grads[key]
            v[key] = 0.99 * v[key] + 0.01 * grads[key] ** 2
            update = (m[key] / (1 - 0.9**step)) / (np.sqrt(v[key] / (1 - 0.99**step)) + 1e-8)
            w -= (lr * update).astype(w.dtype)
        if step % args.eval_every == 0:
            val = validation_loss(base, valid)
            if val < best[0]:
                best = (val, step, {k: w.copy() for k, w in base.weights.items()})
            elapsed = time.perf_counter() - start
            print(f"step {step:5d}  train {loss:.3f}  validation {val:.3f}  {elapsed:6.1f}s")
    if args.keep == "best":
        print(f"keeping step {best[1]} (validation loss {best[0]:.3f} nats/byte)")
        for key, w in base.weights.items():
            w[...] = best[2][key]

    meta = {k: val for k, val in asdict(config).items() if k != "dtype"}
    arrays: dict[str, NDArray[Any]] = {
        "__config__": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    }
    arrays.update({k: w.astype(np.float16) for k, w in base.weights.items()})
    np.savez_compressed(args.out, **arrays)  # type: ignore[arg-type]
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")

    trained = M.BaseModel.create(M.DEFAULT_MODEL_NAME, weights_path=args.out)
    tok = trained.tokenizer
    for prompt in ("The Fox ", "Four score"):
        res = M.sample(trained, None, tok.encode(prompt), max_tokens=80, seed=0, temperature=0.7)
        print(repr(prompt + tok.decode(res.sequences[0].tokens)))
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Tell me a fable."}], add_generation_prompt=True
    )
    assert isinstance(chat, list)
    res = M.sample(trained, None, chat, max_tokens=200, seed=0, temperature=0.7)
    print(repr(tok.decode(res.sequences[0].tokens)), res.sequences[0].stop_reason)


if __name__ == "__main__":
    main()

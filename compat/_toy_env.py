"""A toy RL task for the cookbook's RL loop: reward for a letter in the reply.

``LetterEnv`` is the cookbook's own single-turn ``ProblemEnv``: the prompt asks for a word
with a letter, the reply is parsed by the renderer (``role_colon``), and the reward is the
cookbook's ``format_coef * (format - 1) + correct`` with ``correct`` = the letter occurs in
the reply. The byte-level model of the embedded server writes text, so rewards vary
between samples of a group and the advantages are not all zero.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import chz
from tinker_cookbook import renderers
from tinker_cookbook.rl.problem_env import ProblemEnv, ProblemGroupBuilder
from tinker_cookbook.rl.types import EnvGroupBuilder, RLDataset, RLDatasetBuilder
from tinker_cookbook.tokenizer_utils import get_tokenizer


class LetterEnv(ProblemEnv):
    """Rewarded when the reply contains ``letter``."""

    def __init__(self, renderer: renderers.Renderer, letter: str) -> None:
        super().__init__(renderer, format_coef=0.1, require_stop_sequence_for_format=False)
        self.letter = letter

    def get_question(self) -> str:
        return f"Write a word with the letter {self.letter}."

    def check_answer(self, sample_str: str) -> bool:
        return self.letter in sample_str.lower()

    def check_format(self, sample_str: str) -> bool:
        return bool(sample_str.strip())

    def get_reference_answer(self) -> str:
        return f"any word with {self.letter!r}"


class LetterDataset(RLDataset):
    """``batches`` batches of ``groups_per_batch`` groups of ``group_size`` LetterEnvs."""

    def __init__(self, renderer: renderers.Renderer, letter: str, batches: int,
                 groups_per_batch: int, group_size: int) -> None:
        self.renderer = renderer
        self.letter = letter
        self.batches = batches
        self.groups_per_batch = groups_per_batch
        self.group_size = group_size
        self.fetched: list[int] = []

    def get_batch(self, index: int) -> Sequence[EnvGroupBuilder]:
        self.fetched.append(index)
        thunk = functools.partial(LetterEnv, self.renderer, self.letter)
        return [ProblemGroupBuilder(env_thunk=thunk, num_envs=self.group_size,
                                    dataset_name="letter")
                for _ in range(self.groups_per_batch)]

    def __len__(self) -> int:
        return self.batches


#: The datasets built in this process, so a scenario can report which batches ran.
BUILT: list[LetterDataset] = []


@chz.chz
class LetterDatasetBuilder(RLDatasetBuilder):
    """The cookbook's ``RLDatasetBuilder`` interface over :class:`LetterDataset`."""

    model_name: str
    renderer_name: str
    letter: str = "e"
    batches: int = 3
    groups_per_batch: int = 2
    group_size: int = 4

    async def __call__(self) -> tuple[RLDataset, RLDataset | None]:
        renderer = renderers.get_renderer(self.renderer_name, get_tokenizer(self.model_name))
        dataset = LetterDataset(renderer, self.letter, self.batches, self.groups_per_batch,
                                self.group_size)
        BUILT.append(dataset)
        return dataset, None

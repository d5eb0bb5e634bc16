"""Parsing and building checkpoint paths (``tinker_async.paths``)."""

from __future__ import annotations

import pytest

import tinker_async.types as T
from tinker_async import paths
from tinker_async.paths import (
    InvalidPathError,
    ParsedCheckpointTinkerPath,
    build_checkpoint_path,
    is_checkpoint_path,
    parse_checkpoint_path,
    to_tinker_path,
    to_twinkle_path,
)

RUN = "43eebf32-e6c5-595f-81b3-31dcc32aafb5:train:0"


@pytest.mark.parametrize(
    ("segment", "kind"),
    [("weights", "training"), ("sampler_weights", "sampler"), ("external_weights", "external")],
)
def test_official_paths(segment: str, kind: str) -> None:
    path = f"tinker://{RUN}/{segment}/step-0100"
    parsed = parse_checkpoint_path(path)
    assert parsed == ParsedCheckpointTinkerPath(
        tinker_path=path,
        training_run_id=RUN,
        checkpoint_type=kind,  # type: ignore[arg-type]
        checkpoint_id=f"{segment}/step-0100",
    )
    assert parsed.name == "step-0100" and parsed.scheme == "tinker"
    assert parsed.canonical_path == path
    assert ParsedCheckpointTinkerPath.from_tinker_path(path) == parsed
    assert build_checkpoint_path(RUN, kind, "step-0100") == path
    assert build_checkpoint_path(RUN, segment, "step-0100") == path
    assert is_checkpoint_path(path)


def test_twinkle_paths_and_conversions() -> None:
    tinker = f"tinker://{RUN}/weights/final"
    twinkle = f"twinkle://{RUN}/weights/final"
    parsed = parse_checkpoint_path(twinkle)
    assert parsed.scheme == "twinkle" and parsed.checkpoint_type == "training"
    assert parsed.tinker_path == twinkle
    assert to_twinkle_path(tinker) == twinkle
    assert to_tinker_path(twinkle) == tinker
    assert to_tinker_path(tinker) == tinker
    assert build_checkpoint_path(RUN, "training", "final", scheme="twinkle") == twinkle


def test_skyrl_paths_read_as_sampler_checkpoints() -> None:
    path = f"tinker://{RUN}/ckpt-7"
    parsed = parse_checkpoint_path(path)
    assert parsed.tinker_path == path  # kept as given, to send back to that server
    assert parsed.training_run_id == RUN
    assert parsed.checkpoint_type == "sampler"
    assert parsed.checkpoint_id == "sampler_weights/ckpt-7"
    assert parsed.canonical_path == f"tinker://{RUN}/sampler_weights/ckpt-7"
    assert to_tinker_path(path) == parsed.canonical_path


def test_hatchery_paths_read_as_training_checkpoints_with_their_own_id() -> None:
    # hatchery-core answers save_state with tinker://<model>/checkpoints/<name>, lists it
    # as a training checkpoint, and deletes it at .../checkpoints/<name> (found by interop).
    path = f"tinker://{RUN}/checkpoints/ckpt-7"
    parsed = parse_checkpoint_path(path)
    assert parsed.tinker_path == path
    assert parsed.checkpoint_type == "training"
    assert parsed.checkpoint_id == "ckpt-7" and parsed.name == "ckpt-7"
    assert parsed.canonical_path == f"tinker://{RUN}/weights/ckpt-7"


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("s3://bucket/weights/a", "wrong scheme (s3://)"),
        ("TINKER://run/weights/a", "wrong scheme"),
        ("run/weights/a", "wrong scheme (no scheme)"),
        ("tinker:///weights/a", "training run id is empty"),
        ("tinker://", "training run id is empty"),
        ("tinker://run", "missing '/<kind>/<name>'"),
        ("tinker://run/weights", "missing checkpoint name after 'weights/'"),
        ("tinker://run/weights/", "checkpoint name is empty"),
        ("tinker://run/weights/a/b", "name contains '/'"),
        ("tinker://run/model/a", "unknown checkpoint kind 'model'"),
        ("tinker://run//a", "unknown checkpoint kind ''"),
    ],
)
def test_malformed_paths_say_what_is_wrong(path: str, problem: str) -> None:
    with pytest.raises(InvalidPathError) as info:
        parse_checkpoint_path(path)
    message = str(info.value)
    assert repr(path) in message
    assert problem in message
    assert "tinker://<run_id>/weights/<name>" in message
    assert info.value.path == path
    assert isinstance(info.value, ValueError)
    assert not is_checkpoint_path(path)


def test_non_string_paths_are_invalid() -> None:
    with pytest.raises(InvalidPathError, match="expected a string, got NoneType"):
        parse_checkpoint_path(None)  # type: ignore[arg-type]
    assert not is_checkpoint_path(42)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("", "training", "a"), "training run id"),
        (("r/x", "training", "a"), "training run id"),
        (("r", "training", ""), "checkpoint name"),
        (("r", "training", "a/b"), "checkpoint name"),
        (("r", "checkpoints", "a"), "unknown checkpoint kind 'checkpoints'"),
    ],
)
def test_build_refuses_bad_parts(args: tuple[str, str, str], problem: str) -> None:
    with pytest.raises(InvalidPathError, match=problem):
        build_checkpoint_path(*args)


def test_build_refuses_unknown_scheme() -> None:
    with pytest.raises(InvalidPathError, match="unknown scheme"):
        build_checkpoint_path("r", "training", "a", scheme="s3")  # type: ignore[arg-type]


def test_same_objects_in_types_and_paths() -> None:
    assert T.ParsedCheckpointTinkerPath is paths.ParsedCheckpointTinkerPath
    assert T.CheckpointType is paths.CheckpointType


def test_console_urls() -> None:
    response = T.SaveWeightsResponse(path=f"tinker://{RUN}/weights/a")
    assert response.get_console_url() == (
        "https://tinker.thinkingmachines.ai/checkpoints/"
        "43eebf32-e6c5-595f-81b3-31dcc32aafb5%3Atrain%3A0/weights%2Fa"
    )
    sampler = T.SaveWeightsForSamplerResponse(path=f"tinker://{RUN}/sampler_weights/b")
    assert sampler.get_playground_url().startswith(
        "https://tinker.thinkingmachines.ai/playground?mode=checkpoint&checkpoint=tinker%3A%2F%2F"
    )


def test_matches_the_official_parser() -> None:
    official = pytest.importorskip("tinker.types")
    for segment in ("weights", "sampler_weights", "external_weights"):
        path = f"tinker://{RUN}/{segment}/x"
        theirs = official.ParsedCheckpointTinkerPath.from_tinker_path(path)
        ours = parse_checkpoint_path(path)
        assert ours.model_dump() == theirs.model_dump()
    assert (
        official.SaveWeightsResponse(path=f"tinker://{RUN}/weights/a").get_console_url()
        == T.SaveWeightsResponse(path=f"tinker://{RUN}/weights/a").get_console_url()
    )


def test_invalid_path_is_a_typed_picklable_value_error() -> None:
    import pickle

    from tinker_async import InvalidRequestError, TinkerError

    with pytest.raises(TinkerError) as info:
        parse_checkpoint_path("tinker://run/bogus/x")
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, InvalidRequestError)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.path == "tinker://run/bogus/x"

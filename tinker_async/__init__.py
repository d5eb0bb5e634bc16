"""tinker_async: an asyncio-native client for the Tinker training API, with sync forms.

Drop-in for the official SDK's public names (``import tinker_async as tinker``)::

    import tinker_async as tinker

    service = tinker.ServiceClient(base_url=..., api_key=...)
    training = await service.create_lora_training_client_async("local/byte-lm", rank=8)
    fb = await training.forward_backward_async(batch, "cross_entropy")
    await training.optim_step_async(tinker.AdamParams(learning_rate=1e-3))
    print((await fb).metrics)

Every I/O method has an ``_async`` coroutine form and a plain form returning an
:class:`APIFuture`. ``tinker_async.local.LocalServer`` runs a Tinker-compatible server with
a small numpy model on your machine.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BillingError,
    ClientClosedError,
    ConfigurationError,
    ConflictError,
    ExperimentalWarning,
    InsecureTransportWarning,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestFailedError,
    RequestNotFoundError,
    SessionExpiredError,
    TinkerError,
    UnprocessableEntityError,
    UnsupportedByServerError,
)

# Everything else loads on first use (PEP 562): `import tinker_async` stays cheap for
# command-line tools and worker processes, and aiohttp and numpy (most of the import
# time) load with the first client or type that needs them.
if TYPE_CHECKING:
    from . import auth, types
    from ._admission import AdaptiveLimiter, FixedLimiter, Limiter
    from ._api_future import (
        APIFuture,
        AwaitableConcurrentFuture,
        BlockingCallWarning,
        ClientFuture,
    )
    from ._config import PollTuning, RetryPolicy
    from ._configure import configure
    from ._download import DownloadedFile, DownloadError, DownloadResult
    from ._futures import QueueState
    from ._sampling_target import SamplingStats
    from .custom_loss import LossHandle, PerDatumLossFn
    from .paths import InvalidPathError
    from .rest import AdminClient, RestClient
    from .sampling import BackcompatSamplingClientFuture, SamplingClient
    from .service import ServiceClient
    from .telemetry import Telemetry
    from .training import BackcompatTrainingClientFuture, TrainingClient
    from .twinkle import TwinkleClient
    from .types import (
        AdamOptimizerConfig,
        AdamParams,
        Checkpoint,
        CheckpointType,
        Datum,
        DimuonOptimizerConfig,
        DimuonParams,
        DmelChunk,
        EncodedTextChunk,
        ForwardBackwardOutput,
        ImageAssetPointerChunk,
        ImageChunk,
        LoraConfig,
        LossFnType,
        ModelID,
        ModelInput,
        ModelInputChunk,
        OptimParams,
        OptimStepRequest,
        OptimStepResponse,
        ParsedCheckpointTinkerPath,
        PromptProvenanceSpan,
        SampledProvenanceSpan,
        SampledSequence,
        SampleRequest,
        SampleResponse,
        SamplingParams,
        StopReason,
        TensorData,
        TensorDtype,
        TrainingRun,
        ValidationError,
    )

_LAZY: dict[str, str] = {
    "APIFuture": "._api_future",
    "AwaitableConcurrentFuture": "._api_future",
    "BlockingCallWarning": "._api_future",
    "ClientFuture": "._api_future",
    # The official names of the future that also forwards to the client it resolves to.
    "BackcompatSamplingClientFuture": ".sampling",
    "BackcompatTrainingClientFuture": ".training",
    "RetryPolicy": "._config",
    "PollTuning": "._config",
    "AdaptiveLimiter": "._admission",
    "FixedLimiter": "._admission",
    "Limiter": "._admission",
    "SamplingStats": "._sampling_target",
    "configure": "._configure",
    "DownloadError": "._download",
    "DownloadResult": "._download",
    "DownloadedFile": "._download",
    "QueueState": "._futures",
    "Telemetry": ".telemetry",
    "InvalidPathError": ".paths",
    "LossHandle": ".custom_loss",
    "PerDatumLossFn": ".custom_loss",
    "AdminClient": ".rest",
    "RestClient": ".rest",
    "SamplingClient": ".sampling",
    "ServiceClient": ".service",
    "TrainingClient": ".training",
    "TwinkleClient": ".twinkle",
    **{name: ".types" for name in (
        "AdamOptimizerConfig", "AdamParams", "Checkpoint", "CheckpointType", "Datum",
        "DimuonOptimizerConfig", "DimuonParams", "DmelChunk", "EncodedTextChunk", "OptimParams",
        "ForwardBackwardOutput", "ImageAssetPointerChunk", "ImageChunk", "LoraConfig",
        "LossFnType", "ModelID", "ModelInput", "ModelInputChunk", "OptimStepRequest",
        "OptimStepResponse", "ParsedCheckpointTinkerPath", "PromptProvenanceSpan",
        "SampledProvenanceSpan", "SampledSequence", "SampleRequest", "SampleResponse",
        "SamplingParams", "StopReason", "TensorData", "TensorDtype", "TrainingRun",
        "ValidationError",
    )},
}


def __getattr__(name: str) -> Any:
    if name in ("types", "auth"):
        value: Any = importlib.import_module(f".{name}", __name__)
    elif name in _LAZY:
        module = importlib.import_module(_LAZY[name], __name__)
        value = getattr(module, name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    # The public names (and module dunders), not the helpers this module imports.
    return sorted(set(__all__) | {n for n in globals() if n.startswith("__")})


__title__ = "tinker_async"

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIFuture",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AdamOptimizerConfig",
    "AdamParams",
    "AdaptiveLimiter",
    "AdminClient",
    "AuthenticationError",
    "AwaitableConcurrentFuture",
    "BackcompatSamplingClientFuture",
    "BackcompatTrainingClientFuture",
    "BadRequestError",
    "BillingError",
    "BlockingCallWarning",
    "Checkpoint",
    "CheckpointType",
    "ClientClosedError",
    "ClientFuture",
    "ConfigurationError",
    "ConflictError",
    "Datum",
    "DimuonOptimizerConfig",
    "DimuonParams",
    "DmelChunk",
    "DownloadError",
    "DownloadResult",
    "DownloadedFile",
    "EncodedTextChunk",
    "ExperimentalWarning",
    "FixedLimiter",
    "ForwardBackwardOutput",
    "ImageAssetPointerChunk",
    "ImageChunk",
    "InsecureTransportWarning",
    "InternalServerError",
    "InvalidPathError",
    "InvalidRequestError",
    "Limiter",
    "LoraConfig",
    "LossFnType",
    "LossHandle",
    "ModelID",
    "ModelInput",
    "ModelInputChunk",
    "NotFoundError",
    "OptimParams",
    "OptimStepRequest",
    "OptimStepResponse",
    "ParsedCheckpointTinkerPath",
    "PerDatumLossFn",
    "PermissionDeniedError",
    "PollTuning",
    "PromptProvenanceSpan",
    "QueueState",
    "RateLimitError",
    "RequestFailedError",
    "RequestNotFoundError",
    "RestClient",
    "RetryPolicy",
    "SampleRequest",
    "SampleResponse",
    "SampledProvenanceSpan",
    "SampledSequence",
    "SamplingClient",
    "SamplingParams",
    "SamplingStats",
    "ServiceClient",
    "SessionExpiredError",
    "StopReason",
    "Telemetry",
    "TensorData",
    "TensorDtype",
    "TinkerError",
    "TrainingClient",
    "TrainingRun",
    "TwinkleClient",
    "UnprocessableEntityError",
    "UnsupportedByServerError",
    "ValidationError",
    "__version__",
    "auth",
    "configure",
    "install_as_tinker",
    "types",
]


def install_as_tinker() -> None:
    """Make ``import tinker`` (and the submodules real code imports) give tinker_async.

    For running code written for the official SDK unchanged, in a process where the
    official ``tinker`` package should not be used::

        import tinker_async; tinker_async.install_as_tinker()
        import tinker  # -> tinker_async
    """
    this = sys.modules[__name__]
    lib = ModuleType("tinker.lib")
    public = ModuleType("tinker.lib.public_interfaces")
    for name in ("APIFuture", "RestClient", "AdminClient", "ServiceClient", "TrainingClient",
                 "SamplingClient", "LossHandle", "PerDatumLossFn"):
        setattr(public, name, getattr(this, name))
    # The official name of the future its plain methods return.
    public.AwaitableConcurrentFuture = this.AwaitableConcurrentFuture  # type: ignore[attr-defined]
    lib.public_interfaces = public  # type: ignore[attr-defined]
    types_module = importlib.import_module(".types", __name__)
    modules: dict[str, ModuleType] = {
        "tinker": this,
        "tinker.types": types_module,
        "tinker.types.tensor_data": importlib.import_module(".types.tensor_data", __name__),
        "tinker.lib": lib,
        "tinker.lib.public_interfaces": public,
        "tinker.auth": importlib.import_module(".auth", __name__),
    }
    for sub in ("datum", "model_input", "sampling_params", "loss_fn_type"):
        modules[f"tinker.types.{sub}"] = types_module
    sys.modules.update(modules)

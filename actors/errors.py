"""The closed error taxonomy of lipserve.

Every failure a user can see is one of these classes. Each carries a stable ``code`` (what clients
switch on), a ``retryable`` flag (whether trying the same job again can help) and a message that
names the file or stage and the reason. The replaced system failed with ``str(queue.Empty()) == ""``;
here a message can never be empty: the constructor refuses one.

Input errors are the caller's to fix and are never retried. Worker errors (lost process, out of
memory, stuck stage, internal bug) are retried by the job runner with backoff.
"""

from __future__ import annotations

import errno
import sys
from enum import Enum
from typing import Any


class ErrorCode(str, Enum):
    # Input errors (not retryable).
    UNREADABLE_FILE = "unreadable_file"
    NO_AUDIO_STREAM = "no_audio_stream"
    NO_VIDEO_STREAM = "no_video_stream"
    EMPTY_AUDIO = "empty_audio"
    NO_FACE = "no_face"
    MEDIA_TOO_LARGE = "media_too_large"
    MEDIA_TOO_LONG = "media_too_long"
    INVALID_PARAMETER = "invalid_parameter"
    # Refusals of the service API (not retryable unless noted).
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    RESULT_NOT_READY = "result_not_ready"  # retryable: the job has not finished yet
    RESULT_EXPIRED = "result_expired"
    QUEUE_FULL = "queue_full"  # retryable, with Retry-After
    NOT_READY = "not_ready"  # retryable: no warm pipeline replica yet
    INSUFFICIENT_STORAGE = "insufficient_storage"  # retryable: the disk is below its watermark
    # Operator faults: the deployment is misconfigured (not the client's input, not transient).
    MODEL_LOAD_FAILED = "model_load_failed"
    # Worker / system errors (retryable).
    WORKER_LOST = "worker_lost"
    OUT_OF_MEMORY = "out_of_memory"
    STAGE_TIMEOUT = "stage_timeout"
    INTERNAL = "internal"
    # Terminal but not an error of the input.
    CANCELLED = "cancelled"


class LipserveError(Exception):
    """Base class: a typed, never-empty error."""

    code: ErrorCode = ErrorCode.INTERNAL
    retryable: bool = False

    def __init__(self, message: str, *, path: str | None = None, stage: str | None = None):
        message = (message or "").strip()
        if not message:
            # Never let an empty message escape: say at least what kind of failure it was.
            message = f"{type(self).__name__} ({self.code.value}) without further detail"
        self.path = str(path) if path is not None else None
        self.stage = stage
        prefix = f"{self.path}: " if self.path and self.path not in message else ""
        self.message = prefix + message
        super().__init__(self.message)

    def __reduce__(self):  # keep the type and fields across Ray / pickle boundaries
        return (_rebuild_error, (type(self), self.message, self.path, self.stage))

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code.value, "message": self.message, "retryable": self.retryable}


def _rebuild_error(cls, message, path, stage):
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.message, err.path, err.stage = message, path, stage
    return err


class InputError(LipserveError):
    """The request's inputs are wrong; retrying the same job cannot help."""

    retryable = False


class UnreadableFileError(InputError):
    code = ErrorCode.UNREADABLE_FILE


class NoAudioStreamError(InputError):
    code = ErrorCode.NO_AUDIO_STREAM


class NoVideoStreamError(InputError):
    code = ErrorCode.NO_VIDEO_STREAM


class EmptyAudioError(InputError):
    code = ErrorCode.EMPTY_AUDIO


class NoFaceError(InputError):
    code = ErrorCode.NO_FACE


class MediaTooLargeError(InputError):
    code = ErrorCode.MEDIA_TOO_LARGE


class MediaTooLongError(InputError):
    code = ErrorCode.MEDIA_TOO_LONG


class InvalidParameterError(InputError):
    code = ErrorCode.INVALID_PARAMETER


class ServiceRefusal(LipserveError):
    """The API refuses the request as such (auth, unknown id, conflict, full queue, ...); nothing ran."""


class UnauthorizedError(ServiceRefusal):
    code = ErrorCode.UNAUTHORIZED


class ForbiddenError(ServiceRefusal):
    code = ErrorCode.FORBIDDEN


class NotFoundError(ServiceRefusal):
    code = ErrorCode.NOT_FOUND


class MethodNotAllowedError(ServiceRefusal):
    code = ErrorCode.METHOD_NOT_ALLOWED


class ConflictError(ServiceRefusal):
    code = ErrorCode.CONFLICT


class ResultNotReadyError(ServiceRefusal):
    code = ErrorCode.RESULT_NOT_READY
    retryable = True


class ResultExpiredError(ServiceRefusal):
    code = ErrorCode.RESULT_EXPIRED


class QueueFullError(ServiceRefusal):
    code = ErrorCode.QUEUE_FULL
    retryable = True


class NotReadyError(ServiceRefusal):
    code = ErrorCode.NOT_READY
    retryable = True


class InsufficientStorageError(ServiceRefusal):
    code = ErrorCode.INSUFFICIENT_STORAGE
    retryable = True


class StorageFullError(LipserveError):
    """The server's disk filled up while a job wrote to it (ENOSPC). Not transient: the same
    attempt would fill it again, so the job fails at once instead of burning its retries."""

    code = ErrorCode.INSUFFICIENT_STORAGE
    retryable = False


class ConfigurationError(LipserveError):
    """The deployment is misconfigured: an operator must fix it; retrying the job cannot help."""

    retryable = False


class ModelLoadError(ConfigurationError):
    """A checkpoint / model file that cannot be loaded (wrong format, wrong keys or shapes)."""

    code = ErrorCode.MODEL_LOAD_FAILED


class RetryableError(LipserveError):
    """A worker-side failure; the same job may well succeed on another attempt."""

    retryable = True


class WorkerLostError(RetryableError):
    code = ErrorCode.WORKER_LOST


class OutOfMemoryError(RetryableError):
    code = ErrorCode.OUT_OF_MEMORY


class StageTimeoutError(RetryableError):
    code = ErrorCode.STAGE_TIMEOUT


class InternalError(RetryableError):
    code = ErrorCode.INTERNAL


class CancelledError(LipserveError):
    code = ErrorCode.CANCELLED
    retryable = False


ALL_ERRORS: tuple[type[LipserveError], ...] = (
    UnreadableFileError,
    NoAudioStreamError,
    NoVideoStreamError,
    EmptyAudioError,
    NoFaceError,
    MediaTooLargeError,
    MediaTooLongError,
    InvalidParameterError,
    UnauthorizedError,
    ForbiddenError,
    NotFoundError,
    MethodNotAllowedError,
    ConflictError,
    ResultNotReadyError,
    ResultExpiredError,
    QueueFullError,
    NotReadyError,
    InsufficientStorageError,
    StorageFullError,
    ModelLoadError,
    WorkerLostError,
    OutOfMemoryError,
    StageTimeoutError,
    InternalError,
    CancelledError,
)


# errno values that mean "the storage or the machine had a bad moment", not "this file is bad".
# ENOSPC is not one of them: a full disk stays full for the retry (StorageFullError).
TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.ESTALE, errno.EMFILE, errno.ENFILE, errno.ENOMEM,
                              errno.EAGAIN, errno.ETIMEDOUT})
STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def decode_failure(exc: BaseException, message: str, path: str | None) -> LipserveError:
    """Classify a failure while reading media by its errno: transient I/O (shared volume hiccup, too
    many open files) is retryable; a full disk is a ``StorageFullError``; anything else means the
    file itself is unreadable."""
    if getattr(exc, "errno", None) in STORAGE_FULL_ERRNOS:
        return StorageFullError(f"{message} (the server's disk is full)", path=path)
    if getattr(exc, "errno", None) in TRANSIENT_ERRNOS:
        return InternalError(f"{message} (transient I/O error: {exc})", path=path)
    return UnreadableFileError(message, path=path)


def with_client_names(err: LipserveError, names: dict[str, str]) -> LipserveError:
    """The same error with server paths replaced by the names the client knows (its upload's file
    name, its URL): messages name the client's file, never a server path."""
    message, path = err.message, err.path
    for server, client in sorted(names.items(), key=lambda kv: -len(kv[0])):
        if server and server in message:
            message = message.replace(server, client)
        if path == server:
            path = client
    if message == err.message and path == err.path:
        return err
    out = type(err).__new__(type(err))
    Exception.__init__(out, message)
    out.message, out.path, out.stage = message, path, err.stage
    return out


def as_lipserve_error(exc: BaseException, *, stage: str | None = None) -> LipserveError:
    """Map any exception to the taxonomy, keeping typed errors as they are.

    Classification is by type, never by matching message strings.
    """
    if isinstance(exc, LipserveError):
        return exc
    if getattr(exc, "errno", None) in STORAGE_FULL_ERRNOS:
        return StorageFullError(f"the server's disk is full{f' in {stage}' if stage else ''}: {getattr(exc, 'strerror', None) or exc}",
                                stage=stage)
    if isinstance(exc, MemoryError):
        return OutOfMemoryError(f"out of memory{f' in {stage}' if stage else ''}: {exc!r}", stage=stage)
    # torch's CUDA OOM is a distinct type. If torch was never imported in this process the error
    # cannot be one, and importing it here (seconds) would stall the caller's event loop.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return OutOfMemoryError(f"GPU out of memory{f' in {stage}' if stage else ''}: {exc}", stage=stage)
    where = f" in {stage}" if stage else ""
    return InternalError(f"{type(exc).__name__}{where}: {exc}".rstrip(": "), stage=stage)

"""The error taxonomy: never empty, typed across pickling, transient I/O is retryable."""

from __future__ import annotations

import errno
import pickle

import av
import pytest

from actors.errors import (
    ALL_ERRORS,
    InternalError,
    LipserveError,
    UnreadableFileError,
    as_lipserve_error,
    decode_failure,
)


@pytest.mark.parametrize("cls", ALL_ERRORS)
def test_every_error_has_a_message_a_code_and_survives_pickling(cls):
    err = cls("", path="/data/in.wav")
    assert err.message and "/data/in.wav" in err.message and str(err)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls and back.message == err.message and back.to_dict() == err.to_dict()


def test_transient_io_errors_while_decoding_are_retryable():
    try:
        av.error.err_check(-errno.EIO, "in.mp4")
    except av.error.FFmpegError as exc:
        transient = decode_failure(exc, "cannot decode video of in.mp4", "in.mp4")
    assert isinstance(transient, InternalError) and transient.retryable and "in.mp4" in transient.message
    try:
        av.error.err_check(-errno.EINVAL, "in.mp4")
    except av.error.FFmpegError as exc:
        bad = decode_failure(exc, "cannot decode video of in.mp4", "in.mp4")
    assert isinstance(bad, UnreadableFileError) and not bad.retryable


def test_unknown_exceptions_become_retryable_internal_errors_by_type():
    err = as_lipserve_error(KeyError("x"), stage="generate")
    assert isinstance(err, InternalError) and err.retryable and "generate" in err.message
    assert as_lipserve_error(MemoryError()).code.value == "out_of_memory"
    typed = UnreadableFileError("bad", path="a.wav")
    assert as_lipserve_error(typed) is typed
    assert isinstance(typed, LipserveError)

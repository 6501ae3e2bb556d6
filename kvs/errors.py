"""The exception tree. Expected outcomes are typed; each maps to one HTTP status.

    KVSError                      (base; never raised itself)
    ├── ConfigError               start-up only: bad or unknown setting
    ├── BadRequest          400   malformed body, wrong type, unknown field, bad key
    ├── Unauthorized        401   /internal/ request without a valid HMAC
    ├── NotFound            404   key absent / deleted / expired
    ├── CASConflict         409   a condition did not hold; carries `current` or `failed`
    ├── TooLarge            413   value or body over the limit
    ├── CASDisabled         501   a condition was sent while cas_enabled is false
    └── StorageFailed       503   a RocksDB write or fsync failed: writes refused until it heals
        └── StorageFull     507   the same, because the disk is full

A broken invariant is not a KVSError: it is a bug and fails loudly.
"""

from __future__ import annotations

from typing import Any


class KVSError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


class ConfigError(KVSError):
    code = "config"


class BadRequest(KVSError):
    status = 400
    code = "bad_request"


class Unauthorized(KVSError):
    status = 401
    code = "unauthorized"


class NotFound(KVSError):
    status = 404
    code = "not_found"


class CASConflict(KVSError):
    status = 409
    code = "cas_conflict"


class TooLarge(KVSError):
    status = 413
    code = "too_large"


class CASDisabled(KVSError):
    status = 501
    code = "cas_disabled"

    def __init__(self) -> None:
        super().__init__(
            "conditional writes are disabled on this node; set cas_enabled: true in the "
            "config file (or KVS_CAS_ENABLED=true) and restart it. The write was not applied."
        )


class StorageFailed(KVSError):
    status = 503
    code = "storage_failed"


class StorageFull(StorageFailed):
    status = 507
    code = "storage_full"

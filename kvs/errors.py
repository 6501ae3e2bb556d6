"""The exception tree. Expected outcomes are typed; each maps to one HTTP status.

    KVSError                      (base; never raised itself)
    ├── ConfigError               start-up only: bad or unknown setting
    ├── BadRequest          400   malformed body, wrong type, unknown field, bad key
    ├── Unauthorized        401   /internal/ request without a valid HMAC; no valid ACL token
    ├── ACLDisabled         401   an /acl/ request while acl_enabled is false (as Consul)
    ├── Forbidden           403   the ACL token's policies do not allow the request
    ├── NotFound            404   key absent / deleted / expired
    ├── RequestTimeout      408   the request body did not arrive in time
    ├── CASConflict         409   a condition did not hold; carries `current` or `failed`
    ├── QuorumKey           409   a local write to a key that is written with consistency=quorum
    ├── Conflict            409   the request contradicts the state (a second ACL bootstrap)
    ├── TooLarge            413   value or body over the limit
    ├── CASDisabled         501   a condition was sent while cas_enabled is false
    ├── StorageFailed       503   a RocksDB write or fsync failed: writes refused until it heals
    │   └── StorageFull     507   the same, because the disk is full
    ├── ClockSkew           503   this node's clock is off from its peers': writes refused
    ├── Overloaded          503   a per-node limit is reached: retry after Retry-After seconds
    ├── QuorumUnavailable   503   no majority of voters answered; nothing was written
    └── QuorumIndeterminate 503   a quorum write may or may not have been applied

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

    def headers(self) -> dict[str, str]:
        """Response headers the answer needs besides its body (e.g. Retry-After)."""
        return {}


class ConfigError(KVSError):
    code = "config"


class BadRequest(KVSError):
    status = 400
    code = "bad_request"


class Unauthorized(KVSError):
    status = 401
    code = "unauthorized"


class Forbidden(KVSError):
    status = 403
    code = "forbidden"


class NotFound(KVSError):
    status = 404
    code = "not_found"


class CASConflict(KVSError):
    status = 409
    code = "cas_conflict"


class QuorumKey(KVSError):
    status = 409
    code = "quorum_key"


class Conflict(KVSError):
    status = 409
    code = "conflict"


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


class ACLDisabled(KVSError):
    status = 401
    code = "acl_disabled"

    def __init__(self) -> None:
        super().__init__("ACLs are disabled on this node; set acl_enabled: true in the config "
                         "file (or KVS_ACL_ENABLED=true) on every node and restart them")


class StorageFailed(KVSError):
    status = 503
    code = "storage_failed"


class StorageFull(StorageFailed):
    status = 507
    code = "storage_full"


class ClockSkew(KVSError):
    status = 503
    code = "clock_skew"


class RequestTimeout(KVSError):
    status = 408
    code = "request_timeout"


class Overloaded(KVSError):
    """A per-node resource limit is reached; nothing was done. The client should retry
    after `retry_after` seconds, or try another node."""

    status = 503

    def __init__(self, code: str, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class QuorumUnavailable(KVSError):
    status = 503
    code = "quorum_unavailable"


class QuorumIndeterminate(KVSError):
    status = 503
    code = "quorum_indeterminate"

"""Node-to-node: `transport` (HTTP between peers), `auth` (HMAC of /internal/),
`swim` (membership) and `replication` (eager push and Merkle anti-entropy)."""

// Writes as the UI makes them: never blind. Every change to an existing key carries
// if_version of the version the user saw, a create carries cas: 0, so a concurrent
// change is a 409 (or a 404 if the key went away) and the user decides, never a silent
// overwrite. A pending change is an *intent* that can be retried on top of another
// version after a conflict.

import { kvPath, request } from "./api.js";

/** What the user asked for: {kind: "put", value, ttl} or {kind: "delete"}. */
export const putIntent = (value, ttl = null) => ({ kind: "put", value, ttl });
export const deleteIntent = () => ({ kind: "delete" });

/**
 * Apply an intent on top of `base` (the version the user saw; null: the key was absent).
 * Flags are kept: a write without them would reset them to 0.
 */
export function apply(key, intent, base) {
  if (intent.kind === "delete") {
    return request("DELETE", kvPath(key, { if_version: base.version }));
  }
  const body = { value: intent.value };
  if (intent.ttl !== null) body.ttl = intent.ttl;
  if (base) {
    body.if_version = base.version;
    if (base.flags) body.flags = base.flags;
  } else {
    body.cas = 0;
  }
  return request("PUT", kvPath(key), { body });
}

/** Whether a write answer means "the key is not as the user saw it". */
export const isConflict = (reply) => reply.status === 409 || reply.status === 404;

/** The key's current version with its value, or null if absent. */
export async function current(key, signal) {
  const reply = await request("GET", kvPath(key), { signal });
  if (reply.status === 404) return null;
  if (!reply.ok) throw new Error(reply.body?.message ?? `HTTP ${reply.status}`);
  return reply.body;
}

/**
 * A value typed by the user: JSON, or the text itself when `asString`. Throws with a
 * message fit for the form when it is neither.
 */
export function parseValue(text, asString) {
  if (asString) return text;
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`Not valid JSON (${err.message}). Tick "plain string" to store the text as it is.`);
  }
}

/** A TTL field: empty is none; else seconds > 0. */
export function parseTtl(text) {
  const trimmed = text.trim();
  if (!trimmed) return null;
  const seconds = Number(trimmed);
  if (!Number.isFinite(seconds) || seconds <= 0) throw new Error("TTL must be a number of seconds greater than 0.");
  return seconds;
}

/** Flags beyond 2^53 do not survive a JavaScript number: the UI refuses to rewrite them. */
export const flagsSafe = (version) => Number.isSafeInteger(version.flags);

/** The folder a key or folder lives in: "a/b/c" -> "a/b/", "a/b/" -> "a/", "a" -> "". */
export function parentFolder(path) {
  const cut = path.endsWith("/") ? path.slice(0, -1) : path;
  return cut.slice(0, cut.lastIndexOf("/") + 1);
}

// How values, times and versions are shown, in one place.

export const pretty = (value) => JSON.stringify(value, null, 2);
export const compact = (value) => JSON.stringify(value);

/** The first 8 hex digits of a version UUID: enough to tell versions apart on screen. */
export const shortId = (uuid) => (uuid ? uuid.slice(0, 8) : "none");

/** An absolute time in UTC, to the millisecond: nodes and users may be in other zones. */
export function when(ms) {
  return ms == null ? "never" : new Date(ms).toISOString().replace("T", " ").replace("Z", " UTC");
}

/** A hybrid logical clock stamp: wall time and the logical counter. */
export const hlc = (v) => `${when(v.timestamp)} #${v.logical}`;

/** "3 s ago", "4 min ago". */
export function ago(ms, now = Date.now()) {
  if (ms == null) return "never";
  const seconds = Math.max(0, Math.round((now - ms) / 1000));
  return seconds < 120 ? `${seconds} s ago` : `${Math.round(seconds / 60)} min ago`;
}

/** Time left until `expiresAt` (ms since the epoch): "4.2 s", "3 min 05 s", or "expired". */
export function remaining(expiresAt, now = Date.now()) {
  const ms = expiresAt - now;
  if (ms <= 0) return "expired";
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.floor(ms / 1000);
  const [d, hh, mm, ss] = [Math.floor(s / 86400), Math.floor(s / 3600) % 24, Math.floor(s / 60) % 60, s % 60];
  const pad = (n) => String(n).padStart(2, "0");
  return d ? `${d} d ${hh} h` : hh ? `${hh} h ${pad(mm)} min` : `${mm} min ${pad(ss)} s`;
}

/** The text a version's value is edited and compared as: JSON, except a plain string. */
export const editable = (value) => (typeof value === "string" ? value : pretty(value));

/** "1 key", "12 keys". */
export const count = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

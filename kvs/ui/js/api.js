// The HTTP API as the UI uses it: JSON in and out, the X-KVS-Index of KV answers,
// blocking-query watches, and whether this node answers at all (the header's
// "unreachable" indicator). Only the public API: /kv, /cluster/*, /services, /health.

const WAIT = "30s";       // one blocking query's longest wait
const RETRY_MS = 1000;    // pause before asking an unreachable node again

const listeners = new Set();
let reachable = null;     // unknown until the first answer

/** Call fn(reachable) now and whenever this node starts or stops answering. */
export function onReachability(fn) {
  listeners.add(fn);
  if (reachable !== null) fn(reachable);
}

function setReachable(value) {
  if (value === reachable) return;
  reachable = value;
  for (const fn of listeners) fn(value);
}

/** Thrown when no answer came back at all (as opposed to an error status). */
export class Unreachable extends Error {}

/** A URL path with query parameters (undefined and null ones left out). */
export function url(path, params = {}) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null) query.set(name, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

/**
 * The /kv path of a key or prefix. The whole key is percent-encoded, `/` included:
 * a browser would otherwise resolve `.` and `..` segments of a key like `a/../b`.
 */
export function kvPath(key, params) {
  return url("/kv/" + encodeURIComponent(key), params);
}

/**
 * One request. Resolves to {status, ok, body, index} for any HTTP answer (errors
 * included: the caller decides what a 404 or 409 means); rejects with Unreachable
 * when nothing answered. `origin` sends it to another member (no reachability change:
 * the indicator is about this node). Once `signal` aborts (the view is gone) it never
 * settles, so no view has to tell an abort from a failure.
 */
export async function request(method, path, { body, signal, origin = "" } = {}) {
  const init = { method, signal };
  if (body !== undefined) {
    init.body = typeof body === "string" ? body : JSON.stringify(body);
    init.headers = { "Content-Type": "application/json" };
  }
  let response, text;
  try {
    response = await fetch(origin + path, init);
    text = await response.text();
  } catch (err) {
    if (signal?.aborted) return new Promise(() => {});
    if (!origin) setReachable(false);
    throw new Unreachable(`${origin || "this node"} did not answer: ${err.message}`);
  }
  if (!origin) setReachable(true);
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = text; }
  }
  return { status: response.status, ok: response.ok, body: data, text,
           index: Number(response.headers.get("X-KVS-Index")) || 0 };
}

/**
 * Ask GET /health every `ms`, waiting at most as long: a node that stops answering
 * shows as unreachable even while a blocking query to it is still open (a hung node,
 * a dropped network), and as reachable again as soon as it answers.
 */
export function heartbeat(ms) {
  setInterval(async () => {
    try {
      await fetch("/health", { signal: AbortSignal.timeout(ms) });
      setReachable(true);
    } catch {
      setReachable(false);
    }
  }, ms);
}

/** A readable message for a failed answer: the server's own message when there is one. */
export function problem(reply) {
  return reply.body?.message ?? `HTTP ${reply.status}`;
}

/**
 * Keep a read up to date: onAnswer(reply) gets a plain read at once and then every
 * answer of a blocking query (?index=&wait=) on the same read, until `signal` aborts.
 * A wake-up is not a promise of a change, so onAnswer must be fine with the same data.
 * While the node is unreachable it is asked again every second.
 */
export async function watch(path, params, onAnswer, signal) {
  let index = 0;
  while (!signal.aborted) {
    try {
      const reply = await request("GET", url(path, index ? { ...params, index, wait: WAIT } : params),
                                  { signal });
      await onAnswer(reply);
      if (!reply.index) await sleep(RETRY_MS, signal);  // no index to block on (a 5xx)
      index = reply.index;
    } catch (err) {
      if (!(err instanceof Unreachable)) console.error(err);
      index = 0;
      await sleep(RETRY_MS, signal);
    }
  }
}

/** Resolve after ms, or at once when signal aborts. */
export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

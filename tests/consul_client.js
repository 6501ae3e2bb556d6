// The npm `consul` client against a kvs node's /v1/ API (run by tests/test_consul_npm.py).
// Usage: KVS_PORT=<port> NODE_PATH=<dir>/node_modules node consul_client.js
// Exits 0 and prints "ok" when every case holds; any failed assertion exits non-zero.
"use strict";

const assert = require("node:assert/strict");
const Consul = require("consul");

const consul = new Consul({ host: "127.0.0.1", port: Number(process.env.KVS_PORT) });

// The server answers `false` to a refused write; the client hands that back as undefined
// (papi drops a falsy body), as it does with Consul itself.
function refused(answer) {
  assert.ok(answer === false || answer === undefined, `expected a refusal, got ${answer}`);
}

function nextChange(watch) {
  return new Promise((resolve, reject) => {
    watch.once("change", (data, res) => resolve({ data, res }));
    watch.once("error", reject);
  });
}

async function putGetDelete() {
  assert.equal(await consul.kv.set({ key: "js/a", value: "hello", flags: 7 }), true);
  const item = await consul.kv.get("js/a");
  assert.equal(item.Key, "js/a");
  assert.equal(item.Value, "hello");
  assert.equal(item.Flags, 7);
  const binary = Buffer.from([0, 255, 1, 254, 128]);
  assert.equal(await consul.kv.set("js/bin", binary), true);
  assert.deepEqual((await consul.kv.get({ key: "js/bin", buffer: true })).Value, binary);
  assert.deepEqual(Buffer.from(await consul.kv.get({ key: "js/bin", raw: true })), binary);
  assert.equal(await consul.kv.del("js/a"), true);
  assert.equal(await consul.kv.get("js/a"), undefined);
  assert.equal(await consul.kv.del("js/a"), true); // a missing key deletes fine
}

async function cas() {
  assert.equal(await consul.kv.set({ key: "js/c", value: "1", cas: 0 }), true);
  refused(await consul.kv.set({ key: "js/c", value: "2", cas: 0 }));
  const item = await consul.kv.get("js/c");
  assert.equal(await consul.kv.set({ key: "js/c", value: "3", cas: item.ModifyIndex }), true);
  refused(await consul.kv.set({ key: "js/c", value: "4", cas: item.ModifyIndex }));
  refused(await consul.kv.set({ key: "js/missing", value: "x", cas: 5 }));
  assert.equal((await consul.kv.get("js/c")).Value, "3");
  assert.equal(await consul.kv.get("js/missing"), undefined);
}

async function listings() {
  for (const key of ["js/d/x", "js/d/y", "js/e"]) {
    assert.equal(await consul.kv.set(key, key.toUpperCase()), true);
  }
  const all = await consul.kv.get({ key: "js/", recurse: true });
  assert.deepEqual(all.map((i) => [i.Key, i.Value]), [
    ["js/bin", "\u0000\ufffd\u0001\ufffd\ufffd"], ["js/c", "3"], ["js/d/x", "JS/D/X"],
    ["js/d/y", "JS/D/Y"], ["js/e", "JS/E"]]);
  assert.deepEqual(await consul.kv.keys({ key: "js/", separator: "/" }),
    ["js/bin", "js/c", "js/d/", "js/e"]);
  assert.deepEqual(await consul.kv.keys("js/d/"), ["js/d/x", "js/d/y"]);
  assert.equal(await consul.kv.del({ key: "js/d/", recurse: true }), true);
  assert.deepEqual(await consul.kv.keys({ key: "js/", separator: "/" }), ["js/bin", "js/c", "js/e"]);
}

async function blocking() {
  assert.equal(await consul.kv.set("js/w", "v1"), true);
  const watch = consul.watch({ method: consul.kv.get, options: { key: "js/w", wait: "300ms" } });
  try {
    const first = await nextChange(watch);
    assert.equal(first.data.Value, "v1");
    const index = first.res.headers["x-consul-index"];
    // No write: a blocking get answers when its wait runs out, with the same index.
    const started = Date.now();
    const quiet = await consul.kv.get({ key: "js/w", index, wait: "300ms" });
    assert.ok(Date.now() - started >= 250, "the blocking get answered before its wait");
    assert.equal(quiet.ModifyIndex, first.data.ModifyIndex);
    // A write wakes the watch's blocking get.
    const second = nextChange(watch);
    assert.equal(await consul.kv.set("js/w", "v2"), true);
    const changed = await second;
    assert.equal(changed.data.Value, "v2");
    assert.ok(BigInt(changed.res.headers["x-consul-index"]) > BigInt(index));
  } finally {
    watch.end();
  }
}

async function transactions() {
  const b64 = (text) => Buffer.from(text).toString("base64");
  const ok = await consul.transaction.create([
    { KV: { Verb: "set", Key: "js/t/a", Value: b64("A") } },
    { KV: { Verb: "get", Key: "js/t/a" } },
  ]);
  assert.equal(ok.Errors, null);
  assert.deepEqual(ok.Results.map((r) => [r.KV.Key, r.KV.Value]), [["js/t/a", null], ["js/t/a", b64("A")]]);
  await assert.rejects(
    consul.transaction.create([
      { KV: { Verb: "set", Key: "js/t/b", Value: b64("B") } },
      { KV: { Verb: "cas", Key: "js/t/a", Value: b64("A2"), Index: 999999 } },
    ]),
    (err) => err.statusCode === 409,
  );
  assert.deepEqual(await consul.kv.keys("js/t/"), ["js/t/a"]); // the failed txn wrote nothing
  assert.equal((await consul.kv.get("js/t/a")).Value, "A");
}

async function sessions() {
  const { ID: id } = await consul.session.create({ name: "js-session", ttl: "30s", lockdelay: "0s" });
  const info = await consul.session.info(id);
  assert.equal(info.ID, id);
  assert.equal(info.Name, "js-session");
  assert.equal(info.TTL, "30s");
  assert.equal(info.LockDelay, 0);
  assert.equal(info.Behavior, "release");
  assert.ok((await consul.session.list()).some((s) => s.ID === id));
  assert.deepEqual((await consul.session.node(info.Node)).map((s) => s.ID).includes(id), true);
  const [renewed] = await consul.session.renew(id);
  assert.equal(renewed.ID, id);
  await consul.session.destroy(id); // the client hands back nothing (utils.empty)
  assert.equal(await consul.session.info(id), undefined);
  await assert.rejects(consul.session.renew(id), (err) => err.statusCode === 404);
  await assert.rejects(consul.session.create({ ttl: "10x" }),
    (err) => err.statusCode === 400 && /invalid TTL/.test(String(err.response.body)));
}

async function locks() {
  const { ID: one } = await consul.session.create({ lockdelay: "0s" });
  const { ID: two } = await consul.session.create({ lockdelay: "0s" });
  assert.equal(await consul.kv.set({ key: "js/lock", value: "one", acquire: one }), true);
  refused(await consul.kv.set({ key: "js/lock", value: "two", acquire: two }));
  let item = await consul.kv.get("js/lock");
  assert.equal(item.Session, one);
  assert.equal(item.LockIndex, 1);
  assert.equal(item.Value, "one");
  refused(await consul.kv.set({ key: "js/lock", value: "two", release: two }));
  assert.equal(await consul.kv.set({ key: "js/lock", value: "free", release: one }), true);
  assert.equal(await consul.kv.set({ key: "js/lock", value: "two", acquire: two }), true);
  item = await consul.kv.get("js/lock");
  assert.equal(item.Session, two);
  assert.equal(item.LockIndex, 2);
  await assert.rejects(consul.kv.set({ key: "js/lock", value: "x", acquire: "no-such-session" }),
    (err) => err.statusCode === 400 && /invalid session/.test(String(err.response.body)));
  // A session that is not renewed expires (TTL plus Consul's grace) and its lock is released.
  const { ID: short } = await consul.session.create({ ttl: "1s", lockdelay: "0s" });
  assert.equal(await consul.kv.set({ key: "js/expiring", value: "v", acquire: short }), true);
  const deadline = Date.now() + 15000;
  while ((await consul.kv.get("js/expiring")).Session === short) {
    assert.ok(Date.now() < deadline, "the expired session's lock was not released");
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.equal(await consul.kv.set({ key: "js/expiring", value: "w", acquire: one }), true);
}

async function main() {
  await putGetDelete();
  await cas();
  await listings();
  await blocking();
  await transactions();
  await sessions();
  await locks();
  console.log("ok");
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

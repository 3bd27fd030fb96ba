// matrix-js-sdk drives porch: relations, threads, search, key backup and push.
//
//   node scenario.mjs <base URL of porch's client API>
//
// Prints `js-sdk scenario: OK` when every step held; otherwise names the
// step that failed, with the request's answer, and exits 1.

import {
  ClientPrefix,
  createClient,
  Direction,
  FeatureSupport,
  Method,
  PushRuleKind,
  Thread,
  ThreadFilterType,
} from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

logger.setLevel("error");

const base = process.argv[2];
if (!base) {
  console.error("usage: node scenario.mjs <base URL>");
  process.exit(2);
}

const PASSWORD = "correct horse battery";
const suffix = Date.now().toString(36);
let current = "start";

class Failure extends Error {}

function fail(message, detail) {
  throw new Failure(detail === undefined ? message : `${message}\n  got: ${show(detail)}`);
}

function check(condition, message, detail) {
  if (!condition) fail(message, detail);
}

/** JSON with object keys sorted, so equal() ignores key order (arrays keep theirs). */
function canonical(value) {
  return JSON.stringify(value, (_, v) =>
    v && typeof v === "object" && !Array.isArray(v)
      ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, v[k]]))
      : v,
  );
}

function equal(got, want, message) {
  if (canonical(got) !== canonical(want)) {
    fail(`${message}: expected ${show(want)}`, got);
  }
}

function show(value) {
  try {
    return JSON.stringify(value);
  } catch {
    return String(value);
  }
}

/** What a failed request answered, for the report. */
function describe(error) {
  if (error?.httpStatus !== undefined) {
    return `HTTP ${error.httpStatus} ${error.errcode ?? ""} ${show(error.data)} (${error.url ?? "?"})`;
  }
  return error?.stack ?? String(error);
}

async function step(name, body) {
  current = name;
  await body();
  console.log(`ok: ${name}`);
}

/** Expect a request to be refused; returns the MatrixError. */
async function refused(promise, message) {
  try {
    const answer = await promise;
    fail(`${message}: the request succeeded`, answer);
  } catch (error) {
    if (error instanceof Failure) throw error;
    return error;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Register through the UIA flow (a first call gets 401 with flows and a session), then log in. */
async function account(name) {
  const anonymous = createClient({ baseUrl: base });
  const username = `${name}${suffix}`;
  let session;
  try {
    const answer = await anonymous.registerRequest({ username, password: PASSWORD });
    fail(`register ${name} without auth should answer 401 with flows`, answer);
  } catch (error) {
    if (error instanceof Failure) throw error;
    check(error.httpStatus === 401, `register ${name} without auth: expected 401`, describe(error));
    const flows = error.data?.flows ?? [];
    check(
      flows.some((flow) => flow.stages?.includes("m.login.dummy")),
      "register's 401 should offer an m.login.dummy flow",
      error.data,
    );
    session = error.data?.session;
    check(typeof session === "string" && session.length > 0, "register's 401 should carry a session", error.data);
  }
  const registered = await anonymous.registerRequest({
    username,
    password: PASSWORD,
    auth: { type: "m.login.dummy", session },
    inhibit_login: true,
  });
  check(registered.user_id?.startsWith(`@${username}:`), `register ${name}: user_id`, registered);

  const login = await anonymous.loginRequest({
    type: "m.login.password",
    identifier: { type: "m.id.user", user: username },
    password: PASSWORD,
    initial_device_display_name: `js-sdk ${name}`,
  });
  check(login.access_token && login.device_id, `login ${name}`, login);
  equal(login.user_id, registered.user_id, `login ${name}: user_id`);
  const client = createClient({
    baseUrl: base,
    accessToken: login.access_token,
    userId: login.user_id,
    deviceId: login.device_id,
  });
  const whoami = await client.whoami();
  equal(whoami.user_id, login.user_id, `whoami of ${name}`);
  return client;
}

const text = (body, extra = {}) => ({ msgtype: "m.text", body, ...extra });

async function send(client, roomId, content, type = "m.room.message") {
  const { event_id: eventId } = await client.sendEvent(roomId, type, content);
  check(typeof eventId === "string" && eventId.startsWith("$"), `send ${type}: event_id`, eventId);
  return eventId;
}

const ids = (chunk) => (chunk ?? []).map((event) => event.event_id);
const sameSet = (got, want) => JSON.stringify([...got].sort()) === JSON.stringify([...want].sort());

let alice, bob, carol, roomId;

async function main() {
  await step("register and log in alice, bob and carol; alice makes a room they join", async () => {
    alice = await account("alice");
    bob = await account("bob");
    // A third member who neither starts nor answers the thread, for the
    // `current_user_participated: false` case (the root's sender has participated).
    carol = await account("carol");
    const room = await alice.createRoom({ preset: "public_chat", name: "js-sdk scenario" });
    roomId = room.room_id;
    check(roomId?.startsWith("!"), "createRoom: room_id", room);
    for (const client of [bob, carol]) {
      await client.joinRoom(roomId);
    }
    const members = await alice.getJoinedRoomMembers(roomId);
    check(
      sameSet(Object.keys(members.joined ?? {}), [alice.getUserId(), bob.getUserId(), carol.getUserId()]),
      "joined_members should list the three users",
      members,
    );
  });

  let original, reaction, edit1, edit2, reference;
  await step("relations: annotation, replace, reference", async () => {
    original = await send(alice, roomId, text("the original message"));
    reaction = await send(
      bob,
      roomId,
      { "m.relates_to": { rel_type: "m.annotation", event_id: original, key: "👍" } },
      "m.reaction",
    );
    edit1 = await send(
      alice,
      roomId,
      text("* the edited message", {
        "m.new_content": text("the edited message"),
        "m.relates_to": { rel_type: "m.replace", event_id: original },
      }),
    );
    await sleep(20); // distinct origin_server_ts, so "latest edit" is unambiguous
    edit2 = await send(
      alice,
      roomId,
      text("* the edited message, twice", {
        "m.new_content": text("the edited message, twice"),
        "m.relates_to": { rel_type: "m.replace", event_id: original },
      }),
    );
    reference = await send(
      bob,
      roomId,
      text("see that message", { "m.relates_to": { rel_type: "m.reference", event_id: original } }),
    );

    const all = await alice.fetchRelations(roomId, original, null, null);
    check(
      sameSet(ids(all.chunk), [reaction, edit1, edit2, reference]),
      "GET /relations/{event}: all four relations",
      ids(all.chunk),
    );
    check(!all.next_batch, "GET /relations/{event}: no next_batch when everything fits", all);

    const annotations = await alice.fetchRelations(roomId, original, "m.annotation", null);
    equal(ids(annotations.chunk), [reaction], "GET /relations/{event}/m.annotation");
    const replaces = await alice.fetchRelations(roomId, original, "m.replace", null);
    check(sameSet(ids(replaces.chunk), [edit1, edit2]), "GET /relations/{event}/m.replace", ids(replaces.chunk));
    const references = await alice.fetchRelations(roomId, original, "m.reference", null);
    equal(ids(references.chunk), [reference], "GET /relations/{event}/m.reference");

    const reactions = await alice.fetchRelations(roomId, original, "m.annotation", "m.reaction");
    equal(ids(reactions.chunk), [reaction], "GET /relations/{event}/m.annotation/m.reaction");
    const edits = await alice.fetchRelations(roomId, original, "m.replace", "m.room.message");
    check(sameSet(ids(edits.chunk), [edit1, edit2]), "GET /relations/{event}/m.replace/m.room.message", ids(edits.chunk));
    const none = await alice.fetchRelations(roomId, original, "m.annotation", "m.room.message");
    equal(ids(none.chunk), [], "GET /relations/{event}/m.annotation/m.room.message (no such pair)");

    // Backwards (the default) is newest first; pages of two.
    const first = await alice.fetchRelations(roomId, original, null, null, { dir: Direction.Backward, limit: 2 });
    equal(ids(first.chunk), [reference, edit2], "GET /relations/{event}?dir=b&limit=2: the newest two");
    check(first.next_batch, "GET /relations/{event}?limit=2: next_batch for the rest", first);
    const second = await alice.fetchRelations(roomId, original, null, null, {
      dir: Direction.Backward,
      limit: 2,
      from: first.next_batch,
    });
    equal(ids(second.chunk), [edit1, reaction], "GET /relations/{event}?from=next_batch: the older two");
    check(!second.next_batch, "GET /relations/{event}: no next_batch after the last page", second);

    // The SDK's own wrapper: original event plus mapped relations.
    const wrapped = await bob.relations(roomId, original, "m.replace", null);
    equal(wrapped.originalEvent?.getId(), original, "client.relations(): the original event");
    check(sameSet(wrapped.events.map((e) => e.getId()), [edit1, edit2]), "client.relations(): the edits", wrapped.events.map((e) => e.getId()));

    const event = await bob.fetchRoomEvent(roomId, original);
    const bundled = event.unsigned?.["m.relations"];
    check(bundled, "GET /rooms/{room}/event/{event}: unsigned.m.relations is missing", event.unsigned);
    const replace = bundled["m.replace"];
    check(replace, "unsigned.m.relations.m.replace is missing", bundled);
    equal(replace.event_id, edit2, "unsigned.m.relations.m.replace: the latest edit");
    equal(
      ids(bundled["m.reference"]?.chunk),
      [reference],
      "unsigned.m.relations.m.reference.chunk: the reference",
    );
    equal(event.content?.body, "the original message", "/event keeps the original content (spec v1.7)");
  });

  let root, reply1, reply2;
  await step("threads: bundled m.thread and the thread list", async () => {
    check(
      await alice.isVersionSupported("v1.4"),
      "/versions should advertise v1.4 (threads, the thread list)",
      await alice.getVersions(),
    );
    // What startClient() does: tell the SDK the server lists threads (stable /v1/threads).
    const support = await alice.doesServerSupportThread();
    equal(support.list, FeatureSupport.Stable, "doesServerSupportThread(): stable thread list");
    Thread.setServerSideSupport(support.threads);
    Thread.setServerSideListSupport(support.list);
    Thread.setServerSideFwdPaginationSupport(support.fwdPagination);

    root = await send(alice, roomId, text("a thread starts here"));
    const inThread = (body, previous) =>
      text(body, {
        "m.relates_to": {
          rel_type: "m.thread",
          event_id: root,
          is_falling_back: true,
          "m.in_reply_to": { event_id: previous },
        },
      });
    const { event_id: r1 } = await bob.sendEvent(roomId, root, "m.room.message", inThread("first answer", root));
    reply1 = r1;
    const { event_id: r2 } = await bob.sendEvent(roomId, root, "m.room.message", inThread("second answer", reply1));
    reply2 = r2;

    const replies = await alice.fetchRelations(roomId, root, "m.thread", null);
    check(sameSet(ids(replies.chunk), [reply1, reply2]), "GET /relations/{root}/m.thread: the two replies", ids(replies.chunk));

    const expectThread = (event, who, participated) => {
      const thread = event.unsigned?.["m.relations"]?.["m.thread"];
      check(thread, `${who}'s view of the root: unsigned.m.relations.m.thread is missing`, event.unsigned);
      equal(thread.count, 2, `${who}'s view: m.thread.count`);
      equal(thread.latest_event?.event_id, reply2, `${who}'s view: m.thread.latest_event`);
      equal(thread.latest_event?.content?.body, "second answer", `${who}'s view: latest_event content`);
      equal(thread.current_user_participated, participated, `${who}'s view: m.thread.current_user_participated`);
    };
    // Participated = sent the root or a reply (spec, Threading: server-side aggregation).
    expectThread(await alice.fetchRoomEvent(roomId, root), "alice (root's sender)", true);
    expectThread(await bob.fetchRoomEvent(roomId, root), "bob (replied)", true);
    expectThread(await carol.fetchRoomEvent(roomId, root), "carol (neither)", false);

    const list = async (client, type) =>
      client.createThreadListMessagesRequest(roomId, null, 20, Direction.Backward, type);
    const bobAll = await list(bob, ThreadFilterType.All);
    equal(ids(bobAll.chunk), [root], "GET /v1/rooms/{room}/threads?include=all for bob");
    equal(
      bobAll.chunk[0]?.unsigned?.["m.relations"]?.["m.thread"]?.count,
      2,
      "the thread list's root carries its bundled m.thread",
    );
    const bobMine = await list(bob, ThreadFilterType.My);
    equal(ids(bobMine.chunk), [root], "GET /v1/rooms/{room}/threads?include=participated for bob (replied)");
    const aliceMine = await list(alice, ThreadFilterType.My);
    equal(ids(aliceMine.chunk), [root], "threads?include=participated for alice (root's sender)");
    const carolAll = await list(carol, ThreadFilterType.All);
    equal(ids(carolAll.chunk), [root], "threads?include=all for carol");
    const carolMine = await list(carol, ThreadFilterType.My);
    equal(ids(carolMine.chunk), [], "threads?include=participated for carol (neither)");
  });

  await step("search: a distinctive word, and paging with next_batch", async () => {
    const word = `zanzibar${suffix}`;
    const matches = [];
    for (let i = 0; i < 12; i++) {
      matches.push(await send(i % 2 ? bob : alice, roomId, text(`message ${i} about ${word} here`)));
    }
    const other = await send(bob, roomId, text("a message about something else entirely"));

    const filter = { limit: 5, rooms: [roomId] };
    const results = await alice.searchRoomEvents({ term: word, filter });
    const page1 = results.results.map((r) => r.context.getEvent().getId());
    equal(page1.length, 5, "search with filter.limit 5: first page size");
    check(results.next_batch, "search: next_batch when more than 5 match", { count: results.count });
    check(results.count >= 12, "search: count covers the 12 matches", results.count);
    let pages = 1;
    while (results.next_batch && pages < 10) {
      await alice.backPaginateRoomEventsSearch(results);
      pages += 1;
    }
    const found = results.results.map((r) => r.context.getEvent().getId());
    check(!results.next_batch, "search: next_batch should run out", { pages, found: found.length });
    equal(found.length, 12, "search: results over all pages");
    check(sameSet(found, matches), "search: exactly the matching events, each once", { found, matches });
    check(!found.includes(other), "search: the message without the word is not a result", found);
    check(
      results.results.every((r) => r.context.getEvent().getContent().body.includes(word)),
      "search: every result contains the word",
    );
    // Order by recent: newest first.
    equal(found[0], matches[11], "search (order_by recent): the newest match first");

    const elsewhere = await bob.search({
      body: { search_categories: { room_events: { search_term: "entirely", filter: { rooms: [roomId] } } } },
    });
    const hits = ids(elsewhere.search_categories.room_events.results.map((r) => r.result));
    equal(hits, [other], "search for a word only the other message has");
  });

  await step("key backup: version, keys, count and etag, delete", async () => {
    // matrix-js-sdk 37 reaches /room_keys only from its Rust crypto, which this
    // scenario does not start: the requests go through the SDK's own HTTP layer
    // (client.http.authedRequest), as its crypto backend does.
    const v3 = { prefix: ClientPrefix.V3 };
    const algorithm = "m.megolm_backup.v1.curve25519-aes-sha2";
    const authData = { public_key: "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo" };
    const created = await alice.http.authedRequest(Method.Post, "/room_keys/version", undefined, {
      algorithm,
      auth_data: authData,
    }, v3);
    const version = created.version;
    check(typeof version === "string" && version.length > 0, "POST /room_keys/version: version", created);

    const info0 = await alice.http.authedRequest(Method.Get, "/room_keys/version", undefined, undefined, v3);
    equal(info0.version, version, "GET /room_keys/version: the current version");
    equal(info0.algorithm, algorithm, "GET /room_keys/version: algorithm");
    equal(info0.auth_data, authData, "GET /room_keys/version: auth_data");
    equal(info0.count, 0, "GET /room_keys/version: count of a new backup");
    check(typeof info0.etag === "string", "GET /room_keys/version: etag", info0);

    const keyPath = (session) =>
      `/room_keys/keys/${encodeURIComponent(roomId)}/${encodeURIComponent(session)}`;
    const keyData = (n) => ({
      first_message_index: 1,
      forwarded_count: 0,
      is_verified: false,
      session_data: { ephemeral: `ephemeral${n}`, ciphertext: `ciphertext${n}`, mac: `mac${n}` },
    });
    const put1 = await alice.http.authedRequest(Method.Put, keyPath("session1"), { version }, keyData(1), v3);
    equal(put1.count, 1, "PUT /room_keys/keys/{room}/{session}: count after the first key");
    check(typeof put1.etag === "string" && put1.etag !== info0.etag, "the etag changes with the first key", { before: info0.etag, after: put1.etag });
    const put2 = await alice.http.authedRequest(Method.Put, keyPath("session2"), { version }, keyData(2), v3);
    equal(put2.count, 2, "PUT a second session: count");
    check(put2.etag !== put1.etag, "the etag changes with the second key", { before: put1.etag, after: put2.etag });

    const got = await alice.http.authedRequest(Method.Get, keyPath("session1"), { version }, undefined, v3);
    equal(got, keyData(1), "GET /room_keys/keys/{room}/{session}: the uploaded key");
    const room = await alice.http.authedRequest(Method.Get, `/room_keys/keys/${encodeURIComponent(roomId)}`, { version }, undefined, v3);
    check(sameSet(Object.keys(room.sessions ?? {}), ["session1", "session2"]), "GET /room_keys/keys/{room}: both sessions", room);
    const everything = await alice.http.authedRequest(Method.Get, "/room_keys/keys", { version }, undefined, v3);
    equal(everything.rooms?.[roomId]?.sessions?.session2, keyData(2), "GET /room_keys/keys: the second key");

    const info = await alice.http.authedRequest(Method.Get, `/room_keys/version/${encodeURIComponent(version)}`, undefined, undefined, v3);
    equal([info.version, info.count, info.etag], [version, 2, put2.etag], "GET /room_keys/version/{v}: version, count, etag");

    // The SDK's own call for deleting keys from the backup.
    await alice.deleteKeysFromBackup(roomId, "session1", version);
    const afterDelete = await alice.http.authedRequest(Method.Get, "/room_keys/version", undefined, undefined, v3);
    equal(afterDelete.count, 1, "count after deleteKeysFromBackup(room, session1)");
    check(afterDelete.etag !== put2.etag, "the etag changes when a key is deleted", { before: put2.etag, after: afterDelete.etag });
    const gone = await refused(
      alice.http.authedRequest(Method.Get, keyPath("session1"), { version }, undefined, v3),
      "GET a deleted key",
    );
    equal([gone.httpStatus, gone.errcode], [404, "M_NOT_FOUND"], "GET a deleted key");

    // A newer version makes the old one stale for uploads.
    const newer = await alice.http.authedRequest(Method.Post, "/room_keys/version", undefined, { algorithm, auth_data: authData }, v3);
    check(newer.version && newer.version !== version, "a second backup version", newer);
    const stale = await refused(
      alice.http.authedRequest(Method.Put, keyPath("session3"), { version }, keyData(3), v3),
      "PUT a key into a version that is not the current one",
    );
    equal([stale.httpStatus, stale.errcode], [403, "M_WRONG_ROOM_KEYS_VERSION"], "PUT into a stale version");
    equal(stale.data?.current_version, newer.version, "M_WRONG_ROOM_KEYS_VERSION: current_version");

    for (const v of [newer.version, version]) {
      await alice.http.authedRequest(Method.Delete, `/room_keys/version/${encodeURIComponent(v)}`, undefined, undefined, v3);
      const missing = await refused(
        alice.http.authedRequest(Method.Get, `/room_keys/version/${encodeURIComponent(v)}`, undefined, undefined, v3),
        `GET a deleted backup version ${v}`,
      );
      equal([missing.httpStatus, missing.errcode], [404, "M_NOT_FOUND"], `GET /room_keys/version/${v} after DELETE`);
    }
    const noCurrent = await refused(
      alice.http.authedRequest(Method.Get, "/room_keys/version", undefined, undefined, v3),
      "GET /room_keys/version with every version deleted",
    );
    equal([noCurrent.httpStatus, noCurrent.errcode], [404, "M_NOT_FOUND"], "GET /room_keys/version with none left");
  });

  await step("push: pusher, push rules, /notifications", async () => {
    const pusher = (url) => ({
      pushkey: `pushkey-${suffix}`,
      kind: "http",
      app_id: "org.porch.jssdk",
      app_display_name: "js-sdk scenario",
      device_display_name: "node",
      lang: "en",
      data: { url, format: "event_id_only" },
      append: false,
    });
    let url = "http://127.0.0.1:9/_matrix/push/v1/notify";
    try {
      await alice.setPusher(pusher(url));
    } catch (error) {
      // porch's outbound address guard may refuse a loopback gateway: it must
      // say so with a 400, and a gateway named by host name is then stored.
      check(error.httpStatus === 400, "POST /pushers/set with a loopback gateway: a refusal must be a 400", describe(error));
      console.log(`note: a gateway at 127.0.0.1 was refused: ${error.errcode} ${error.data?.error}`);
      url = "http://localhost:9/_matrix/push/v1/notify";
      await alice.setPusher(pusher(url));
    }
    const { pushers } = await alice.getPushers();
    const stored = pushers.find((p) => p.pushkey === `pushkey-${suffix}`);
    check(stored, "GET /pushers lists the pusher", pushers);
    equal(
      [stored.kind, stored.app_id, stored.data?.url, stored.app_display_name, stored.lang],
      ["http", "org.porch.jssdk", url, "js-sdk scenario", "en"],
      "GET /pushers: the stored pusher",
    );

    const findRule = async (client) => (await client.getPushRules()).global.content?.find((r) => r.rule_id === "myrule");
    await alice.addPushRule("global", PushRuleKind.ContentSpecific, "myrule", { pattern: "cake", actions: ["notify"] });
    let rule = await findRule(alice);
    check(rule, "getPushRules(): global.content has myrule", (await alice.getPushRules()).global.content);
    equal([rule.pattern, rule.enabled, rule.default, rule.actions], ["cake", true, false, ["notify"]], "myrule as added");

    await alice.setPushRuleEnabled("global", PushRuleKind.ContentSpecific, "myrule", false);
    rule = await findRule(alice);
    equal(rule?.enabled, false, "myrule after setPushRuleEnabled(false)");
    const disabledCake = await send(bob, roomId, text("cake while the rule is off", { "m.mentions": {} }));

    await alice.setPushRuleEnabled("global", PushRuleKind.ContentSpecific, "myrule", true);
    const highlight = ["notify", { set_tweak: "highlight" }];
    await alice.setPushRuleActions("global", PushRuleKind.ContentSpecific, "myrule", highlight);
    rule = await findRule(alice);
    equal([rule?.enabled, rule?.actions], [true, highlight], "myrule after enabling and setPushRuleActions");

    const cake = await send(bob, roomId, text("who wants more cake", { "m.mentions": {} }));
    const mention = await send(
      bob,
      roomId,
      text(`${alice.getUserId()}: a word with you`, { "m.mentions": { user_ids: [alice.getUserId()] } }),
    );

    const notifications = async (params) =>
      (await alice.http.authedRequest(Method.Get, "/notifications", params)).notifications;
    // Notifications may be worked out just after the send returns: wait a little for them.
    let highlighted = [];
    for (let i = 0; i < 50; i++) {
      highlighted = await notifications({ only: "highlight", limit: "50" });
      if ([cake, mention].every((id) => highlighted.some((n) => n.event.event_id === id))) break;
      await sleep(100);
    }
    const highlightedIds = highlighted.map((n) => n.event.event_id);
    check(highlightedIds.includes(mention), "GET /notifications?only=highlight: bob's mention of alice", highlightedIds);
    check(highlightedIds.includes(cake), "GET /notifications?only=highlight: the message matching myrule", highlightedIds);
    check(!highlightedIds.includes(disabledCake), "a message sent while myrule was off is not highlighted", highlightedIds);
    const entry = highlighted.find((n) => n.event.event_id === mention);
    equal([entry.room_id, entry.read, typeof entry.ts], [roomId, false, "number"], "the mention's notification");
    check(
      entry.actions?.some((a) => a === "notify") && entry.actions?.some((a) => a?.set_tweak === "highlight"),
      "the mention's notification carries notify and highlight actions",
      entry.actions,
    );
    const all = (await notifications({ limit: "100" })).map((n) => n.event.event_id);
    check([cake, mention].every((id) => all.includes(id)), "GET /notifications lists both", all);

    await alice.deletePushRule("global", PushRuleKind.ContentSpecific, "myrule");
    equal(await findRule(alice), undefined, "getPushRules() after deletePushRule");
    const missing = await refused(
      alice.http.authedRequest(Method.Get, "/pushrules/global/content/myrule"),
      "GET a deleted push rule",
    );
    equal([missing.httpStatus, missing.errcode], [404, "M_NOT_FOUND"], "GET /pushrules/global/content/myrule after delete");

    await alice.removePusher(`pushkey-${suffix}`, "org.porch.jssdk");
    const after = await alice.getPushers();
    check(!after.pushers.some((p) => p.pushkey === `pushkey-${suffix}`), "removePusher: GET /pushers no longer lists it", after);
  });
}

try {
  await main();
  console.log("js-sdk scenario: OK");
  process.exit(0);
} catch (error) {
  const message = error instanceof Failure ? error.message : describe(error);
  console.log(`js-sdk scenario: FAILED in step "${current}": ${message}`);
  process.exit(1);
}

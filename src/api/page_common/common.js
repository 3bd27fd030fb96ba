// What the guest page and the invitation page share: element lookup, the
// message line, JSON calls that turn a Matrix error into a sentence, and
// the timeline's and member list's items. Loaded before each page's script.
"use strict";

const $ = (id) => document.getElementById(id);

function show(id, visible) { $(id).hidden = !visible; }

function say(text) {
  $("message").textContent = text;
  show("message", Boolean(text));
}

// `messages`: errcode → what to tell people; other errors keep the server's words.
async function callApi(messages, method, path, body, accessToken) {
  const headers = { "Content-Type": "application/json" };
  if (accessToken) headers.Authorization = `Bearer ${accessToken}`;
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(messages[data.errcode] || data.error || `The server answered ${response.status}.`);
    error.errcode = data.errcode;
    throw error;
  }
  return data;
}

// A message in the timeline: its sender's name, then its text.
function messageItem(senderName, content) {
  const item = document.createElement("li");
  const sender = document.createElement("span");
  sender.className = "sender";
  sender.textContent = senderName;
  const body = document.createElement("span");
  body.textContent = content.body;
  if (content.msgtype === "m.notice") body.className = "notice";
  item.append(sender, body);
  return item;
}

// A person in the member list, with the guest badge when they are one.
function memberItem(userId, member) {
  const item = document.createElement("li");
  item.textContent = member.name;
  item.title = userId;
  if (member.guest) {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = "guest";
    item.append(badge);
  }
  return item;
}

// What porch keeps of a member event for these pages.
function memberFrom(event) {
  return {
    name: event.content.displayname || event.state_key,
    membership: event.content.membership,
    guest: event.content["dev.porch.guest"] === true,
  };
}

// Long-poll /sync with `filter` while `active()` holds, giving each answer to
// `onSync` (which returns false to stop); a revoked token calls `onSignedOut`,
// other failures are retried after two seconds.
async function syncWhile(active, accessToken, filter, onSync, onSignedOut) {
  const encoded = encodeURIComponent(JSON.stringify(filter));
  let since = null;
  while (active()) {
    const query = `filter=${encoded}&timeout=${since ? 30000 : 0}${since ? `&since=${encodeURIComponent(since)}` : ""}`;
    let data;
    try {
      data = await callApi({}, "GET", `/_matrix/client/v3/sync?${query}`, undefined, accessToken);
    } catch (error) {
      if (error.errcode === "M_UNKNOWN_TOKEN") {
        onSignedOut();
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 2000));
      continue;
    }
    since = data.next_batch;
    if (onSync(data) === false) return;
  }
}

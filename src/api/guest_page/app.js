// The guest's page: preview a guest link, join it, and talk in the room.
// Plain JavaScript over porch's client API; no framework, no build step.
"use strict";

const token = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
const storageKey = `porch-guest:${token}`;
let session = JSON.parse(sessionStorage.getItem(storageKey) || "null");
let preview = null;
let members = new Map();

const MESSAGES = {
  M_NOT_FOUND: "This link does not exist or was revoked. Ask the person who sent it for a new one.",
  "DEV.PORCH.LINK_EXPIRED": "This link has expired. Ask the person who sent it for a new one.",
  "DEV.PORCH.LINK_USED_UP": "This link has been used as often as it may. Ask the person who sent it for a new one.",
  "DEV.PORCH.PASSWORD_REQUIRED": "This link needs a password.",
  "DEV.PORCH.ROOM_ENDED": "This conversation has ended.",
  M_LIMIT_EXCEEDED: "Too many tries from your network. Wait a moment and try again.",
};

const api = (method, path, body, accessToken) => callApi(MESSAGES, method, path, body, accessToken);

function showBanner(level) {
  if (!level || !level.label) return;
  const banner = $("banner");
  banner.textContent = level.label;
  banner.style.background = /^#[0-9a-fA-F]{6}$/.test(level.color || "") ? level.color : "#555";
  banner.setAttribute("aria-label", `Security level: ${level.label}`);
  show("banner", true);
}

async function loadPreview() {
  try {
    preview = await api("GET", `/_porch/client/v1/guest_links/${encodeURIComponent(token)}`);
  } catch (error) {
    $("room-name").textContent = "This link cannot be used";
    say(error.message);
    return;
  }
  document.title = preview.name || "Guest room";
  $("room-name").textContent = preview.name || "Guest room";
  $("room-topic").textContent = preview.topic || "";
  const count = preview.member_count;
  $("room-meta").textContent = `${count} ${count === 1 ? "person" : "people"} here · on ${preview.server_name}`;
  for (const el of document.querySelectorAll(".server-name")) el.textContent = preview.server_name;
  showBanner(preview.security_level);
  if (preview.ended) {
    say(MESSAGES["DEV.PORCH.ROOM_ENDED"]);
  } else if (preview.expires_at <= Date.now()) {
    say(MESSAGES["DEV.PORCH.LINK_EXPIRED"]);
  } else if (session) {
    startChat();
  } else {
    show("password-box", preview.requires_password);
    show("join", true);
  }
}

async function join(body, accessToken) {
  const password = $("link-password").value;
  if (preview.requires_password) body.password = password;
  return api("POST", `/_porch/client/v1/guest_links/${encodeURIComponent(token)}/join`, body, accessToken);
}

// Remember the session for reloads of this tab, and open the conversation.
function enterRoom(joined, accessToken) {
  session = { accessToken, userId: joined.user_id, roomId: joined.room_id };
  sessionStorage.setItem(storageKey, JSON.stringify(session));
  startChat();
}

function busy(form, on) {
  for (const button of form.querySelectorAll("button")) button.disabled = on;
}

$("guest-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  busy(event.target, true);
  say("");
  try {
    const joined = await join({ display_name: $("guest-name").value });
    enterRoom(joined, joined.access_token);
  } catch (error) {
    say(error.message);
  } finally {
    busy(event.target, false);
  }
});

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  busy(event.target, true);
  say("");
  try {
    const login = await api("POST", "/_matrix/client/v3/login", {
      type: "m.login.password",
      identifier: { type: "m.id.user", user: $("login-user").value },
      password: $("login-password").value,
      initial_device_display_name: "Guest link page",
    });
    enterRoom(await join({}, login.access_token), login.access_token);
  } catch (error) {
    say(error.message);
  } finally {
    busy(event.target, false);
  }
});

// A user of another server is invited there and accepts in their own app.
$("remote-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const userId = $("remote-user").value.trim();
  const server = userId.slice(userId.indexOf(":") + 1);
  if (!/^@[^:\s]+:[^\s]+$/.test(userId)) {
    say("Enter your Matrix ID, such as @you:example.org.");
    return;
  }
  busy(event.target, true);
  say("");
  try {
    await join({ user_id: userId });
    show("join", false);
    say(`An invitation was sent to ${userId}. Accept it in your Matrix app on ${server} to join.`);
  } catch (error) {
    say(error.errcode === "DEV.PORCH.SERVER_UNREACHABLE"
      ? `${server} cannot be reached right now. Check your Matrix ID, or try again later.`
      : error.message);
  } finally {
    busy(event.target, false);
  }
});

function renderMembers() {
  const list = $("members");
  list.replaceChildren();
  const here = [...members.values()].filter((m) => m.membership === "join").length;
  $("room-meta").textContent = `${here} ${here === 1 ? "person" : "people"} here · on ${preview.server_name}`;
  for (const [userId, member] of [...members.entries()].sort((a, b) => a[1].name.localeCompare(b[1].name))) {
    if (member.membership === "join") list.append(memberItem(userId, member));
  }
}

function nameOf(userId) {
  return (members.get(userId) || {}).name || userId;
}

function applyState(event) {
  if (event.type === "m.room.member") {
    members.set(event.state_key, memberFrom(event));
  } else if (event.type === "dev.porch.security_level") {
    showBanner(event.content);
  } else if (event.type === "m.room.name") {
    $("room-name").textContent = event.content.name || $("room-name").textContent;
  }
}

function appendEvent(event) {
  if (event.state_key !== undefined) applyState(event);
  if (event.type !== "m.room.message" || typeof event.content.body !== "string") return;
  $("timeline").append(messageItem(nameOf(event.sender), event.content));
  $("timeline").scrollTop = $("timeline").scrollHeight;
}

function syncLoop() {
  const gone = () => endSession("You are no longer in this conversation.");
  syncWhile(() => session, session.accessToken, { room: { rooms: [session.roomId], timeline: { limit: 50 } } }, (data) => {
    const room = ((data.rooms || {}).join || {})[session.roomId];
    if (room) {
      for (const event of (room.state || {}).events || []) applyState(event);
      for (const event of (room.timeline || {}).events || []) appendEvent(event);
      renderMembers();
    } else if (((data.rooms || {}).leave || {})[session.roomId]) {
      gone();
      return false;
    }
    return true;
  }, gone);
}

function startChat() {
  show("join", false);
  show("chat", true);
  say("");
  $("composer-input").focus();
  syncLoop();
}

function endSession(text) {
  sessionStorage.removeItem(storageKey);
  session = null;
  show("chat", false);
  say(text);
}

$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("composer-input");
  const body = input.value.trim();
  if (!body || !session) return;
  input.value = "";
  const txn = `web${Date.now()}${Math.random().toString(36).slice(2)}`;
  try {
    await api("PUT", `/_matrix/client/v3/rooms/${encodeURIComponent(session.roomId)}/send/m.room.message/${txn}`, { msgtype: "m.text", body }, session.accessToken);
  } catch (error) {
    say(error.message);
    input.value = body;
  }
});

$("leave").addEventListener("click", async () => {
  if (!session) return;
  try {
    await api("POST", `/_matrix/client/v3/rooms/${encodeURIComponent(session.roomId)}/leave`, {}, session.accessToken);
  } catch (error) {
    say(error.message);
    return;
  }
  endSession("You left the conversation.");
});

loadPreview();

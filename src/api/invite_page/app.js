// The invitation page: show an email invitation, create the external account
// it allows, then talk in its rooms. Plain JavaScript over porch's JSON API
// (/_porch/client/v1/invitations/{token}) and the Matrix client API.
"use strict";

const token = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
const storageKey = `porch-invite:${token}`;
let session = JSON.parse(sessionStorage.getItem(storageKey) || "null");
let preview = null;
// room id → { name, members: Map(userId → {name, membership, guest}), events: [] }
const rooms = new Map();
let currentRoom = null;

const MESSAGES = {
  M_NOT_FOUND: "This invitation does not exist or was withdrawn. Ask the person who invited you for a new one.",
  "DEV.PORCH.INVITATION_EXPIRED": "This invitation has expired. Ask the person who invited you for a new one.",
  "DEV.PORCH.INVITATION_USED": "This invitation has been used already. Sign in with the account made with it, in any Matrix app.",
  M_USER_IN_USE: "That user name is taken. Choose another one.",
  M_INVALID_USERNAME: "That user name cannot be used. Use lower-case letters, digits and . _ = - / only.",
  M_USER_LIMIT_EXCEEDED: "This server cannot take more external users right now. Tell the person who invited you.",
  M_LIMIT_EXCEEDED: "Too many tries from your network. Wait a moment and try again.",
};

// M_WEAK_PASSWORD is not in MESSAGES: the server's own words for its password rules say what to change.
const api = (method, path, body, accessToken) => callApi(MESSAGES, method, path, body, accessToken);

function nameOfInviter(inviter) {
  return inviter.displayname || inviter.user_id;
}

async function loadPreview() {
  if (session) {
    startChat();
    return;
  }
  try {
    preview = await api("GET", `/_porch/client/v1/invitations/${encodeURIComponent(token)}`);
  } catch (error) {
    $("title").textContent = "This invitation cannot be used";
    say(error.message);
    return;
  }
  const count = preview.rooms.length;
  $("title").textContent = count === 1
    ? `You are invited to ${preview.rooms[0].name || "a conversation"}`
    : `You are invited to ${count} conversations`;
  document.title = $("title").textContent;
  $("inviter").textContent = `${nameOfInviter(preview.inviter)} (${preview.inviter.user_id}) invited you to join them on ${preview.server_name}.`;
  $("email").textContent = preview.email;
  $("expiry").textContent = `; it is valid until ${new Date(preview.expires_at).toLocaleString()}`;
  if (preview.message) {
    $("note").textContent = preview.message;
    show("note", true);
  }
  const list = $("rooms");
  list.replaceChildren();
  for (const room of preview.rooms) {
    const item = document.createElement("li");
    const name = document.createElement("strong");
    name.textContent = room.name || "Unnamed conversation";
    item.append(name);
    if (room.topic) {
      const topic = document.createElement("span");
      topic.className = "topic";
      topic.textContent = ` — ${room.topic}`;
      item.append(topic);
    }
    list.append(item);
  }
  for (const el of document.querySelectorAll(".server-name")) el.textContent = preview.server_name;
  updateUserIdPreview();
  show("invitation", true);
}

function updateUserIdPreview() {
  const name = $("username").value.trim().toLowerCase() || "…";
  $("user-id-preview").textContent = `@${name}:${preview ? preview.server_name : ""}`;
}

$("username").addEventListener("input", updateUserIdPreview);

$("accept-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const username = $("username").value.trim().toLowerCase();
  const password = $("password").value;
  for (const id of ["username", "password", "password-confirm"]) $(id).removeAttribute("aria-invalid");
  if (!username) {
    $("username").setAttribute("aria-invalid", "true");
    say("Choose a user name.");
    $("username").focus();
    return;
  }
  if (!password) {
    $("password").setAttribute("aria-invalid", "true");
    say("Choose a password.");
    $("password").focus();
    return;
  }
  if (password !== $("password-confirm").value) {
    $("password-confirm").setAttribute("aria-invalid", "true");
    say("The two passwords differ. Type the same password twice.");
    $("password-confirm").focus();
    return;
  }
  for (const button of form.querySelectorAll("button")) button.disabled = true;
  say("");
  try {
    const body = { username, password };
    const displayName = $("display-name").value.trim();
    if (displayName) body.display_name = displayName;
    const accepted = await api("POST", `/_porch/client/v1/invitations/${encodeURIComponent(token)}/accept`, body);
    session = {
      accessToken: accepted.access_token,
      userId: accepted.user_id,
      homeserver: accepted.homeserver,
      rooms: accepted.rooms,
    };
    sessionStorage.setItem(storageKey, JSON.stringify(session));
    startChat();
  } catch (error) {
    say(error.message);
    const field = { M_USER_IN_USE: "username", M_INVALID_USERNAME: "username", M_WEAK_PASSWORD: "password" }[error.errcode];
    if (field) {
      $(field).setAttribute("aria-invalid", "true");
      $(field).focus();
    }
  } finally {
    for (const button of form.querySelectorAll("button")) button.disabled = false;
  }
});

function roomEntry(roomId) {
  if (!rooms.has(roomId)) rooms.set(roomId, { name: null, members: new Map(), events: [], unread: false });
  return rooms.get(roomId);
}

function roomLabel(roomId) {
  return roomEntry(roomId).name || "Unnamed conversation";
}

function renderRoomList() {
  const list = $("room-list");
  list.replaceChildren();
  for (const [roomId, room] of rooms) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = roomLabel(roomId);
    button.dataset.roomId = roomId;
    if (roomId === currentRoom) button.setAttribute("aria-current", "true");
    if (room.unread) button.classList.add("unread");
    button.addEventListener("click", () => openRoom(roomId));
    item.append(button);
    list.append(item);
  }
}

function renderTimeline() {
  const timeline = $("timeline");
  timeline.replaceChildren();
  if (!currentRoom) return;
  const room = roomEntry(currentRoom);
  $("room-title").textContent = roomLabel(currentRoom);
  for (const event of room.events) {
    timeline.append(messageItem((room.members.get(event.sender) || {}).name || event.sender, event.content));
  }
  timeline.scrollTop = timeline.scrollHeight;
}

function renderMembers() {
  const list = $("members");
  list.replaceChildren();
  if (!currentRoom) return;
  const members = [...roomEntry(currentRoom).members.entries()]
    .filter(([, m]) => m.membership === "join")
    .sort((a, b) => a[1].name.localeCompare(b[1].name));
  for (const [userId, member] of members) list.append(memberItem(userId, member));
}

function openRoom(roomId) {
  currentRoom = roomId;
  roomEntry(roomId).unread = false;
  renderRoomList();
  renderTimeline();
  renderMembers();
  $("composer-input").focus();
}

function applyState(room, event) {
  if (event.type === "m.room.member") {
    room.members.set(event.state_key, memberFrom(event));
  } else if (event.type === "m.room.name") {
    room.name = event.content.name || null;
  }
}

function applyRoom(roomId, data) {
  const room = roomEntry(roomId);
  for (const event of (data.state || {}).events || []) applyState(room, event);
  for (const event of (data.timeline || {}).events || []) {
    if (event.state_key !== undefined) applyState(room, event);
    if (event.type === "m.room.message" && typeof event.content.body === "string") {
      room.events.push(event);
      if (roomId !== currentRoom) room.unread = true;
    }
  }
  // Keep the page light however long it stays open.
  if (room.events.length > 500) room.events.splice(0, room.events.length - 500);
}

function syncLoop() {
  syncWhile(() => session, session.accessToken, { room: { timeline: { limit: 50 } } }, (data) => {
    for (const [roomId, room] of Object.entries((data.rooms || {}).join || {})) applyRoom(roomId, room);
    for (const roomId of Object.keys((data.rooms || {}).leave || {})) {
      rooms.delete(roomId);
      if (currentRoom === roomId) currentRoom = null;
    }
    if (!currentRoom && rooms.size > 0) currentRoom = rooms.keys().next().value;
    renderRoomList();
    renderTimeline();
    renderMembers();
  }, () => endSession("You have been signed out."));
}

function startChat() {
  show("invitation", false);
  show("chat", true);
  say("");
  $("title").textContent = "Welcome";
  $("inviter").textContent = "";
  $("whoami").textContent = session.userId;
  const localpart = session.userId.slice(1, session.userId.indexOf(":"));
  $("homeserver").textContent =
    `You can also use any Matrix app, such as Element: choose "${session.homeserver}" as the server, then sign in with the user name "${localpart}" and your password.`;
  for (const roomId of session.rooms || []) roomEntry(roomId);
  if (!currentRoom && session.rooms && session.rooms.length > 0) currentRoom = session.rooms[0];
  renderRoomList();
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
  if (!body || !session || !currentRoom) return;
  input.value = "";
  const txn = `web${Date.now()}${Math.random().toString(36).slice(2)}`;
  try {
    await api("PUT", `/_matrix/client/v3/rooms/${encodeURIComponent(currentRoom)}/send/m.room.message/${txn}`, { msgtype: "m.text", body }, session.accessToken);
  } catch (error) {
    say(error.message);
    input.value = body;
  }
});

$("sign-out").addEventListener("click", async () => {
  if (!session) return;
  try {
    await api("POST", "/_matrix/client/v3/logout", {}, session.accessToken);
  } catch (_) {
    // Signed out already; the page forgets the session either way.
  }
  endSession("You are signed out. Sign in again with any Matrix app.");
});

loadPreview();

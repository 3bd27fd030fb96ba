// The admin console: a server admin signs in, sees the dashboard, invites
// people by email and manages invitations, external users, guest rooms and
// links. Plain JavaScript over porch's admin API (/_porch/admin/v1).
"use strict";

const $ = (id) => document.getElementById(id);
const ADMIN = "/_porch/admin/v1";
const storageKey = "porch-admin";
let session = JSON.parse(sessionStorage.getItem(storageKey) || "null");
let invitableRooms = [];

const MESSAGES = {
  M_FORBIDDEN: "This account may not do that.",
  M_USER_LIMIT_EXCEEDED: "The external-user quota is reached (pending invitations count). Revoke an invitation or deactivate an external user first.",
  M_LIMIT_EXCEEDED: "Too many tries. Wait a moment and try again.",
};

function show(id, visible) { $(id).hidden = !visible; }

function report(text, isError) {
  const result = $("result");
  result.textContent = text;
  result.classList.toggle("error", Boolean(isError));
  show("result", Boolean(text));
}

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (session) headers.Authorization = `Bearer ${session.accessToken}`;
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(data.error || MESSAGES[data.errcode] || `The server answered ${response.status}.`);
    error.errcode = data.errcode;
    error.status = response.status;
    throw error;
  }
  return data;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function badge(text) {
  return el("span", text, `status ${text}`);
}

function date(ms) {
  return ms ? new Date(ms).toLocaleString() : "–";
}

function roomName(room) {
  return room.name || room.room_id;
}

// A button that runs `action`, reports its outcome and refreshes the lists.
function actionButton(label, ariaLabel, className, confirmText, action, success) {
  const button = el("button", label, `small ${className || ""}`.trim());
  button.type = "button";
  button.setAttribute("aria-label", ariaLabel);
  button.addEventListener("click", async () => {
    if (confirmText && !window.confirm(confirmText)) return;
    button.disabled = true;
    try {
      await action();
      report(success);
      await refresh();
    } catch (error) {
      report(error.message, true);
      button.disabled = false;
    }
  });
  return button;
}

function emptyRow(tbody, columns, text) {
  const row = el("tr");
  const cell = el("td", text, "empty");
  cell.colSpan = columns;
  row.append(cell);
  tbody.append(row);
}

function renderStats(stats) {
  $("stat-members").textContent = stats.users.member;
  const quota = stats.limits.max_external_users;
  const external = stats.users.external;
  $("stat-external").textContent = quota == null
    ? `${external} external ${external === 1 ? "user" : "users"}`
    : `${external} / ${quota} external users`;
  $("stat-temporary").textContent = stats.users.temporary;
  $("stat-rooms-active").textContent = stats.guest_rooms.active;
  $("stat-rooms-ended").textContent = stats.guest_rooms.ended;
  $("stat-links").textContent = stats.links.active;
  $("stat-pending").textContent = stats.invitations.pending;
}

function renderInvitableRooms() {
  const fieldset = $("invite-rooms");
  const checked = new Set([...fieldset.querySelectorAll("input:checked")].map((i) => i.value));
  for (const label of fieldset.querySelectorAll("label")) label.remove();
  show("invite-rooms-empty", invitableRooms.length === 0);
  for (const room of invitableRooms) {
    const label = el("label");
    const box = el("input");
    box.type = "checkbox";
    box.name = "room";
    box.value = room.room_id;
    box.checked = checked.has(room.room_id);
    label.append(box, document.createTextNode(roomName(room) + (room.guest_room ? " (guest room)" : "")));
    fieldset.append(label);
  }
}

function renderInvitations(invitations) {
  const tbody = $("invitations");
  tbody.replaceChildren();
  if (invitations.length === 0) emptyRow(tbody, 7, "No invitations yet.");
  for (const inv of invitations) {
    const row = el("tr");
    row.dataset.id = inv.id;
    const rooms = el("ul");
    for (const room of inv.rooms) rooms.append(el("li", roomName(room)));
    const status = el("td");
    status.append(badge(inv.status));
    if (inv.accepted_by) status.append(el("div", inv.accepted_by));
    const mail = el("td");
    mail.append(badge(inv.delivery.state));
    if (inv.delivery.last_error) mail.append(el("div", inv.delivery.last_error, "hint"));
    const actions = el("td");
    if (inv.status === "pending" && !inv.existing_account) {
      actions.append(actionButton("Resend", `Resend invitation to ${inv.email}`, "secondary", null,
        () => api("POST", `${ADMIN}/invitations/${encodeURIComponent(inv.id)}/resend`, {}),
        `The invitation to ${inv.email} was sent again with a new link.`));
    }
    if (inv.status === "pending" || inv.status === "expired") {
      actions.append(actionButton("Revoke", `Revoke invitation for ${inv.email}`, "danger",
        `Revoke the invitation for ${inv.email}? Its link stops working.`,
        () => api("DELETE", `${ADMIN}/invitations/${encodeURIComponent(inv.id)}`),
        `The invitation for ${inv.email} was revoked.`));
    }
    row.append(el("td", inv.email), cell(rooms), el("td", inv.invited_by.displayname || inv.invited_by.user_id),
      status, mail, el("td", date(inv.expires_at)), actions);
    tbody.append(row);
  }
}

function cell(child) {
  const td = el("td");
  td.append(child);
  return td;
}

function renderExternalUsers(users) {
  const tbody = $("external-users");
  tbody.replaceChildren();
  const active = users.filter((u) => !u.deactivated);
  if (active.length === 0) emptyRow(tbody, 5, "No external users yet.");
  for (const user of active) {
    const row = el("tr");
    row.dataset.userId = user.user_id;
    const who = el("td", user.displayname || user.user_id);
    who.append(el("div", user.user_id, "hint"));
    const rooms = el("ul");
    for (const room of user.rooms || []) {
      const item = el("li", `${roomName(room)} `);
      item.append(actionButton("Remove", `Remove ${user.user_id} from ${roomName(room)}`, "secondary",
        `Remove ${user.user_id} from ${roomName(room)}?`,
        () => api("DELETE", `${ADMIN}/users/${encodeURIComponent(user.user_id)}/rooms/${encodeURIComponent(room.room_id)}`),
        `${user.user_id} was removed from ${roomName(room)}.`));
      rooms.append(item);
    }
    const add = el("td");
    const inRooms = new Set((user.rooms || []).map((r) => r.room_id));
    const choices = invitableRooms.filter((r) => !inRooms.has(r.room_id));
    if (choices.length > 0) {
      const select = el("select");
      select.setAttribute("aria-label", `Room to add ${user.user_id} to`);
      for (const room of choices) {
        const option = el("option", roomName(room));
        option.value = room.room_id;
        select.append(option);
      }
      add.append(select, actionButton("Add", `Add ${user.user_id} to the chosen room`, null, null,
        () => api("POST", `${ADMIN}/users/${encodeURIComponent(user.user_id)}/rooms`, { rooms: [select.value] }),
        `${user.user_id} was added to the room.`));
    }
    const actions = el("td");
    actions.append(actionButton("Deactivate", `Deactivate ${user.user_id}`, "danger",
      `Deactivate ${user.user_id}? They leave every room and cannot sign in again.`,
      () => api("POST", `${ADMIN}/users/${encodeURIComponent(user.user_id)}/deactivate`, {}),
      `${user.user_id} was deactivated.`));
    row.append(who, el("td", user.email || "–"), cell(rooms), add, actions);
    tbody.append(row);
  }
}

function renderGuestRooms(guestRooms) {
  const tbody = $("guest-rooms");
  tbody.replaceChildren();
  if (guestRooms.length === 0) emptyRow(tbody, 5, "No guest rooms yet.");
  for (const room of guestRooms) {
    const row = el("tr");
    row.dataset.roomId = room.room_id;
    const status = el("td");
    status.append(badge(room.ended ? "ended" : "active"));
    const guests = el("td", String((room.guests || []).length));
    const links = el("ul");
    for (const link of room.links || []) {
      const active = !room.ended && link.active;
      const item = el("li", `${link.uses}${link.max_uses == null ? "" : ` / ${link.max_uses}`} uses, until ${date(link.expires_at)} `);
      item.append(badge(link.revoked ? "revoked" : active ? "active" : "expired"));
      if (active) {
        item.append(actionButton("Revoke", `Revoke link ${link.id} of ${roomName(room)}`, "danger",
          `Revoke this link of ${roomName(room)}? People who joined stay.`,
          () => api("DELETE", `${ADMIN}/guest_links/${encodeURIComponent(link.id)}`),
          `The link of ${roomName(room)} was revoked.`));
      }
      links.append(item);
    }
    const actions = el("td");
    if (!room.ended) {
      actions.append(actionButton("End", `End ${roomName(room)}`, "danger",
        `End ${roomName(room)}? Everyone leaves it and guests are signed out.`,
        () => api("POST", `${ADMIN}/guest_rooms/${encodeURIComponent(room.room_id)}/end`, {}),
        `${roomName(room)} was ended.`));
    }
    row.append(el("td", roomName(room)), status, guests, cell(links), actions);
    tbody.append(row);
  }
}

async function refresh() {
  const [stats, invitations, users, guestRooms, invitable] = await Promise.all([
    api("GET", `${ADMIN}/stats`),
    api("GET", `${ADMIN}/invitations`),
    api("GET", `${ADMIN}/users?kind=external`),
    api("GET", `${ADMIN}/guest_rooms`),
    api("GET", `${ADMIN}/invitable_rooms`),
  ]);
  invitableRooms = invitable.rooms;
  renderStats(stats);
  renderInvitableRooms();
  renderInvitations(invitations.invitations);
  renderExternalUsers(users.users);
  renderGuestRooms(guestRooms.guest_rooms);
}

async function enterConsole() {
  try {
    await refresh();
  } catch (error) {
    const notAdmin = error.status === 403;
    signOut(notAdmin ? "This account is not a server admin. Sign in with an admin account." : error.message, true);
    return;
  }
  $("admin-id").textContent = session.userId;
  $("server-name").textContent = session.userId.slice(session.userId.indexOf(":") + 1);
  show("login-form", false);
  show("signed-in", true);
  show("console", true);
}

function signOut(text, isError) {
  sessionStorage.removeItem(storageKey);
  session = null;
  show("console", false);
  show("signed-in", false);
  show("login-form", true);
  report(text, isError);
  $("login-user").focus();
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = event.target.querySelector("button");
  button.disabled = true;
  report("");
  try {
    const login = await api("POST", "/_matrix/client/v3/login", {
      type: "m.login.password",
      identifier: { type: "m.id.user", user: $("login-user").value.trim() },
      password: $("login-password").value,
      initial_device_display_name: "Admin console",
    });
    session = { accessToken: login.access_token, userId: login.user_id };
    sessionStorage.setItem(storageKey, JSON.stringify(session));
    $("login-password").value = "";
    await enterConsole();
  } catch (error) {
    report(error.errcode === "M_FORBIDDEN" ? "Wrong user name or password." : error.message, true);
  } finally {
    button.disabled = false;
  }
});

$("invite-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const email = $("invite-email").value.trim();
  const rooms = [...$("invite-rooms").querySelectorAll("input:checked")].map((i) => i.value);
  if (!email) {
    report("Enter the email address of the person to invite.", true);
    $("invite-email").focus();
    return;
  }
  if (rooms.length === 0) {
    report("Choose at least one room.", true);
    return;
  }
  const button = event.target.querySelector("button");
  button.disabled = true;
  try {
    const body = { email, rooms, expires_in_ms: Number($("invite-expiry").value) };
    const message = $("invite-message").value.trim();
    if (message) body.message = message;
    const created = await api("POST", `${ADMIN}/invitations`, body);
    if (created.invited_user_id) {
      show("last-link", false);
      report(`${email} already has an account here (${created.invited_user_id}); it was invited to the rooms directly.`);
    } else {
      $("last-link-url").value = created.link;
      show("last-link", true);
      report(`Invitation sent to ${email}; valid until ${date(created.expires_at)}.`);
    }
    event.target.reset();
    await refresh();
  } catch (error) {
    report(error.message, true);
  } finally {
    button.disabled = false;
  }
});

$("refresh").addEventListener("click", async () => {
  try {
    await refresh();
    report("Up to date.");
  } catch (error) {
    report(error.message, true);
  }
});

$("sign-out").addEventListener("click", async () => {
  try {
    await api("POST", "/_matrix/client/v3/logout", {});
  } catch (_) {
    // The session is forgotten here either way.
  }
  signOut("You are signed out.");
});

if (session) {
  enterConsole();
} else {
  show("login-form", true);
}

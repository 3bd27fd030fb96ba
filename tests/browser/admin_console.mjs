// Drives porch's admin console in headless Chromium: a non-admin is turned
// away; an admin signs in, reads the dashboard, invites someone by email to
// a room, revokes the invitation, revokes a guest link and ends a guest room.
// Prints one JSON line with what it saw; exits non-zero on any failed expectation.
//
// Usage: node admin_console.mjs '{"base": …, "admin": {"user", "password"}, "member": {"user", "password"},
//   "email": …, "roomName": …, "guestRoomName": …, "externalUser": …, "shots": DIR}'
import { expect, scenario } from "./scenario.mjs";

const { base, admin, member, email, roomName, guestRoomName, externalUser, shots } = JSON.parse(process.argv[2]);
const text = async (page, selector) => ((await page.locator(selector).textContent()) || "").trim();
await scenario(async (browser, result) => {
  const page = await browser.newPage();
  page.on("dialog", (dialog) => dialog.accept());

  async function signIn(who) {
    await page.getByLabel("User name").fill(who.user);
    await page.getByLabel("Password").fill(who.password);
    await page.getByRole("button", { name: "Sign in" }).click();
  }

  await page.goto(`${base}/admin`);
  await page.locator("#login-form").waitFor({ state: "visible", timeout: 15000 });
  await signIn(member);
  await page.locator("#result", { hasText: "not a server admin" }).waitFor({ timeout: 15000 });
  expect(await page.locator("#console").isHidden(), "a member does not see the console");

  await signIn(admin);
  await page.locator("#dashboard").waitFor({ state: "visible", timeout: 15000 });
  result.external = await text(page, "#stat-external");
  expect(result.external === "1 / 100 external users", `dashboard external users: ${result.external}`);
  result.activeRooms = await text(page, "#stat-rooms-active");
  result.links = await text(page, "#stat-links");
  result.pendingBefore = await text(page, "#stat-pending");
  expect(result.activeRooms === "1" && result.links === "1" && result.pendingBefore === "0",
    `dashboard rooms/links/pending: ${result.activeRooms}/${result.links}/${result.pendingBefore}`);
  await page.locator("#external-users tr", { hasText: externalUser }).waitFor({ timeout: 5000 });

  // Invite by email, with the keyboard-reachable form.
  await page.getByLabel("Email address").fill(email);
  await page.getByRole("checkbox", { name: roomName }).check();
  await page.getByLabel("Valid for").selectOption({ label: "30 days" });
  await page.getByLabel("Personal message (optional)").fill("See you there");
  await page.getByRole("button", { name: "Send invitation", exact: true }).click();
  await page.locator("#result", { hasText: `Invitation sent to ${email}` }).waitFor({ timeout: 15000 });
  result.link = await page.locator("#last-link-url").inputValue();
  expect(result.link.includes("/invite/"), `the link is shown: ${result.link}`);
  await page.locator("#stat-pending", { hasText: "1" }).waitFor({ timeout: 5000 });
  const row = page.locator("#invitations tr", { hasText: email });
  result.invitationRow = (await row.textContent()).trim();
  expect(/pending/.test(result.invitationRow) && result.invitationRow.includes(roomName), `invitation listed: ${result.invitationRow}`);
  await page.screenshot({ path: `${shots}/admin-console-invited.png`, fullPage: true });

  // A refusal is reported and changes nothing.
  await page.getByLabel("Email address").fill("not an address");
  await page.getByRole("checkbox", { name: roomName }).check();
  await page.getByRole("button", { name: "Send invitation", exact: true }).click();
  await page.locator("#result.error").waitFor({ timeout: 15000 });
  result.refusal = await text(page, "#result");
  expect(await page.locator("#stat-pending").textContent() === "1", "a refused invitation is not counted");

  await page.getByRole("button", { name: `Revoke invitation for ${email}` }).click();
  await page.locator("#result", { hasText: "revoked" }).waitFor({ timeout: 15000 });
  await page.locator("#stat-pending", { hasText: "0" }).waitFor({ timeout: 5000 });
  result.revokedRow = (await row.textContent()).trim();
  expect(/revoked/.test(result.revokedRow), `invitation revoked: ${result.revokedRow}`);
  expect(await page.getByRole("button", { name: `Revoke invitation for ${email}` }).count() === 0, "no revoke button once revoked");

  // Guest rooms: revoke the link, then end the room.
  await page.getByRole("button", { name: new RegExp(`^Revoke link .* of ${guestRoomName}$`) }).click();
  await page.locator("#result", { hasText: `The link of ${guestRoomName} was revoked` }).waitFor({ timeout: 15000 });
  await page.locator("#stat-links", { hasText: "0" }).waitFor({ timeout: 5000 });
  await page.getByRole("button", { name: `End ${guestRoomName}` }).click();
  await page.locator("#result", { hasText: `${guestRoomName} was ended` }).waitFor({ timeout: 15000 });
  await page.locator("#stat-rooms-ended", { hasText: "1" }).waitFor({ timeout: 5000 });
  result.guestRow = (await page.locator("#guest-rooms tr", { hasText: guestRoomName }).textContent()).trim();
  expect(/ended/.test(result.guestRow), `guest room ended: ${result.guestRow}`);
  await page.screenshot({ path: `${shots}/admin-console-revoked.png`, fullPage: true });

  // A reload keeps the session for the tab.
  await page.reload();
  await page.locator("#dashboard").waitFor({ state: "visible", timeout: 15000 });
});

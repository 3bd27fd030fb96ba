// Drives porch's guest page in real headless Chromium: open a link, see the
// banner and the room, join as a guest, talk both ways, and see an expired
// link's message. Prints one JSON line with what it saw; exits non-zero on
// any failed expectation.
//
// Usage: node guest_page.mjs '{"base": …, "token": …, "expiredToken": …, "passwordToken": …,
//   "endedToken": …, "memberToken": …, "roomId": …, "login": {"user": …, "password": …},
//   "remoteUser": …, "unreachableUser": …, "shots": DIR}'
import { expect, scenario } from "./scenario.mjs";

const { base, token, expiredToken, passwordToken, endedToken, memberToken, roomId, login, remoteUser, unreachableUser, shots } =
  JSON.parse(process.argv[2]);
await scenario(async (browser, result) => {
  const page = await browser.newPage();
  await page.goto(`${base}/guest/${token}`);
  await page.locator("#room-name", { hasText: "Visit" }).waitFor({ timeout: 15000 });
  result.banner = (await page.locator("#banner").textContent()).trim();
  result.bannerVisible = await page.locator("#banner").isVisible();
  expect(result.banner === "Internal" && result.bannerVisible, `banner shows the level (${result.banner})`);
  expect(await page.locator("#password-box").isHidden(), "no password field for a link without a password");
  await page.screenshot({ path: `${shots}/guest-page-preview.png`, fullPage: true });

  await page.getByLabel("Your name").fill("Gina");
  await page.getByRole("button", { name: "Join as a guest" }).click();
  await page.locator("#chat").waitFor({ state: "visible", timeout: 15000 });
  await page.locator("#members li", { hasText: "Gina (guest)" }).waitFor({ timeout: 15000 });
  result.members = await page.locator("#members li").allTextContents();
  expect(result.members.some((m) => m.includes("Gina (guest)") && m.endsWith("guest")), `guest badge: ${result.members}`);
  expect(result.members.some((m) => m.startsWith("alice")), `member listed: ${result.members}`);

  await page.getByRole("textbox", { name: "Message" }).fill("hello from the browser");
  await page.getByRole("button", { name: "Send" }).click();
  await page.locator("#timeline li", { hasText: "hello from the browser" }).waitFor({ timeout: 15000 });

  // The member answers from another client; the page's sync shows it.
  const txn = `browser-test-${Date.now()}`;
  const sent = await fetch(`${base}/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/${txn}`, {
    method: "PUT",
    headers: { Authorization: `Bearer ${memberToken}`, "Content-Type": "application/json" },
    body: JSON.stringify({ msgtype: "m.text", body: "welcome, Gina" }),
  });
  expect(sent.ok, `member's message sent (${sent.status})`);
  await page.locator("#timeline li", { hasText: "welcome, Gina" }).waitFor({ timeout: 15000 });
  result.timeline = await page.locator("#timeline li").allTextContents();
  await page.screenshot({ path: `${shots}/guest-page-chat.png`, fullPage: true });

  const expired = await browser.newPage();
  await expired.goto(`${base}/guest/${expiredToken}`);
  await expired.locator("#message").waitFor({ state: "visible", timeout: 15000 });
  result.expiredMessage = (await expired.locator("#message").textContent()).trim();
  expect(/expired/i.test(result.expiredMessage), `expired link message: ${result.expiredMessage}`);
  expect(await expired.locator("#join").isHidden(), "no join form for an expired link");

  const unknown = await browser.newPage();
  await unknown.goto(`${base}/guest/not-a-real-token`);
  await unknown.locator("#message").waitFor({ state: "visible", timeout: 15000 });
  result.unknownMessage = (await unknown.locator("#message").textContent()).trim();
  expect(/does not exist or was revoked/.test(result.unknownMessage), `unknown link message: ${result.unknownMessage}`);

  const locked = await browser.newPage();
  await locked.goto(`${base}/guest/${passwordToken}`);
  await locked.locator("#password-box").waitFor({ state: "visible", timeout: 15000 });
  await locked.getByLabel("Your name").fill("Pat");
  await locked.getByRole("button", { name: "Join as a guest" }).click();
  await locked.locator("#message", { hasText: "needs a password" }).waitFor({ timeout: 15000 });
  await locked.getByLabel("This link needs a password").fill("open sesame");
  await locked.getByRole("button", { name: "Join as a guest" }).click();
  await locked.locator("#chat").waitFor({ state: "visible", timeout: 15000 });
  result.passwordJoin = true;

  const ended = await browser.newPage();
  await ended.goto(`${base}/guest/${endedToken}`);
  await ended.locator("#message").waitFor({ state: "visible", timeout: 15000 });
  result.endedMessage = (await ended.locator("#message").textContent()).trim();
  expect(/has ended/.test(result.endedMessage), `ended room message: ${result.endedMessage}`);

  // A member of this server signs in on the page and joins with their account.
  const member = await browser.newPage();
  await member.goto(`${base}/guest/${token}`);
  await member.getByLabel("User name").fill(login.user);
  await member.getByLabel("Password", { exact: true }).fill(login.password);
  await member.getByRole("button", { name: "Sign in and join" }).click();
  await member.locator("#chat").waitFor({ state: "visible", timeout: 15000 });
  await member.locator("#members li", { hasText: login.user }).waitFor({ timeout: 15000 });
  result.signedIn = true;

  // A user of another server asks for an invitation; an unreachable one is named.
  const remote = await browser.newPage();
  await remote.goto(`${base}/guest/${token}`);
  await remote.getByLabel("Your Matrix ID").fill(unreachableUser);
  await remote.getByRole("button", { name: "Send me an invitation" }).click();
  await remote.locator("#message", { hasText: "cannot be reached" }).waitFor({ timeout: 15000 });
  result.unreachableMessage = (await remote.locator("#message").textContent()).trim();
  const unreachableServer = unreachableUser.slice(unreachableUser.indexOf(":") + 1);
  expect(result.unreachableMessage.includes(unreachableServer), `names the server: ${result.unreachableMessage}`);
  await remote.getByLabel("Your Matrix ID").fill(remoteUser);
  await remote.getByRole("button", { name: "Send me an invitation" }).click();
  await remote.locator("#message", { hasText: "invitation was sent" }).waitFor({ timeout: 15000 });
  result.invitedMessage = (await remote.locator("#message").textContent()).trim();
  expect(result.invitedMessage.includes(remoteUser), `names the invited user: ${result.invitedMessage}`);
  expect(await remote.locator("#join").isHidden(), "the join options are gone once invited");
  await remote.screenshot({ path: `${shots}/guest-page-invited.png`, fullPage: true });
});

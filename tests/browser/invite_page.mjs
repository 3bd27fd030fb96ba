// Drives porch's invitation page in headless Chromium: open the link from the
// invitation mail, see who invited and to which rooms, create the account,
// talk in both rooms and see a member's answer; then see a used link refused.
// Prints one JSON line with what it saw; exits non-zero on any failed expectation.
//
// Usage: node invite_page.mjs '{"link": …, "base": …, "memberToken": …, "firstRoom": …,
//   "inviterName": …, "roomNames": […], "shots": DIR}'
import { expect, scenario } from "./scenario.mjs";

const { link, base, memberToken, firstRoom, inviterName, roomNames, shots } = JSON.parse(process.argv[2]);
await scenario(async (browser, result) => {
  const page = await browser.newPage();
  await page.goto(link);
  await page.locator("#invitation").waitFor({ state: "visible", timeout: 15000 });
  result.inviter = (await page.locator("#inviter").textContent()).trim();
  result.email = (await page.locator("#email").textContent()).trim();
  result.rooms = await page.locator("#rooms li").allTextContents();
  expect(result.inviter.includes(inviterName), `the inviter is named: ${result.inviter}`);
  expect(result.email.includes("…@example.org") && !result.email.startsWith("ana@"), `the address is masked: ${result.email}`);
  for (const name of roomNames) expect(result.rooms.some((r) => r.includes(name)), `room ${name} listed: ${result.rooms}`);
  await page.screenshot({ path: `${shots}/invite-page-preview.png`, fullPage: true });

  await page.getByLabel("Your name").fill("Ana");
  await page.getByLabel("User name").fill("ana");
  expect((await page.locator("#user-id-preview").textContent()).startsWith("@ana:"), "the future Matrix ID is shown");
  await page.getByLabel("Password", { exact: true }).fill("a long enough password");
  await page.getByLabel("Password again").fill("a different password");
  await page.getByRole("button", { name: "Create my account and join" }).click();
  await page.locator("#message", { hasText: "differ" }).waitFor({ timeout: 5000 });
  expect(await page.locator("#chat").isHidden(), "no account made when the passwords differ");

  await page.getByLabel("Password again").fill("a long enough password");
  await page.getByRole("button", { name: "Create my account and join" }).click();
  await page.locator("#chat").waitFor({ state: "visible", timeout: 15000 });
  result.whoami = (await page.locator("#whoami").textContent()).trim();
  result.homeserverTip = (await page.locator("#homeserver").textContent()).trim();
  expect(result.whoami.startsWith("@ana:"), `signed in as the new account: ${result.whoami}`);
  expect(result.homeserverTip.includes(base) && /Matrix app/.test(result.homeserverTip), `any Matrix app tip: ${result.homeserverTip}`);

  for (const name of roomNames) {
    await page.locator("#room-list button", { hasText: name }).waitFor({ timeout: 15000 });
  }
  result.roomList = await page.locator("#room-list button").allTextContents();
  for (const name of roomNames) {
    await page.locator("#room-list button", { hasText: name }).click();
    await page.locator("#room-title", { hasText: name }).waitFor({ timeout: 5000 });
    await page.locator("#members li", { hasText: "Ana" }).waitFor({ timeout: 15000 });
    await page.getByRole("textbox", { name: "Message" }).fill(`hello ${name} from the browser`);
    await page.getByRole("button", { name: "Send" }).click();
    await page.locator("#timeline li", { hasText: `hello ${name} from the browser` }).waitFor({ timeout: 15000 });
  }

  // A member answers in the first room from another client; the page shows it there.
  await page.locator("#room-list button", { hasText: roomNames[0] }).click();
  const sent = await fetch(`${base}/_matrix/client/v3/rooms/${encodeURIComponent(firstRoom)}/send/m.room.message/invite-page-${Date.now()}`, {
    method: "PUT",
    headers: { Authorization: `Bearer ${memberToken}`, "Content-Type": "application/json" },
    body: JSON.stringify({ msgtype: "m.text", body: "welcome, Ana" }),
  });
  expect(sent.ok, `member's message sent (${sent.status})`);
  await page.locator("#timeline li", { hasText: "welcome, Ana" }).waitFor({ timeout: 15000 });
  result.members = await page.locator("#members li").allTextContents();
  result.timeline = await page.locator("#timeline li").allTextContents();
  await page.screenshot({ path: `${shots}/invite-page-chat.png`, fullPage: true });

  // The same link in a fresh browser: used.
  const again = await browser.newPage();
  await again.goto(link);
  await again.locator("#message").waitFor({ state: "visible", timeout: 15000 });
  result.usedMessage = (await again.locator("#message").textContent()).trim();
  expect(/used already/i.test(result.usedMessage), `used link message: ${result.usedMessage}`);
  expect(await again.locator("#accept-form").isHidden(), "no form for a used link");
});

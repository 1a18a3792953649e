import { expect, test, type Page } from "@playwright/test";
import { createHmac } from "node:crypto";
import { ChatPage, unique } from "./fixtures/chat";
import { OwnServer } from "./fixtures/server";

/** Opens the people panel and keeps the name with `password`; the page comes back as the member's. */
async function keepName(chat: ChatPage, password: string): Promise<void> {
  await chat.page.locator(".people > summary").click();
  await chat.page.getByLabel("Keep this name: choose a password").fill(password);
  await chat.page.getByRole("button", { name: "Keep this name" }).click();
  await expect(chat.page.locator(".whoami .mark").first()).toHaveText("member");
  await expect(chat.status).toHaveAttribute("data-status", "connected");
}

async function signIn(page: Page, name: string, password: string): Promise<void> {
  await page.getByLabel("Name").fill(name);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
}

test("a kept name is the member's: another browser cannot join under it, and signs in with the password", async ({ browser }) => {
  const name = unique("Kim");
  const owner = await ChatPage.open(browser);
  await owner.join(name);
  const before = unique("said as a guest ");
  await owner.say(before);
  await expect(owner.message(before)).toBeVisible();

  // A password too short is refused where it was typed.
  await owner.page.locator(".people > summary").click();
  await owner.page.getByLabel("Keep this name: choose a password").fill("short");
  // The browser's own minlength check stops it first; the server's check is covered by the unit tests.
  await expect(owner.page.getByLabel("Keep this name: choose a password")).toHaveJSProperty("validity.tooShort", true);

  await owner.page.locator(".people > summary").click();
  await keepName(owner, "correct horse battery");
  await expect(owner.page.locator(".whoami-name")).toHaveText(name);
  // Messages written as a guest are still theirs.
  await expect(owner.message(before)).toHaveClass(/mine/);

  // A third person, and a second browser trying the same name as people read it.
  const thief = await ChatPage.open(browser);
  await thief.nameField.fill(name.toUpperCase());
  await thief.nameField.press("Enter");
  await expect(thief.nameError).toHaveText("That name belongs to a member. Sign in to use it.");
  await expect(thief.dialog).toBeVisible();
  await thief.page.getByRole("link", { name: "Sign in" }).click();
  await expect(thief.page).toHaveURL(/\/login$/);
  await signIn(thief.page, name.toLowerCase(), "wrong password!");
  await expect(thief.page.locator("#sign-in-error")).toHaveText("That name and password do not match a member.");
  await signIn(thief.page, name.toLowerCase(), "correct horse battery");
  await expect(thief.page).toHaveURL(/\/$/);
  await expect(thief.status).toHaveAttribute("data-status", "connected");
  await expect(thief.dialog).toBeHidden();
  await expect(thief.page.locator(".whoami-name")).toHaveText(name);
  await expect(thief.message(before)).toHaveClass(/mine/);

  // The member mark shows on their messages for everyone.
  const after = unique("said as a member ");
  await owner.say(after);
  const watcher = await ChatPage.open(browser);
  await watcher.join(unique("Watcher"));
  await expect(watcher.message(after).locator(".mark")).toHaveText("member");
  await expect(watcher.message(after)).not.toHaveClass(/mine/);
  await expect(watcher.page.locator(".whoami .mark")).toHaveText("guest");
  await Promise.all([owner.close(), thief.close(), watcher.close()]);
});

test("signing out closes the socket and brings back the name dialog in every tab of that browser", async ({ browser }) => {
  const name = unique("Lea");
  const first = await ChatPage.open(browser);
  await first.join(name);
  await keepName(first, "correct horse battery");
  // A second tab of the same browser is the member at once.
  const second = new ChatPage(await first.page.context().newPage());
  await second.goto("/");
  await expect(second.dialog).toBeHidden();
  await expect(second.page.locator(".whoami-name")).toHaveText(name);
  // Someone in another browser, who must notice nothing but the leave.
  const other = await ChatPage.open(browser);
  await other.join(unique("Other"));

  await first.page.locator(".people > summary").click();
  await first.page.getByRole("button", { name: "Sign out" }).click();
  await expect(first.dialog).toBeVisible();
  // The other tab was told by the server (its socket closed) and shows the dialog without a reload.
  await expect(second.dialog).toBeVisible();
  await expect(second.status).toHaveAttribute("data-status", "connected");
  await expect(other.dialog).toBeHidden();
  await expect(other.status).toHaveAttribute("data-status", "connected");
  // Signed out for good: the name is still the member's.
  await second.nameField.fill(name);
  await second.nameField.press("Enter");
  await expect(second.nameError).toHaveText("That name belongs to a member. Sign in to use it.");
  await Promise.all([first.close(), other.close()]);
});

test("the sign-in form works with JavaScript disabled", async ({ browser }) => {
  const name = unique("Noa");
  const owner = await ChatPage.open(browser);
  await owner.join(name);
  await keepName(owner, "correct horse battery");

  const context = await browser.newContext({ javaScriptEnabled: false });
  const page = await context.newPage();
  await page.goto("/login");
  await signIn(page, name, "not the password");
  await expect(page.locator("#sign-in-error")).toHaveText("That name and password do not match a member.");
  await expect(page.getByLabel("Name")).toHaveValue(name);
  await signIn(page, name, "correct horse battery");
  await expect(page).toHaveURL(/\/$/);
  await expect(page.locator(".whoami-name")).toHaveText(name);
  await expect(page.getByRole("dialog", { name: "Welcome!" })).toBeHidden();
  await context.close();
  await owner.close();
});

test("a name typed before the WASM arrives joins, and the name stays out of the URL", async ({ browser }) => {
  const context = await browser.newContext();
  const page = await context.newPage();
  // A slow phone: the bundle arrives 8 s late.
  let release = () => {};
  const held = new Promise<void>((r) => (release = r));
  await page.route(/\/pkg\/.*\.wasm$/, async (route) => {
    await held;
    await route.continue();
  });
  const chat = new ChatPage(page);
  await page.goto("/");
  const name = unique("Early");
  await chat.nameField.fill(name);
  await chat.nameField.press("Enter");
  await expect(chat.dialog).toBeHidden();
  await expect(page).toHaveURL(/\/$/);
  expect(page.url()).not.toContain(name);
  await expect(page.locator(".whoami-name")).toHaveText(name);
  // Once the WASM arrives the page is live and still joined, with the join line.
  release();
  await expect(chat.status).toHaveAttribute("data-status", "connected");
  await expect(chat.dialog).toBeHidden();
  await expect(chat.systemLine(`${name} has joined the chat.`)).toBeVisible();
  const text = unique("after the late bundle ");
  await chat.say(text);
  await expect(chat.message(text)).toBeVisible();
  await context.close();
});

test("while the name dialog is open the chat behind it cannot be reached", async ({ browser }) => {
  const chat = await ChatPage.open(browser);
  await expect(chat.dialog).toBeVisible();
  await expect(chat.page.locator(".chat-main")).toHaveAttribute("inert", "");
  // Keyboard focus never reaches the composer or anything else behind the dialog.
  for (let i = 0; i < 8; i++) {
    await chat.page.keyboard.press("Tab");
    const behind = await chat.page.evaluate(() => !!document.activeElement?.closest(".chat-main"));
    expect(behind).toBe(false);
  }
  await chat.page.locator("textarea[name=text]").focus().catch(() => {});
  expect(await chat.page.evaluate(() => document.activeElement?.tagName)).not.toBe("TEXTAREA");
  await chat.join(unique("Ina"));
  await expect(chat.page.locator(".chat-main")).not.toHaveAttribute("inert", /.*/);
  await chat.close();
});

test("a burst of 40 messages from one tab arrives complete and in order, sending slowly", async ({ browser }) => {
  // Tight limits (Playwright types slower than a person in a hurry): 2 a second, bursts of 5.
  const server = new OwnServer(3107, { CONFAB_RATE_PER_SECOND: "2", CONFAB_RATE_BURST: "5" });
  await server.start();
  try {
    const chat = await ChatPage.open(browser, undefined, server.url);
    await chat.join(unique("Burst"));
    const watcher = await ChatPage.open(browser, undefined, server.url);
    await watcher.join(unique("Counter"));
    const tag = unique("b");
    for (let i = 0; i < 40; i++) {
      await chat.composer.fill(`${tag} ${i}`);
      await chat.composer.press("Enter");
    }
    await expect(chat.page.locator(".slow")).toBeVisible();
    await expect(watcher.message(`${tag} 39`)).toBeVisible({ timeout: 25_000 });
    const texts = await watcher.page.locator("li.message .text").allTextContents();
    expect(texts.filter((t) => t.startsWith(`${tag} `))).toEqual(Array.from({ length: 40 }, (_, i) => `${tag} ${i}`));
    await expect(chat.page.locator("li.pending")).toHaveCount(0);
    await expect(chat.page.locator(".failed")).toHaveCount(0);
    await expect(chat.page.locator(".slow")).toBeHidden();
    await Promise.all([chat.close(), watcher.close()]);
  } finally {
    await server.stop();
  }
});

test("an admin deletes a message and it disappears in another browser; an author deletes their own", async ({ browser }) => {
  // A server of its own, so the first member (the admin) is this test's.
  const server = new OwnServer(3108);
  await server.start();
  try {
    const admin = await ChatPage.open(browser, undefined, server.url);
    await admin.join(unique("Boss"));
    await keepName(admin, "correct horse battery");
    await expect(admin.page.locator(".whoami .mark[data-kind=admin]")).toBeVisible();
    const writer = await ChatPage.open(browser, undefined, server.url);
    await writer.join(unique("Wri"));
    const third = await ChatPage.open(browser, undefined, server.url);
    await third.join(unique("Thi"));

    const rude = unique("rude words ");
    const regret = unique("regretted ");
    await writer.say(rude);
    await writer.say(regret);
    await expect(third.message(rude)).toBeVisible();
    // The third person may delete neither: no button is offered.
    await expect(third.message(rude).getByRole("button", { name: "Delete" })).toHaveCount(0);

    admin.page.once("dialog", (d) => d.accept());
    await admin.message(rude).hover();
    await admin.message(rude).getByRole("button", { name: "Delete" }).click();
    await expect(third.message(rude)).toHaveCount(0);
    await expect(writer.message(rude)).toHaveCount(0);

    writer.page.once("dialog", (d) => d.accept());
    await writer.message(regret).hover();
    await writer.message(regret).getByRole("button", { name: "Delete" }).click();
    await expect(third.message(regret)).toHaveCount(0);
    await expect(admin.message(regret)).toHaveCount(0);

    // Gone from the history: a fresh page does not carry either.
    await third.page.reload();
    await expect(third.status).toHaveAttribute("data-status", "connected");
    const html = await third.page.content();
    expect(html).not.toContain(rude);
    expect(html).not.toContain(regret);
    await Promise.all([admin.close(), writer.close(), third.close()]);
  } finally {
    await server.stop();
  }
});

/** An HS256 token, signed here as the embedding app would. */
function appToken(secret: string, claims: Record<string, unknown>): string {
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  const signature = createHmac("sha256", secret).update(body).digest("base64url");
  return `${body}.${signature}`;
}

test("an app's signed token brings its user in signed in, and a bad one says why", async ({ browser }) => {
  const secret = "the embedding app's secret, 32+ bytes";
  const server = new OwnServer(3109, { CONFAB_JWT_SECRET: secret });
  await server.start();
  try {
    const name = unique("App");
    const exp = Math.floor(Date.now() / 1000) + 600;
    const token = appToken(secret, { sub: `app-${name}`, name, exp });
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${server.url}/?token=${token}`);
    // Sent on to a clean URL, signed in: no dialog, a "signed token" mark.
    await expect(page).toHaveURL(`${server.url}/`);
    const chat = new ChatPage(page);
    await expect(chat.status).toHaveAttribute("data-status", "connected");
    await expect(chat.dialog).toBeHidden();
    await expect(page.locator(".whoami-name")).toHaveText(name);
    await expect(page.locator(".whoami .mark").first()).toHaveText("signed token");
    const text = unique("from the app ");
    await chat.say(text);
    // Someone else sees it, and a member mark.
    const other = await ChatPage.open(browser, undefined, server.url);
    await other.join(unique("Oth"));
    await expect(other.message(text).locator(".mark")).toHaveText("member");

    // An expired token: the page says so, and nobody is signed in.
    const stale = appToken(secret, { sub: "x", name: "Late", exp: 1_000_000 });
    const fresh = await browser.newContext();
    const late = await fresh.newPage();
    const response = await late.goto(`${server.url}/?token=${stale}`);
    expect(response?.status()).toBe(401);
    await expect(late.locator("#name-error")).toContainText("expired");
    await expect(late.getByRole("dialog", { name: "Welcome!" })).toBeVisible();
    await Promise.all([context.close(), fresh.close(), other.close()]);
  } finally {
    await server.stop();
  }
});

test("a member moves to another device with a one-time sign-in link and its QR code", async ({ browser }) => {
  const name = unique("Moe");
  const laptop = await ChatPage.open(browser);
  await laptop.join(name);
  await keepName(laptop, "correct horse battery");
  await laptop.page.locator(".people > summary").click();
  await laptop.page.getByRole("button", { name: "Sign in on another device" }).click();
  const url = await laptop.page.locator(".flash-url").inputValue();
  expect(url).toMatch(/\/link\/[A-Za-z0-9_-]{43}$/);
  await expect(laptop.page.locator(".flash img.qr")).toBeVisible();
  await expect(laptop.page.locator(".flash")).toContainText("Works once, for 15 minutes");

  const phone = await browser.newContext({ viewport: { width: 375, height: 720 } });
  const page = await phone.newPage();
  await page.goto(url);
  const chat = new ChatPage(page);
  await expect(chat.status).toHaveAttribute("data-status", "connected");
  await expect(page.locator(".whoami-name")).toHaveText(name);
  // The laptop lists both sessions now.
  await laptop.page.reload();
  await laptop.page.locator(".people > summary").click();
  await expect(laptop.page.locator(".devices summary")).toHaveText("Your sessions (2)");
  // Used once: a third browser gets nothing from it.
  const third = await browser.newContext();
  const late = await third.newPage();
  const response = await late.goto(url);
  expect(response?.status()).toBe(410);
  await expect(late.locator("#name-error")).toContainText("used or has expired");
  await Promise.all([laptop.close(), phone.close(), third.close()]);
});

import { expect, test } from "@playwright/test";
import { ChatPage, unique } from "./fixtures/chat";
import { OwnServer } from "./fixtures/server";

test("a reload keeps the name and the history, with no second join line", async ({ browser }) => {
  const chat = await ChatPage.open(browser);
  const name = unique("Reloader");
  await chat.join(name);
  const text = unique("before reload ");
  await chat.say(text);
  await expect(chat.message(text)).toBeVisible();

  await chat.page.reload();
  // The server rendered the history and knows the name: no dialog, even before the socket opens.
  await expect(chat.message(text)).toBeVisible();
  await expect(chat.dialog).toBeHidden();
  await expect(chat.status).toHaveAttribute("data-status", "connected");
  const after = unique("after reload ");
  await chat.say(after);
  await expect(chat.message(after)).toBeVisible();
  await expect(chat.systemLine(`${name} has joined the chat.`)).toHaveCount(1);

  // A second tab of the same browser is joined too.
  const tab = await chat.page.context().newPage();
  const second = new ChatPage(tab);
  await second.goto();
  await expect(second.dialog).toBeHidden();
  await expect(second.message(after)).toBeVisible();
  await chat.close();
});

test("another browser cannot take a name that is in use", async ({ browser }) => {
  const owner = await ChatPage.open(browser);
  const name = unique("Taken");
  await owner.join(name);
  const other = await ChatPage.open(browser);
  await other.nameField.fill(name);
  await other.joinButton.click();
  await expect(other.nameError).toHaveText("That name is taken");
  await expect(other.dialog).toBeVisible();
  await owner.close();
  await other.close();
});

test("a message written offline reaches the other tab exactly once", async ({ browser }) => {
  const sender = await ChatPage.open(browser);
  const reader = await ChatPage.open(browser);
  await sender.join(unique("Offline"));
  await reader.join(unique("Reader"));

  await sender.page.context().setOffline(true);
  await expect(sender.status).not.toHaveAttribute("data-status", "connected");
  const text = unique("written offline ");
  await sender.say(text);
  await expect(sender.page.locator("li.pending", { hasText: text })).toBeVisible();
  // The composer still works offline.
  await expect(sender.composer).toBeEnabled();

  await sender.page.context().setOffline(false);
  await expect(sender.status).toHaveAttribute("data-status", "connected");
  await expect(reader.message(text)).toBeVisible();
  await expect(sender.message(text)).toBeVisible();
  await expect(sender.page.locator("li.pending")).toHaveCount(0);
  // Give any duplicate time to arrive, then count.
  await reader.page.waitForTimeout(500);
  await expect(reader.message(text)).toHaveCount(1);
  await sender.close();
  await reader.close();
});

test("the outbox survives a reload", async ({ browser }) => {
  const sender = await ChatPage.open(browser);
  const reader = await ChatPage.open(browser);
  await sender.join(unique("Outbox"));
  await reader.join(unique("Reader"));
  await sender.page.context().setOffline(true);
  await expect(sender.status).not.toHaveAttribute("data-status", "connected");
  const text = unique("kept in the outbox ");
  await sender.say(text);
  await expect(sender.page.locator("li.pending", { hasText: text })).toBeVisible();
  await sender.page.context().setOffline(false);
  // Reload before the socket is back; the message must still go out once.
  await sender.page.reload();
  await expect(reader.message(text)).toBeVisible();
  await reader.page.waitForTimeout(500);
  await expect(reader.message(text)).toHaveCount(1);
  await sender.close();
  await reader.close();
});

test("scrolled up, new messages keep the view and a button jumps to them", async ({ browser }) => {
  const reader = await ChatPage.open(browser, { width: 800, height: 500 });
  const writer = await ChatPage.open(browser);
  await reader.join(unique("Scroller"));
  await writer.join(unique("Writer"));
  for (let i = 0; i < 20; i++) await writer.say(unique(`filler ${i} `));
  const lastFiller = unique("last filler ");
  await writer.say(lastFiller);
  await expect(reader.message(lastFiller)).toBeInViewport();

  await reader.list.hover();
  await reader.page.mouse.wheel(0, -600);
  await expect.poll(() => reader.list.evaluate((el) => el.scrollTop)).toBeGreaterThan(0);
  await reader.page.waitForTimeout(300);
  const top = await reader.list.evaluate((el) => el.scrollTop);

  const fresh = unique("arrived while scrolled up ");
  await writer.say(fresh);
  const button = reader.page.getByRole("button", { name: /New messages/ });
  await expect(button).toBeVisible();
  expect(await reader.list.evaluate((el) => el.scrollTop)).toBe(top);
  await expect(reader.message(fresh)).not.toBeInViewport();

  await button.click();
  await expect(reader.message(fresh)).toBeInViewport();
  await expect(button).toBeHidden();
  await reader.close();
  await writer.close();
});

test("scrolling to the top loads older messages back to the beginning", async ({ browser }) => {
  const chat = await ChatPage.open(browser, { width: 800, height: 500 });
  await chat.join(unique("Historian"));
  const first = unique("oldest of mine ");
  await chat.say(first);
  for (let i = 0; i < 60; i++) await chat.say(unique(`page filler ${i} `));
  await expect(chat.page.locator("li.pending")).toHaveCount(0);
  await chat.page.reload();
  await expect(chat.status).toHaveAttribute("data-status", "connected");
  // Only the newest 50 events came with the page.
  await expect(chat.message(first)).toHaveCount(0);
  for (let i = 0; i < 20 && (await chat.message(first).count()) === 0; i++) {
    await chat.list.evaluate((el) => el.scrollTo({ top: 0 }));
    await chat.page.waitForTimeout(200);
  }
  await expect(chat.message(first)).toHaveCount(1);
  await chat.close();
});

test("others see who is typing and who is online, and a leave line when someone leaves", async ({ browser }) => {
  const ann = await ChatPage.open(browser);
  const bob = await ChatPage.open(browser);
  const annName = unique("Typist");
  const bobName = unique("Watcher");
  await ann.join(annName);
  await bob.join(bobName);

  await ann.composer.click();
  await ann.page.keyboard.type("hello there");
  await expect(bob.page.locator(".typing")).toHaveText(`${annName} is typing…`);
  await ann.page.keyboard.press("Enter");
  await expect(bob.page.locator(".typing")).toHaveText("");

  await bob.page.locator(".people > summary").click();
  const list = bob.page.getByRole("list", { name: "People here" });
  await expect(list.getByText(annName, { exact: true })).toBeVisible();

  await ann.page.locator(".people > summary").click();
  await ann.page.getByRole("button", { name: "Leave chat or change name" }).click();
  await expect(ann.dialog).toBeVisible();
  await expect(bob.systemLine(`${annName} has left the chat.`)).toBeVisible();
  await expect(list.getByText(annName, { exact: true })).toHaveCount(0);
  await ann.close();
  await bob.close();
});

test("the status shows when the server goes away and recovers by itself", async ({ browser }) => {
  const server = new OwnServer(3101);
  await server.start();
  try {
    const chat = await ChatPage.open(browser, undefined, server.url);
    // A fresh server: the room is empty and says so.
    await expect(chat.page.getByText("No messages yet. Send your first message!")).toBeVisible();
    await chat.join(unique("Patient"));
    await expect(chat.page.getByText("No messages yet. Send your first message!")).toBeHidden();
    const before = unique("before the restart ");
    await chat.say(before);
    await expect(chat.message(before)).toBeVisible();

    await server.stop();
    await expect(chat.status).toHaveAttribute("data-status", /reconnecting|offline/);
    await expect(chat.status).toContainText(/Reconnecting|Offline/);
    const during = unique("written while down ");
    await chat.say(during);

    await server.start();
    await expect(chat.status).toHaveAttribute("data-status", "connected", { timeout: 20_000 });
    await expect(chat.message(during)).toBeVisible();
    await expect(chat.message(before)).toHaveCount(1);
    await chat.close();
  } finally {
    await server.stop();
  }
});

test("after the memory store restarts empty, open tabs start over from the new room and show what comes next", async ({ browser }) => {
  // The tabs resume after a seq the restarted room does not have: the server answers with a reset.
  const server = new OwnServer(3110, { CONFAB_STORE: "memory" });
  await server.start();
  try {
    const ann = await ChatPage.open(browser, undefined, server.url);
    const bob = await ChatPage.open(browser, undefined, server.url);
    await ann.join(unique("Ann "));
    await bob.join(unique("Bob "));
    const before = unique("forgotten by the restart ");
    for (let i = 0; i < 3; i++) await ann.say(`${before} ${i}`);
    await expect(bob.message(`${before} 2`)).toBeVisible();

    await server.stop();
    await server.start();
    for (const chat of [ann, bob]) {
      await expect(chat.status).toHaveAttribute("data-status", "connected", { timeout: 20_000 });
    }
    const after = unique("after the restart ");
    await bob.say(after);
    await expect(ann.message(after)).toBeVisible();
    await expect(bob.message(after)).toBeVisible();
    // The list is the server's room now: what it forgot is gone from it, not left stale beside it.
    await expect(ann.message(`${before} 2`)).toHaveCount(0);
    await ann.close();
    await bob.close();
  } finally {
    await server.stop();
  }
});

test("without JavaScript the page shows the history, and a name and a message can be posted", async ({ browser }) => {
  const writer = await ChatPage.open(browser);
  await writer.join(unique("Scribe"));
  const text = unique("readable without js ");
  await writer.say(text);
  await expect(writer.message(text)).toBeVisible();

  const context = await browser.newContext({ javaScriptEnabled: false });
  const page = await context.newPage();
  await page.goto("/");
  const reader = new ChatPage(page);
  await expect(reader.message(text)).toBeVisible();
  // The name dialog is a form the server handles: it joins without any script.
  const name = unique("NoJs");
  await reader.nameField.fill(name);
  await reader.nameField.press("Enter");
  await expect(reader.dialog).toBeHidden();
  await expect(page).toHaveURL(/\/$/);
  await expect(page.locator(".whoami-name")).toHaveText(name);
  // So is the composer.
  const reply = unique("posted without js ");
  await reader.composer.fill(reply);
  await reader.sendButton.click();
  await expect(reader.message(reply)).toBeVisible();
  await expect(writer.message(reply)).toBeVisible();
  await context.close();
  await writer.close();
});

test("times show in the reader's time zone, and hydration matches the server's HTML", async ({ browser }) => {
  const context = await browser.newContext({ timezoneId: "Asia/Kolkata", locale: "en-GB" });
  const page = await context.newPage();
  const errors: string[] = [];
  page.on("console", (m) => {
    if (m.type() === "error" || /hydrat/i.test(m.text())) errors.push(m.text());
  });
  const chat = new ChatPage(page);
  await chat.goto();
  await chat.join(unique("Zoned"));
  const text = unique("what time is it ");
  await chat.say(text);
  const time = chat.message(text).locator("time");
  await expect(time).not.toContainText("UTC");
  await page.reload();
  await expect(chat.status).toHaveAttribute("data-status", "connected");
  const iso = await time.getAttribute("datetime");
  const expected = new Date(iso!).toLocaleTimeString("en-GB", { timeZone: "Asia/Kolkata", hour: "2-digit", minute: "2-digit" });
  await expect(time).toHaveText(expected);
  expect(errors).toEqual([]);
  await context.close();
});

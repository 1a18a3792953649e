import { expect, test } from "@playwright/test";
import { ChatPage, unique } from "./fixtures/chat";
import { Outage, TestDatabase } from "./fixtures/postgres";
import { OwnServer } from "./fixtures/server";

// These need PostgreSQL. `make e2e` finds or starts one (.ci/postgres); without it they are skipped, loudly.
const database = () => {
  const db = TestDatabase.create();
  if (!db && process.env.CONFAB_REQUIRE_POSTGRES === "1") throw new Error("CONFAB_TEST_DATABASE_URL is not set");
  if (!db) console.warn("\n!!! SKIPPED: PostgreSQL end-to-end test: CONFAB_TEST_DATABASE_URL is not set !!!\n");
  return db;
};

/** Two server processes on one fresh PostgreSQL database, on `ports`, for the length of `run`. */
async function twoServers(ports: [number, number], run: (a: OwnServer, b: OwnServer) => Promise<void>) {
  const db = database();
  test.skip(!db, "no PostgreSQL");
  const env = { DATABASE_URL: db!.url(), CONFAB_LEAVE_GRACE_MS: "500" };
  const a = new OwnServer(ports[0], env);
  const b = new OwnServer(ports[1], env);
  await Promise.all([a.start(), b.start()]);
  try {
    await run(a, b);
  } finally {
    await a.stop();
    await b.stop();
    db!.drop();
  }
}

test("two server processes on one database: each side sees the other's people and messages", async ({ browser }) => {
  await twoServers([3104, 3105], async (a, b) => {
    const ann = await ChatPage.open(browser, undefined, a.url);
    const bob = await ChatPage.open(browser, undefined, b.url);
    const annName = unique("Ann");
    const bobName = unique("Bob");
    await ann.join(annName);
    await bob.join(bobName);
    await expect(ann.systemLine(`${bobName} has joined the chat.`)).toBeVisible();
    await expect(bob.systemLine(`${annName} has joined the chat.`)).toBeVisible();

    // So does typing (before any message: a message of Bob's clears his typing line).
    await bob.composer.click();
    await bob.page.keyboard.type("hm");
    await expect(ann.page.locator(".typing")).toHaveText(`${bobName} is typing…`);
    await bob.composer.fill("");

    const fromA = unique("sent through A ");
    const fromB = unique("sent through B ");
    await ann.say(fromA);
    await bob.say(fromB);
    for (const chat of [ann, bob]) {
      await expect(chat.message(fromA)).toHaveCount(1);
      await expect(chat.message(fromB)).toHaveCount(1);
    }
    // One order on both sides.
    const order = (chat: ChatPage) => chat.page.locator("li.message:not(.pending) .text").allTextContents();
    expect(await order(ann)).toEqual(await order(bob));

    // The name rule crosses instances too.
    const impostor = await ChatPage.open(browser, undefined, b.url);
    await impostor.nameField.fill(annName);
    await impostor.nameField.press("Enter");
    await expect(impostor.nameError).toHaveText("That name is taken");

    // Accounts too: Ann keeps her name through A; on B a guest cannot have it, and her password
    // signs her in there; signing out through B ends her tab on A.
    await ann.page.locator(".people > summary").click();
    await ann.page.getByLabel("Keep this name: choose a password").fill("correct horse battery");
    await ann.page.getByRole("button", { name: "Keep this name" }).click();
    await expect(ann.page.locator(".whoami .mark").first()).toHaveText("member");
    await impostor.page.reload();
    await impostor.nameField.fill(annName.toLowerCase());
    await impostor.nameField.press("Enter");
    await expect(impostor.nameError).toHaveText("That name belongs to a member. Sign in to use it.");
    await impostor.page.goto(`${b.url}/login`);
    await impostor.page.getByLabel("Name").fill(annName);
    await impostor.page.getByLabel("Password").fill("correct horse battery");
    await impostor.page.getByRole("button", { name: "Sign in" }).click();
    await expect(impostor.page.locator(".whoami-name")).toHaveText(annName);
    await expect(impostor.status).toHaveAttribute("data-status", "connected");
    // A second tab of Ann's first browser, served by B (cookies do not tell ports apart): signed in.
    const annOnB = new ChatPage(await ann.page.context().newPage());
    await annOnB.goto(`${b.url}/`);
    await expect(annOnB.page.locator(".whoami-name")).toHaveText(annName);
    // Signing out there, through B, ends her tab on A at once; the other browser signed in as Ann stays.
    await annOnB.page.locator(".people > summary").click();
    await annOnB.page.getByRole("button", { name: "Sign out" }).click();
    await expect(annOnB.dialog).toBeVisible();
    await expect(ann.dialog).toBeVisible();
    await expect(impostor.dialog).toBeHidden();
    await expect(impostor.page.locator(".whoami-name")).toHaveText(annName);
    await impostor.close();
    await ann.close();
    await bob.close();
  });
});

test("two server processes: a private room, a DM, its badge and a removal cross instances, and a third person on either sees nothing", async ({ browser }) => {
  await twoServers([3106, 3107], async (a, b) => {
    const frames: string[] = [];
    const ann = await ChatPage.open(browser, undefined, a.url);
    const bob = await ChatPage.open(browser, undefined, b.url);
    const cy = await ChatPage.open(browser, undefined, b.url);
    cy.page.on("websocket", (ws) => ws.on("framereceived", (f) => frames.push(String(f.payload))));
    const annName = unique("Ann");
    const bobName = unique("Bob");
    await ann.join(annName);
    await bob.join(bobName);
    await cy.join(unique("Cy"));
    const nav = (chat: ChatPage) => chat.page.getByRole("navigation", { name: "Rooms" });

    // Ann, on A, makes a private room and invites Bob, who is on B.
    const room = unique("Plans ");
    await nav(ann).getByRole("button", { name: "+ New room" }).click();
    await nav(ann).getByLabel("Room name").fill(room);
    await nav(ann).getByLabel(/Private/).check();
    await nav(ann).getByRole("button", { name: "Create room" }).click();
    await expect(ann.page.locator(".room-title h2")).toHaveText(`#${room}`);
    await ann.page.locator(".room-settings > summary").click();
    await ann.page.getByLabel("Invite").fill(bobName);
    await ann.page.getByRole("button", { name: "Invite", exact: true }).click();
    const secret = unique("across instances ");
    await ann.say(secret);
    const link = nav(bob).getByRole("link", { name: new RegExp(`^#${room}`) });
    await expect(link.locator(".badge")).toHaveText("1");
    await link.click();
    await expect(bob.message(secret)).toBeVisible();

    // A DM from Bob (B) to Ann (A), unread on her side until she opens it.
    await nav(bob).getByRole("link", { name: /^#general/ }).click();
    await bob.page.locator(".people > summary").click();
    await bob.page.getByRole("list", { name: "People here" }).locator(".person", { hasText: annName })
      .getByRole("button", { name: "Message" }).click();
    const hush = unique("only for Ann ");
    await bob.say(hush);
    const dm = nav(ann).getByRole("link", { name: new RegExp(`^${bobName}`) });
    await expect(dm.locator(".badge")).toHaveText("1");
    await dm.click();
    await expect(ann.message(hush)).toBeVisible();

    // Ann removes Bob from the room: his tab on B leaves it at once.
    await nav(ann).getByRole("link", { name: new RegExp(`^#${room}`) }).click();
    await ann.page.locator(".people > summary").click();
    await ann.page.getByRole("list", { name: "People here" }).locator(".person", { hasText: bobName })
      .getByRole("button", { name: "Remove" }).click();
    await expect(nav(bob).getByRole("link", { name: new RegExp(`^#${room}`) })).toHaveCount(0);

    // Cy, on B, never heard of either.
    await cy.page.reload();
    await expect(cy.status).toHaveAttribute("data-status", "connected");
    for (const text of [room, secret, hush]) {
      expect(await cy.page.content()).not.toContain(text);
      expect(frames.some((f) => f.includes(text))).toBe(false);
    }
    for (const chat of [ann, bob, cy]) await chat.close();
  });
});

test("when the database goes away the page says so, keeps the message, and sends it once it is back", async ({ browser }) => {
  const db = database();
  test.skip(!db, "no PostgreSQL");
  const target = new URL(db!.url());
  const outage = new Outage({ host: target.hostname, port: Number(target.port || 5432) });
  const via = await outage.listen();
  const server = new OwnServer(3106, { DATABASE_URL: db!.url(via) });
  await server.start();
  try {
    const chat = await ChatPage.open(browser, undefined, server.url);
    await chat.join(unique("Patient"));
    outage.cut();
    const text = unique("written while the database is down ");
    await chat.say(text);
    await expect(chat.status).toHaveAttribute("data-status", "unavailable");
    await expect(chat.status).toHaveText("Temporarily unavailable");
    await expect(chat.page.locator("li.pending", { hasText: text })).toBeVisible();

    outage.restore();
    await expect(chat.message(text)).toHaveCount(1, { timeout: 30_000 });
    await expect(chat.status).toHaveAttribute("data-status", "connected");
    await expect(chat.page.locator("li.pending")).toHaveCount(0);
    expect(db!.count(`SELECT count(*) FROM events WHERE text = '${text}'`)).toBe(1);
    await chat.close();
  } finally {
    outage.close();
    await server.stop();
    db!.drop();
  }
});

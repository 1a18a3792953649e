import { expect, test, type Browser, type Page } from "@playwright/test";
import { ChatPage, unique } from "./fixtures/chat";

/** Every frame the page's sockets receive, to check nothing private reached a third person. */
function recordFrames(page: Page): string[] {
  const frames: string[] = [];
  page.on("websocket", (ws) => ws.on("framereceived", (f) => frames.push(String(f.payload))));
  return frames;
}

/** A person in a browser context of their own, joined under `name`, with their socket recorded. */
async function person(
  browser: Browser,
  name: string,
  options: { width?: number; notifications?: boolean; prompt?: boolean } = {},
) {
  const context = await browser.newContext({
    viewport: { width: options.width ?? 1100, height: 760 },
    permissions: options.notifications ? ["notifications"] : [],
  });
  // Notifications the page shows, and whether it asked for permission, observed from the page; and a
  // switch that makes the tab count as hidden. With `prompt`, permission starts undecided, as in a
  // browser that has never asked, and asking grants it, as a user's "Allow" does (headless Chromium
  // has no prompt: it denies whatever was not granted).
  await context.addInitScript((prompt) => {
    const w = window as any;
    w.__permission = prompt ? "default" : undefined;
    w.__notes = [];
    w.__asked = 0;
    const Real = w.Notification;
    if (Real) {
      class Observed extends Real {
        constructor(title: string, options?: NotificationOptions) {
          super(title, options);
          w.__notes.push({ title, body: options?.body ?? "", note: this });
        }
      }
      const ask = Real.requestPermission.bind(Real);
      Object.defineProperty(Observed, "permission", { get: () => w.__permission ?? Real.permission });
      (Observed as any).requestPermission = () => {
        w.__asked += 1;
        if (w.__permission === undefined) return ask();
        w.__permission = "granted";
        return Promise.resolve("granted");
      };
      w.Notification = Observed;
    }
    w.__hidden = false;
    Object.defineProperty(document, "visibilityState", { get: () => (w.__hidden ? "hidden" : "visible") });
    Object.defineProperty(document, "hidden", { get: () => w.__hidden });
  }, options.prompt ?? false);
  const page = await context.newPage();
  const frames = recordFrames(page);
  const chat = new ChatPage(page);
  await chat.goto("/");
  await chat.join(name);
  return { chat, page, frames };
}

const sidebar = (page: Page) => page.getByRole("navigation", { name: "Rooms" });
const roomLink = (page: Page, label: string) => sidebar(page).getByRole("link", { name: new RegExp(`^${label}`) });

async function createRoom(page: Page, name: string, priv: boolean) {
  await sidebar(page).getByRole("button", { name: "+ New room" }).click();
  await sidebar(page).getByLabel("Room name").fill(name);
  if (priv) await sidebar(page).getByLabel(/Private/).check();
  await sidebar(page).getByRole("button", { name: "Create room" }).click();
  await expect(page.locator(".room-title h2")).toHaveText(`#${name}`);
}

async function setHidden(page: Page, hidden: boolean) {
  await page.evaluate((h) => {
    (window as any).__hidden = h;
    document.dispatchEvent(new Event("visibilitychange"));
  }, hidden);
}

test("a public and a private room: the third person sees neither the private room's name nor its messages", async ({ browser }) => {
  const annName = unique("Ann");
  const ann = await person(browser, annName);
  const boName = unique("Bo");
  const bo = await person(browser, boName);
  const cy = await person(browser, unique("Cy"));
  const lobby = unique("Lobby ");
  const lobbySlug = lobby.toLowerCase().replace(" ", "-");
  const secret = unique("Secret ");
  const secretText = unique("the launch is on Friday ");

  await createRoom(ann.page, lobby, false);
  await expect(ann.chat.systemLine(`${annName} has joined #${lobbySlug}.`)).toBeVisible();
  await createRoom(ann.page, secret, true);
  const secretPath = new URL(ann.page.url()).pathname;
  expect(secretPath).toMatch(/^\/r\/secret-/);
  // Switching rooms does not reload the page.
  await ann.page.evaluate(() => ((window as any).__stayed = true));
  await roomLink(ann.page, "#general").click();
  await expect(ann.page).toHaveURL(/\/$/);
  await roomLink(ann.page, `#${secret}`).click();
  await expect(ann.page).toHaveURL(new RegExp(`${secretPath}$`));
  expect(await ann.page.evaluate(() => (window as any).__stayed)).toBe(true);
  await ann.page.goBack();
  await expect(ann.page.locator(".room-title h2")).toHaveText("#general");
  await ann.page.goForward();
  await expect(ann.page.locator(".room-title h2")).toHaveText(`#${secret}`);

  // Ann invites Bo, who finds the room in his sidebar and reads her message.
  await ann.page.locator(".room-settings > summary").click();
  await ann.page.getByLabel("Invite").fill(boName);
  await ann.page.getByRole("button", { name: "Invite", exact: true }).click();
  await ann.chat.say(secretText);
  await expect(ann.chat.message(secretText)).toBeVisible();
  await roomLink(bo.page, `#${secret}`).click();
  await expect(bo.chat.message(secretText)).toBeVisible();

  // Cy can browse and join the public room, and finds no trace of the private one.
  await sidebar(cy.page).getByRole("button", { name: "Browse rooms" }).click();
  const directory = cy.page.getByRole("region", { name: "Public rooms" });
  const listed = directory.getByRole("listitem").filter({ hasText: `#${lobbySlug}` });
  await expect(listed).toBeVisible();
  await expect(directory).not.toContainText(secret);
  await listed.getByRole("button", { name: "Join" }).click();
  await expect(cy.page.locator(".room-title h2")).toHaveText(`#${lobby}`);
  await expect(cy.chat.systemLine(`has joined #${lobbySlug}.`).last()).toBeVisible();
  await expect(roomLink(cy.page, `#${secret}`)).toHaveCount(0);
  const status = await cy.page.evaluate(async (p) => (await fetch(p)).status, secretPath);
  expect(status).toBe(404);
  await cy.page.reload();
  await expect(cy.chat.status).toHaveAttribute("data-status", "connected");
  for (const text of [secret, secretText, secretPath.slice(3)]) {
    expect(await cy.page.content()).not.toContain(text);
    expect(cy.frames.some((f) => f.includes(text))).toBe(false);
  }
  for (const p of [ann, bo, cy]) await p.chat.close();
});

test("a direct message reaches only the two people in it; unread badges, the title and the divider follow", async ({ browser }) => {
  const annName = unique("Ann");
  const boName = unique("Bo");
  const ann = await person(browser, annName);
  const bo = await person(browser, boName);
  const cy = await person(browser, unique("Cy"));
  // Bo has a second tab, which hears his reads.
  const boTab = new ChatPage(await bo.page.context().newPage());
  await boTab.goto("/");
  const hush = unique("just between us ");

  await ann.page.locator(".people > summary").click();
  const people = ann.page.getByRole("list", { name: "People here" });
  await people.locator(".person", { hasText: boName }).getByRole("button", { name: "Message" }).click();
  await expect(ann.page).toHaveURL(new RegExp(`/dm/${boName}$`));
  await expect(ann.page.locator(".dm-hint")).toContainText("guest");
  await ann.chat.say(hush);
  await expect(ann.chat.message(hush)).toBeVisible();

  // Bo, in general, sees the conversation arrive unread, in both tabs, and in the title.
  for (const page of [bo.page, boTab.page]) {
    const link = roomLink(page, annName);
    await expect(link).toHaveClass(/unread/);
    await expect(link.locator(".badge")).toHaveText("1");
    await expect(page).toHaveTitle("(1) Confab");
  }
  await roomLink(bo.page, annName).click();
  await expect(bo.page).toHaveURL(new RegExp(`/dm/${annName}$`));
  await expect(bo.page.locator(".unread-divider")).toBeVisible();
  await expect(bo.chat.message(hush)).toBeVisible();
  // Reading in one tab clears the badge in the other.
  for (const page of [bo.page, boTab.page]) {
    await expect(roomLink(page, annName)).not.toHaveClass(/unread/);
    await expect(page).toHaveTitle("Confab");
  }

  // Cy heard nothing of it, and its page is a missing page to him.
  const dmPath = `/dm/${annName}`;
  expect(await cy.page.evaluate(async (p) => (await fetch(p)).status, dmPath)).toBe(404);
  await cy.page.reload();
  await expect(cy.chat.status).toHaveAttribute("data-status", "connected");
  expect(await cy.page.content()).not.toContain(hush);
  expect(cy.frames.some((f) => f.includes(hush))).toBe(false);
  await expect(sidebar(cy.page).getByRole("list", { name: "Direct messages" }).getByRole("link")).toHaveCount(0);

  // A group conversation, by names: Cy is in this one, and it is a room of its own.
  const cyName = await cy.page.locator(".whoami-name").textContent();
  await sidebar(ann.page).getByLabel("Write to").fill(`${boName}, ${cyName}`);
  await sidebar(ann.page).getByRole("button", { name: "Start conversation" }).click();
  await expect(ann.page).toHaveURL(/\/r\/dm\./);
  const group = unique("to the three of us ");
  await ann.chat.say(group);
  const groupLink = roomLink(cy.page, `${annName}, ${boName}`).or(roomLink(cy.page, `${boName}, ${annName}`));
  await groupLink.click();
  await expect(cy.chat.message(group)).toBeVisible();
  expect(await cy.page.content()).not.toContain(hush);
  for (const p of [ann, bo, cy]) await p.chat.close();
});

test("a mention and a direct message notify while the tab is hidden, and the notification opens the room", async ({ browser }) => {
  const annName = unique("Ann");
  const boName = unique("Bo");
  const ann = await person(browser, annName, { notifications: true });
  const bo = await person(browser, boName);
  // Permission is granted here, so the page never asks; asking is for a click (next test).
  expect(await ann.page.evaluate(() => (window as any).__asked)).toBe(0);

  await setHidden(ann.page, true);
  const plain = unique("nothing for Ann ");
  await bo.chat.say(plain);
  const mention = unique(`@${annName} look at this `);
  await bo.chat.say(mention);
  await expect.poll(() => ann.page.evaluate(() => (window as any).__notes.length)).toBe(1);
  const note = await ann.page.evaluate(() => (window as any).__notes[0]);
  expect(note.title).toBe(`${boName} in #general`);
  expect(note.body).toBe(mention);
  await expect(ann.page).toHaveTitle("(2) Confab");

  // A direct message notifies too; clicking it opens the conversation.
  await bo.page.locator(".people > summary").click();
  await bo.page.getByRole("list", { name: "People here" }).locator(".person", { hasText: annName })
    .getByRole("button", { name: "Message" }).click();
  await expect(bo.page).toHaveURL(/\/dm\//);
  const direct = unique("a word in private ");
  await bo.chat.say(direct);
  await expect.poll(() => ann.page.evaluate(() => (window as any).__notes.length)).toBe(2);
  expect(await ann.page.evaluate(() => (window as any).__notes[1].title)).toBe(boName);
  await setHidden(ann.page, false);
  await ann.page.evaluate(() => (window as any).__notes[1].note.onclick());
  await expect(ann.page).toHaveURL(new RegExp(`/dm/${boName}$`));
  await expect(ann.chat.message(direct)).toBeVisible();
  for (const p of [ann, bo]) await p.chat.close();
});

test("notifications are asked for on a click, never on load, and a room can be set to notify of nothing", async ({ browser }) => {
  const ann = await person(browser, unique("Ann"), { prompt: true });
  expect(await ann.page.evaluate(() => (window as any).__asked)).toBe(0);
  const turnOn = sidebar(ann.page).getByRole("button", { name: "Turn on notifications" });
  await turnOn.click();
  expect(await ann.page.evaluate(() => (window as any).__asked)).toBe(1);
  await expect(turnOn).toHaveCount(0);

  const room = unique("Quiet ");
  await createRoom(ann.page, room, false);
  await ann.page.locator(".room-settings > summary").click();
  const level = ann.page.getByLabel("Notifications for this room");
  await expect(level).toHaveValue("mentions");
  await level.selectOption("nothing");
  // The level is the server's: it holds after a reload.
  await ann.page.reload();
  await expect(ann.chat.status).toHaveAttribute("data-status", "connected");
  await ann.page.locator(".room-settings > summary").click();
  await expect(ann.page.getByLabel("Notifications for this room")).toHaveValue("nothing");
  await ann.chat.close();
});

test("at 375 px the sidebar folds into a menu that opens, switches rooms and closes", async ({ browser }) => {
  const ann = await person(browser, unique("Ann"), { width: 375 });
  const nav = sidebar(ann.page);
  await expect(nav).not.toBeInViewport();
  const toggle = ann.page.getByRole("button", { name: "Rooms" });
  await toggle.click();
  await expect(nav).toBeInViewport();
  const room = unique("Phone ");
  await createRoom(ann.page, room, false);
  await expect(nav).not.toBeInViewport();
  await toggle.click();
  await roomLink(ann.page, "#general").click();
  await expect(nav).not.toBeInViewport();
  await expect(ann.page.locator(".room-title h2")).toHaveText("#general");
  await expect(ann.chat.composer).toBeInViewport({ ratio: 1 });
  expect(await ann.page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(375);
  await ann.page.screenshot({ path: "test-results/rooms-375.png" });
  await ann.chat.close();
});

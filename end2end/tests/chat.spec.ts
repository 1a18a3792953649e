import { expect, test } from "@playwright/test";
import { ChatPage, unique } from "./fixtures/chat";
import { OwnServer } from "./fixtures/server";

test("two people join, see each other's join lines and chat with matching avatars", { tag: "@image" }, async ({ browser }) => {
  const ann = await ChatPage.open(browser);
  const bob = await ChatPage.open(browser);
  const annName = unique("Ann Lee ");
  const bobName = unique("bob");

  await expect(ann.dialog).toBeVisible();
  await expect(ann.nameField).toBeFocused();
  await ann.join(annName);
  await expect(ann.composer).toBeFocused();
  await bob.join(bobName);

  for (const chat of [ann, bob]) {
    await expect(chat.systemLine(`${annName} has joined the chat.`)).toBeVisible();
    await expect(chat.systemLine(`${bobName} has joined the chat.`)).toBeVisible();
  }

  const hello = unique("hello from Ann ");
  const reply = unique("hi Ann, Bob here ");
  await ann.say(hello);
  await expect(bob.message(hello)).toBeVisible();
  await bob.say(reply);
  await expect(ann.message(reply)).toBeVisible();

  // The same initials and the same colour in both tabs, for both people.
  for (const [text, name, initials] of [
    [hello, annName, "AL"],
    [reply, bobName, "B"],
  ]) {
    const colours: string[] = [];
    for (const chat of [ann, bob]) {
      const row = chat.message(text);
      await expect(row.locator(".name")).toHaveText(name);
      await expect(row.locator(".avatar")).toHaveText(initials);
      colours.push(await row.locator(".avatar").evaluate((el) => getComputedStyle(el).backgroundColor));
    }
    expect(colours[0]).toBe(colours[1]);
    expect(colours[0]).not.toBe("rgba(0, 0, 0, 0)");
  }

  // The system line looks different from a message: small, italic and grey.
  const line = ann.systemLine(`${bobName} has joined the chat.`);
  await expect(line).toHaveCSS("font-style", "italic");
  const lineSize = parseFloat(await line.evaluate((el) => getComputedStyle(el).fontSize));
  const textSize = parseFloat(await ann.message(reply).locator(".text").evaluate((el) => getComputedStyle(el).fontSize));
  expect(lineSize).toBeLessThan(textSize);
  await expect(ann.message(hello).locator(".name")).toHaveCSS("font-weight", "700");

  // Both tabs list the messages in the same order.
  const order = async (chat: ChatPage) => chat.page.locator("li[data-seq]").evaluateAll((rows) => rows.map((r) => r.getAttribute("data-seq")));
  expect(await order(ann)).toEqual(await order(bob));
  await ann.close();
  await bob.close();
});

test("initials are whole letters, accented or emoji, past leading punctuation, uppercased as the server renders them", async ({ browser }) => {
  const chat = await ChatPage.open(browser);
  // The browser computes these with its own Unicode data (Intl.Segmenter, toUpperCase); the server with
  // Rust's. A reload shows the server's rendering of the same rows.
  const names: [string, string][] = [
    [unique("e\u0301mile "), "É"],
    [unique("👩‍💻 straße"), "👩‍💻S"],
    // Leading punctuation is not a letter: "@zoë" is Z.
    [unique("@zoë "), "Z"],
  ];
  for (const [name] of names) {
    await chat.join(name);
    const hello = unique("hello from ");
    await chat.say(hello);
    await expect(chat.message(hello)).toBeVisible();
    await chat.page.locator(".people").evaluate((panel: HTMLDetailsElement) => (panel.open = true));
    await chat.page.getByRole("button", { name: "Leave chat or change name" }).click();
    await expect(chat.dialog).toBeVisible();
  }
  for (const pass of ["live", "server-rendered"]) {
    for (const [name, start] of names) {
      const avatar = chat.page.locator("li.message", { has: chat.page.locator(".name", { hasText: name }) }).locator(".avatar");
      const text = (await avatar.first().textContent()) ?? "";
      expect(text.normalize("NFC").startsWith(start), `${pass}: ${name} -> ${text}`).toBe(true);
      // One grapheme per word, two words at most.
      expect([...new Intl.Segmenter().segment(text)].length, `${pass}: ${text}`).toBe(2);
    }
    await chat.page.reload();
  }
  await chat.close();
});

test("a blank, too long or invisible name is refused with its own message", async ({ browser }) => {
  const chat = await ChatPage.open(browser);
  await chat.joinButton.click();
  await expect(chat.nameError).toHaveText("Name cannot be blank!");
  await chat.nameField.fill("    ");
  await chat.nameField.press("Enter");
  await expect(chat.nameError).toHaveText("Name cannot be blank!");
  await expect(chat.dialog).toBeVisible();
  await expect(chat.nameField).toHaveAttribute("aria-invalid", "true");

  await chat.nameField.fill("x".repeat(33));
  await chat.joinButton.click();
  await expect(chat.nameError).toHaveText("Name is too long: use at most 32 characters.");
  await chat.nameField.fill("tab\there");
  await chat.joinButton.click();
  await expect(chat.nameError).toHaveText("Name cannot contain control or invisible formatting characters.");
  await expect(chat.dialog).toBeVisible();

  // Typing clears the error; a good name (trimmed) joins.
  await chat.nameField.fill("  Zoë 👩‍💻  ");
  await expect(chat.nameError).toHaveText("");
  await chat.join("  Zoë 👩‍💻  ");
  await expect(chat.systemLine("Zoë 👩‍💻 has joined the chat.").last()).toBeVisible();
  await chat.close();
});

test("Enter sends, Shift+Enter adds a line, IME Enter and blank messages do not send", async ({ browser }) => {
  const chat = await ChatPage.open(browser);
  await chat.join(unique("Keys "));
  const first = unique("line one ");

  await chat.composer.click();
  await chat.page.keyboard.type(first);
  await chat.page.keyboard.press("Shift+Enter");
  await chat.page.keyboard.type("line two");
  await expect(chat.composer).toHaveValue(`${first}\nline two`);
  await chat.page.keyboard.press("Enter");
  const row = chat.message(`${first}\nline two`);
  await expect(row).toBeVisible();
  // Newlines are kept on screen.
  const box = await row.locator(".text").boundingBox();
  expect(box!.height).toBeGreaterThan(30);
  await expect(chat.composer).toHaveValue("");
  await expect(chat.composer).toBeFocused();

  // Enter that confirms an IME composition must not send.
  await chat.composer.fill("にほんご");
  await chat.composer.evaluate((el) => {
    el.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter", isComposing: true, bubbles: true, cancelable: true }));
  });
  await expect(chat.composer).toHaveValue("にほんご");

  // Whitespace only: nothing is sent, nothing is shown.
  const before = await chat.page.locator("li.message").count();
  await chat.composer.fill("   \n  ");
  await chat.composer.press("Enter");
  await chat.sendButton.click();
  await chat.page.waitForTimeout(300);
  expect(await chat.page.locator("li.message").count()).toBe(before);

  // The send button works too, and is labelled for screen readers and with a tooltip.
  await expect(chat.sendButton).toHaveAttribute("title", "Send message");
  const viaButton = unique("clicked ");
  await chat.composer.fill(viaButton);
  await chat.sendButton.click();
  await expect(chat.message(viaButton)).toBeVisible();
  await chat.close();
});

test("the composer grows from one to five lines, then scrolls", async ({ browser }) => {
  const chat = await ChatPage.open(browser);
  await chat.join(unique("Grow "));
  const one = (await chat.composer.boundingBox())!.height;
  await chat.composer.click();
  await chat.page.keyboard.type("a");
  for (let i = 0; i < 2; i++) {
    await chat.page.keyboard.press("Shift+Enter");
    await chat.page.keyboard.type("b");
  }
  const three = (await chat.composer.boundingBox())!.height;
  expect(three).toBeGreaterThan(one * 1.8);
  for (let i = 0; i < 8; i++) {
    await chat.page.keyboard.press("Shift+Enter");
    await chat.page.keyboard.type("c");
  }
  const capped = (await chat.composer.boundingBox())!.height;
  expect(capped).toBeLessThan(one * 4.5);
  expect(await chat.composer.evaluate((el) => el.scrollHeight > el.clientHeight)).toBe(true);
  await chat.close();
});

test("the list follows new messages to the bottom", async ({ browser }) => {
  const chat = await ChatPage.open(browser, { width: 800, height: 500 });
  await chat.join(unique("Scroll "));
  let last = "";
  for (let i = 0; i < 25; i++) {
    last = unique(`message ${i} `);
    await chat.say(last);
  }
  await expect(chat.message(last)).toBeInViewport();
  await expect
    .poll(() => chat.list.evaluate((el) => el.scrollHeight - el.scrollTop - el.clientHeight))
    .toBeLessThan(5);
  await chat.close();
});

test("names and messages are text, never markup", { tag: "@image" }, async ({ browser }) => {
  const attack = "<img src=x onerror=alert(1)>";
  const chat = await ChatPage.open(browser);
  const watcher = await ChatPage.open(browser);
  let dialogs = 0;
  for (const c of [chat, watcher]) c.page.on("dialog", async (d) => { dialogs++; await d.dismiss(); });

  await chat.join(attack);
  const text = `${attack}<script>alert(2)</script> ${unique("")}`;
  await chat.say(text);
  for (const c of [chat, watcher]) {
    const row = c.message(text);
    await expect(row).toBeVisible();
    await expect(row.locator(".name")).toHaveText(attack);
    await expect(row.locator(".text")).toHaveText(text);
    await expect(c.systemLine(`${attack} has joined the chat.`).last()).toBeVisible();
    expect(await c.page.locator(".rows img, .rows script").count()).toBe(0);
  }
  await chat.page.waitForTimeout(300);
  expect(dialogs).toBe(0);
  await chat.close();
  await watcher.close();
});

test("on a 375 px phone the chat fits the screen", { tag: "@image" }, async ({ browser }) => {
  const chat = await ChatPage.open(browser, { width: 375, height: 667 });
  await expect(chat.dialog).toBeInViewport({ ratio: 1 });
  await chat.join(unique("Phone "));
  const long = `${"averyveryverylongwordwithoutanyspaces".repeat(4)} ${unique("")}`;
  await chat.say(long);
  await expect(chat.message(long)).toBeVisible();
  await expect(chat.composer).toBeInViewport({ ratio: 1 });
  await expect(chat.sendButton).toBeInViewport({ ratio: 1 });
  // Long words wrap instead of widening the page.
  expect(await chat.page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(375);
  const list = (await chat.list.boundingBox())!;
  expect(list.height).toBeGreaterThan(400);
  await chat.close();
});

test("a crowd of more than 100 is counted in full and listed in part", async ({ browser }) => {
  const server = new OwnServer(3111, { CONFAB_STORE: "memory" });
  await server.start();
  try {
    // 101 people on sockets of their own, from one page of a context of their own. Without the page's
    // session cookie each socket is a visitor of its own, as the load generator's are.
    const crowd = await ChatPage.open(browser, undefined, server.url);
    await crowd.page.context().clearCookies();
    const joined = await crowd.page.evaluate(async () => {
      const answers = Array.from({ length: 101 }, (_, i) =>
        new Promise<boolean>((resolve) => {
          const socket = new WebSocket(`ws://${location.host}/ws`);
          socket.onopen = () =>
            socket.send(JSON.stringify({ type: "join", name: `Crowd ${String(i).padStart(3, "0")}` }));
          socket.onmessage = (m) => {
            if (String(m.data).startsWith('{"type":"joined"')) resolve(true);
            if (String(m.data).startsWith('{"type":"error"')) resolve(false);
          };
          (window as unknown as { crowd: WebSocket[] }).crowd ??= [];
          (window as unknown as { crowd: WebSocket[] }).crowd.push(socket);
        }),
      );
      return (await Promise.all(answers)).filter(Boolean).length;
    });
    expect(joined).toBe(101);

    const reader = await ChatPage.open(browser, undefined, server.url);
    const people = reader.page.locator(".people");
    await expect(people.locator("summary")).toHaveText("101 online");
    await people.evaluate((panel: HTMLDetailsElement) => (panel.open = true));
    await expect(people.locator("li.person")).toHaveCount(100);
    await expect(people.getByText("and 1 more online")).toBeVisible();
    await expect(people.locator("li.person").first()).toHaveText(/Crowd 000/);

    // Joining adds one; the count stays whole.
    await reader.join(unique("Newcomer "));
    await expect(people.locator("summary")).toHaveText("102 online");
    await expect(people.getByText("and 1 more online")).toBeVisible();
    await reader.close();
    await crowd.close();
  } finally {
    await server.stop();
  }
});

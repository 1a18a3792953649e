import { expect, test } from "@playwright/test";
import { ChatPage, unique } from "./fixtures/chat";
import { OwnServer } from "./fixtures/server";

test("the bundle is hashed, precompressed and cached for a year; the page is not cached", async ({ page, request }) => {
  const response = await page.goto("/");
  const headers = response!.headers();
  expect(headers["cache-control"]).toBe("no-cache");
  expect(headers["content-security-policy"]).toContain("frame-ancestors 'none'");
  expect(headers["x-content-type-options"]).toBe("nosniff");
  expect(headers["referrer-policy"]).toBeTruthy();

  const html = await response!.text();
  const assets = [...html.matchAll(/\/pkg\/confab\.[A-Za-z0-9_-]+\.(?:js|wasm|css)/g)].map((m) => m[0]);
  expect(assets.some((a) => a.endsWith(".wasm"))).toBe(true);
  expect(assets.some((a) => a.endsWith(".css"))).toBe(true);
  for (const asset of new Set(assets)) {
    for (const encoding of ["br", "gzip"]) {
      const res = await request.get(asset, { headers: { "accept-encoding": encoding } });
      expect(res.status(), asset).toBe(200);
      expect(res.headers()["content-encoding"], `${asset} as ${encoding}`).toBe(encoding);
      expect(res.headers()["cache-control"]).toBe("public, max-age=31536000, immutable");
    }
  }
});

test("the chat hydrates under the Content-Security-Policy without violations", async ({ browser }) => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const violations: string[] = [];
  page.on("console", (m) => {
    if (/Content.Security.Policy|Refused to/i.test(m.text())) violations.push(m.text());
  });
  const chat = new ChatPage(page);
  await chat.goto();
  await chat.join(unique("Csp"));
  const text = unique("under csp ");
  await chat.say(text);
  await expect(chat.message(text)).toBeVisible();
  expect(violations).toEqual([]);
  await context.close();
});

test("SIGTERM closes sockets as a restart, exits 0 quickly, and loses nothing", async ({ browser }) => {
  const server = new OwnServer(3102);
  await server.start();
  try {
    const chat = await ChatPage.open(browser, undefined, server.url);
    await chat.join(unique("Graceful"));
    const text = unique("acknowledged before SIGTERM ");
    await chat.say(text);
    await expect(chat.message(text)).toBeVisible();
    // A second socket of our own, to read the close code the server sends.
    await chat.page.evaluate(() => {
      const ws = new WebSocket(`ws://${location.host}/ws`);
      (window as any).closeCode = new Promise((resolve) => ws.addEventListener("close", (e) => resolve(`${e.code} ${e.reason}`)));
      return new Promise((resolve) => ws.addEventListener("open", resolve));
    });
    const started = Date.now();
    const code = await server.terminate();
    expect(code).toBe(0);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(await chat.page.evaluate(() => (window as any).closeCode)).toBe("1012 server restarting");

    await server.start();
    await expect(chat.status).toHaveAttribute("data-status", "connected", { timeout: 20_000 });
    await chat.page.reload();
    await expect(chat.message(text)).toHaveCount(1);
    await chat.close();
  } finally {
    await server.stop();
  }
});

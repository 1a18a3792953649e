import { expect, test } from "@playwright/test";
import { ChatPage, unique } from "./fixtures/chat";
import { OwnServer } from "./fixtures/server";
import { networkInterfaces } from "node:os";

test("the bundle is hashed, precompressed and cached for a year; the page is not cached", { tag: "@image" }, async ({ page, request }) => {
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

test("the chat hydrates under the Content-Security-Policy without violations", { tag: "@image" }, async ({ browser }) => {
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

test("started as the image starts it, the server listens on every interface and answers /healthz", { tag: "@image" }, async ({ baseURL }) => {
  // playwright.config.ts starts it from the Dockerfile's ENV with LEPTOS_SITE_ADDR=0.0.0.0, as Fly.io needs.
  const external = Object.values(networkInterfaces())
    .flat()
    .find((a) => a && a.family === "IPv4" && !a.internal);
  expect(external, "this machine has a non-loopback IPv4 address to reach the server by").toBeTruthy();
  const port = new URL(baseURL!).port;
  const res = await fetch(`http://${external!.address}:${port}/healthz`);
  expect(res.status).toBe(200);
});

test("a page on another origin cannot open the chat's WebSocket", { tag: "@image" }, async ({ page, baseURL }) => {
  // Cross-site WebSocket hijacking: a foreign page's socket carries the victim's cookie but a foreign Origin.
  await page.route("http://evil.example/", (route) =>
    route.fulfill({ contentType: "text/html", body: "<title>Not Confab</title>" }),
  );
  await page.goto("http://evil.example/");
  const wsUrl = baseURL!.replace(/^http/, "ws") + "/ws";
  const outcome = await page.evaluate(
    (url) =>
      new Promise<string>((resolve) => {
        const socket = new WebSocket(url);
        socket.onopen = () => resolve("open");
        socket.onerror = () => resolve("refused");
      }),
    wsUrl,
  );
  expect(outcome).toBe("refused");
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

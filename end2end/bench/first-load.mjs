// Scenario (e) of `make bench`: what a first visit costs. Loads the page in a fresh Chromium context (cold
// cache, brotli accepted as browsers do), sums the bytes on the wire (headers and compressed bodies, from the
// DevTools protocol) until the name field is focused and the page is hydrated and connected, and prints
// one JSON object. Median of five loads.
//
//   node bench/first-load.mjs http://127.0.0.1:3000/
import { chromium } from "@playwright/test";

const url = process.argv[2] ?? "http://127.0.0.1:3000/";
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
  args: ["--disable-background-networking", "--disable-component-update", "--no-first-run"],
});

async function once() {
  const context = await browser.newContext();
  const page = await context.newPage();
  // Polls from the first script on: interactive = the name field has focus and the socket is up (which
  // only the hydrated page can do).
  await page.addInitScript(() => {
    const check = () => {
      const status = document.querySelector(".status")?.getAttribute("data-status");
      if (document.activeElement?.id === "name-input" && status === "connected") {
        window.__interactive = performance.now();
      } else {
        setTimeout(check, 1);
      }
    };
    check();
  });
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  const resources = new Map();
  cdp.on("Network.responseReceived", (e) => resources.set(e.requestId, { url: e.response.url, type: e.type }));
  cdp.on("Network.loadingFinished", (e) => {
    const r = resources.get(e.requestId);
    if (r) r.bytes = e.encodedDataLength;
  });
  await page.goto(url);
  await page.waitForFunction(() => window.__interactive !== undefined, null, { timeout: 30_000 });
  const tti = await page.evaluate(() => window.__interactive);
  await context.close();
  const loaded = [...resources.values()].filter((r) => r.bytes !== undefined && !r.url.startsWith("ws"));
  return { tti_ms: tti, bytes: loaded.reduce((sum, r) => sum + r.bytes, 0), resources: loaded };
}

const runs = [];
for (let i = 0; i < 5; i++) runs.push(await once());
await browser.close();
runs.sort((a, b) => a.tti_ms - b.tti_ms);
const median = runs[2];
console.log(
  JSON.stringify({
    tti_ms: median.tti_ms,
    bytes: median.bytes,
    resources: median.resources.map((r) => ({ url: new URL(r.url).pathname, type: r.type, bytes: r.bytes })),
    tti_runs_ms: runs.map((r) => r.tti_ms),
  }),
);

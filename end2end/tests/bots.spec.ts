import { expect, test } from "@playwright/test";
import { execFileSync } from "node:child_process";
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { ChatPage, unique } from "./fixtures/chat";

// The server the suite started (playwright.config.ts) runs from target/e2e-data; `confab bot create`
// is run there the way an operator runs it (`fly ssh console -C "confab bot create …"`).
const root = path.resolve(__dirname, "../..");
const binary = path.join(root, "target/e2e-image/confab");
const dataDir = path.join(root, "target/e2e-data");

function confab(...args: string[]): string {
  return execFileSync(binary, args, {
    cwd: dataDir,
    env: { ...process.env, CONFAB_DATA_DIR: ".", CONFAB_WEBHOOK_ALLOW_PRIVATE: "true", RUST_LOG: "warn" },
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
}

/** A webhook receiver that checks each call's signature (as the README says to) and answers with text. */
async function receiver(secret: () => string, answer: (text: string, sender: string) => string) {
  const calls: { text: string; key: string; fresh: boolean }[] = [];
  const server: Server = createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      const header = String(req.headers["confab-signature"] ?? "");
      const t = Number(/t=(\d+)/.exec(header)?.[1]);
      const v1 = /v1=([0-9a-f]+)/.exec(header)?.[1] ?? "";
      const expected = createHmac("sha256", secret()).update(`${t}.${body}`).digest("hex");
      const valid = v1.length === expected.length && timingSafeEqual(Buffer.from(v1), Buffer.from(expected));
      const fresh = Math.abs(Date.now() / 1000 - t) <= 300;
      if (!valid || !fresh) {
        res.writeHead(401).end();
        return;
      }
      const payload = JSON.parse(body);
      calls.push({ text: payload.message.text, key: String(req.headers["idempotency-key"]), fresh });
      res.writeHead(200, { "content-type": "text/plain" }).end(answer(payload.message.text, payload.sender.name));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return { url: `http://127.0.0.1:${port}/hook`, calls, close: () => server.close() };
}

test("a bot made on the command line answers a mention in Chromium, marked as a bot", async ({ browser, request }) => {
  let secret = "";
  const hook = await receiver(() => secret, (text, sender) => `Hello ${sender}, you said: ${text}`);
  const name = unique("helper");
  const made = confab("bot", "create", name, "--webhook", hook.url);
  const token = /token: (\S+)/.exec(made)?.[1] ?? "";
  secret = /webhook secret: (\S+)/.exec(made)?.[1] ?? "";
  expect(token).toMatch(/^cfb_/);
  // A bot made by another process is heard by the running server within its refresh (2 s).
  await new Promise((resolve) => setTimeout(resolve, 2_500));

  const ann = await ChatPage.open(browser);
  await ann.join(unique("Ann"));
  const cy = await ChatPage.open(browser, { width: 375, height: 700 });
  await cy.join(unique("Cy"));

  // A mention calls the webhook; its answer is the bot's reply, with the BOT badge beside its name.
  const mention = `@${name} ${unique("hi ")}`;
  await ann.say(mention);
  const reply = ann.page.locator("li.message", { hasText: "you said:" }).filter({ hasText: mention });
  await expect(reply).toBeVisible();
  await expect(reply.locator(".name")).toHaveText(name);
  await expect(reply.locator('.mark[data-kind="bot"]')).toHaveText(/bot/i);
  // Everyone in the room sees it the same way, at phone width too.
  const seen = cy.page.locator("li.message", { hasText: "you said:" }).filter({ hasText: mention });
  await expect(seen.locator('.mark[data-kind="bot"]')).toBeVisible();
  expect(hook.calls).toHaveLength(1);
  await cy.page.screenshot({ path: test.info().outputPath("bot-reply-375.png") });

  // The bot posts through the API as itself; the page shows it live, with the badge.
  const said = unique("from the API ");
  const posted = await request.post("/api/v1/rooms/general/messages", {
    headers: { authorization: `Bearer ${token}` },
    data: { text: said },
  });
  expect(posted.status()).toBe(201);
  const row = ann.message(said);
  await expect(row).toBeVisible();
  await expect(row.locator('.mark[data-kind="bot"]')).toBeVisible();

  // A /me action and an unknown command, typed as a person.
  await ann.say("/me waves at the bot");
  await expect(ann.page.locator("li.message.action", { hasText: "waves at the bot" })).toBeVisible();
  await ann.say("/frobnicate now");
  await expect(ann.page.locator(".notice")).toContainText("no command /frobnicate");
  await expect(cy.page.getByText("frobnicate")).toHaveCount(0);

  // Revoked on the command line: the API refuses the token at once.
  confab("bot", "revoke", name);
  const refused = await request.get("/api/v1/rooms", { headers: { authorization: `Bearer ${token}` } });
  expect(refused.status()).toBe(401);
  hook.close();
  await ann.close();
  await cy.close();
});

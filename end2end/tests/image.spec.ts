import { expect, test, type Browser, type Page } from "@playwright/test";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { ChatPage, unique } from "./fixtures/chat";
import { Container, SHARED, ctr, dataDir, engine, image, readOnly, tmpfsData } from "./fixtures/container";

// The container's own behaviour, run by `make image-test` (image.config.ts) against the built image. The
// shared container on port 8080 serves the reused tests; the tests here that stop, kill or starve a
// container start their own, each on a port of its own.
test.describe.configure({ mode: "serial" });

const fly = readFileSync(path.resolve(__dirname, "../../fly.toml"), "utf8");
const killTimeout = Number(/^kill_timeout = (\d+)$/m.exec(fly)![1]);
// Load tests send as fast as acks come back: the per-user and per-address limits would only slow them.
const unlimited = {
  CONFAB_RATE_PER_SECOND: "100000",
  CONFAB_RATE_BURST: "100000",
  CONFAB_RATE_PER_ADDRESS: "100000",
  CONFAB_RATE_ADDRESS_BURST: "100000",
};

/** A page on `url`'s origin (the socket checks Origin) with `window.confab`: raw protocol sockets. */
async function protocolPage(browser: Browser, url: string): Promise<Page> {
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${url}/`);
  await page.evaluate(() => {
    type Frame = { type: string; id?: string; code?: string; events?: unknown[] };
    const sockets: WebSocket[] = [];
    const w = window as unknown as Record<string, unknown>;
    /** Opens a socket (`query` such as "?after=0"), joins as `name` when given; resolves once presence came. */
    async function open(query: string, name?: string): Promise<{ index: number; frames: Frame[] }> {
      const socket = new WebSocket(`${location.origin.replace(/^http/, "ws")}/ws${query}`);
      const frames: Frame[] = [];
      socket.onmessage = (e) => frames.push(JSON.parse(e.data));
      await new Promise((resolve, reject) => {
        socket.onopen = resolve;
        socket.onerror = reject;
      });
      if (name) socket.send(JSON.stringify({ type: "join", name }));
      for (let i = 0; i < 200 && !frames.some((f) => f.type === (name ? "joined" : "presence")); i++) {
        await new Promise((r) => setTimeout(r, 25));
      }
      sockets.push(socket);
      return { index: sockets.length - 1, frames };
    }
    w.confab = { open, sockets };
  });
  return page;
}

/** Sends one message on socket 0 and waits for its ack or error: "ack" or the error's code. */
async function sendOne(page: Page, text: string): Promise<{ id: string; outcome: string }> {
  return page.evaluate(async (text) => {
    const { sockets } = (window as unknown as { confab: { sockets: WebSocket[] } }).confab;
    const socket = sockets[0];
    const id = crypto.randomUUID();
    const outcome = await new Promise<string>((resolve) => {
      const listener = (e: MessageEvent) => {
        const f = JSON.parse(e.data);
        if (f.id !== id) return;
        if (f.type === "ack") resolve("ack");
        else if (f.type === "error") resolve(f.code);
        else return;
        socket.removeEventListener("message", listener);
      };
      socket.addEventListener("message", listener);
      socket.send(JSON.stringify({ type: "send", id, text }));
      setTimeout(() => resolve("no answer"), 10_000);
    });
    return { id, outcome };
  }, text);
}

/** Every stored message (id → text), read as a client scrolls: the recent page, then older pages. */
async function storedMessages(page: Page): Promise<Map<string, string[]>> {
  const events = await page.evaluate(async () => {
    type Event = { kind: string; id: string; seq: number; text?: string };
    type Frame = { type: string; events?: Event[]; complete?: boolean } & Event;
    const confab = (window as unknown as { confab: { open: Function; sockets: WebSocket[] } }).confab;
    const { index, frames } = (await confab.open("")) as { index: number; frames: Frame[] };
    const events: Event[] = frames.filter((f) => f.type === "event");
    let oldest = Math.min(...events.map((e) => e.seq));
    let complete = events.length === 0 || oldest <= 1;
    while (!complete) {
      const seen = frames.length;
      confab.sockets[index].send(JSON.stringify({ type: "history", before: oldest }));
      let older: Frame | undefined;
      for (let i = 0; i < 400 && !older; i++) {
        await new Promise((r) => setTimeout(r, 25));
        older = frames.slice(seen).find((f) => f.type === "history");
      }
      if (!older) throw new Error(`no history page before ${oldest}`);
      events.push(...older.events!);
      oldest = Math.min(oldest, ...older.events!.map((e) => e.seq));
      complete = !!older.complete || older.events!.length === 0;
    }
    return events;
  });
  const stored = new Map<string, string[]>();
  for (const e of events.filter((e) => e.kind === "message")) {
    stored.set(e.id, [...(stored.get(e.id) ?? []), e.text ?? ""]);
  }
  return stored;
}

test("the process is not root, the root filesystem is read-only, /metrics is on its own port from start-up", { tag: "@image" }, async ({ request }) => {
  const uid = /^Uid:\s+(\d+)/m.exec(ctr("exec", SHARED, "cat", "/proc/1/status"))![1];
  expect(uid).not.toBe("0");
  expect(ctr("exec", SHARED, "id", "-un")).toBe("confab");
  expect(ctr("inspect", "--format", "{{.Config.User}}", image)).toBe("confab");

  const write = spawnSync(engine, ["exec", SHARED, "touch", "/app/probe"], { encoding: "utf8" });
  expect(write.status).not.toBe(0);
  expect(write.stderr).toContain("Read-only file system");

  expect((await request.get("/metrics")).status()).toBe(404);
  const metrics = await (await fetch("http://127.0.0.1:9091/metrics")).text();
  for (const name of ["confab_connected_clients", "confab_messages_in_total", "confab_frames_out_total"]) {
    expect(metrics).toContain(name);
  }
});

test("SIGTERM stops it with exit code 0 within fly.toml's kill_timeout; restarted on the same volume, the history is there", { tag: "@image" }, async ({ browser }) => {
  const volume = dataDir();
  const first = new Container(8082, ["-v", `${volume}:/data`]);
  const second = new Container(8082, ["-v", `${volume}:/data`]);
  try {
    await first.start();
    const chat = await ChatPage.open(browser, undefined, first.url);
    await chat.join(unique("Volume"));
    const text = unique("kept on the volume ");
    await chat.say(text);
    await expect(chat.message(text)).toBeVisible();

    // `stop -t` sends SIGKILL after kill_timeout, which would make the exit code 137.
    const took = first.stop(killTimeout);
    console.log(`SIGTERM to exit: ${took} ms (kill_timeout ${killTimeout} s)`);
    expect(first.exitCode()).toBe(0);
    await expect(chat.status).not.toHaveAttribute("data-status", "connected");

    await second.start();
    // The open tab reconnects by itself, and a new visitor reads the message from the volume.
    await expect(chat.status).toHaveAttribute("data-status", "connected", { timeout: 20_000 });
    const visitor = await ChatPage.open(browser, undefined, second.url);
    await expect(visitor.message(text)).toBeVisible();
    await chat.close();
    await visitor.close();
  } finally {
    first.remove();
    second.remove();
  }
});

test("a /data it cannot write: a clear error on stderr and a non-zero exit", { tag: "@image" }, async () => {
  // mkdtemp makes it 0700 and this process's own: the image's user may not write there.
  const locked = mkdtempSync(path.join(tmpdir(), "confab-locked-"));
  const run = spawnSync(
    engine,
    ["run", "--rm", "--network", "host", ...readOnly, "-v", `${locked}:/data`,
      "-e", "LEPTOS_SITE_ADDR=127.0.0.1:8083", "-e", "CONFAB_METRICS_ADDR=127.0.0.1:9093", image],
    { encoding: "utf8", timeout: 60_000 },
  );
  expect(run.status, "it exits by itself").not.toBeNull();
  expect(run.status).not.toBe(0);
  expect(run.stderr).toContain("the data directory /data is not writable by this process (uid 10001)");
});

test("a full /data: sending gets `unavailable`, nothing acknowledged is lost, and it recovers when space returns", { tag: "@image" }, async ({ browser }) => {
  const c = new Container(8084, tmpfsData(8 << 20), unlimited);
  try {
    await c.start();
    const page = await protocolPage(browser, c.url);
    await page.evaluate(() => (window as any).confab.open("", "Filler"));
    const acked = new Map<string, string>();
    const filler = "x".repeat(3000);
    for (let i = 0; i < 20; i++) {
      const text = `${unique("before the disk filled ")} ${filler}`;
      const sent = await sendOne(page, text);
      expect(sent.outcome).toBe("ack");
      acked.set(sent.id, text);
    }

    const chat = await ChatPage.open(browser, undefined, c.url);
    await chat.join(unique("Patient"));

    // Fill what the volume has left, then write until the store runs out of room.
    spawnSync(engine, ["exec", c.name, "sh", "-c", "cat /dev/zero > /data/fill"]);
    let refused = "";
    for (let i = 0; i < 500 && !refused; i++) {
      const text = `${unique("filling ")} ${filler}`;
      const { id, outcome } = await sendOne(page, text);
      if (outcome === "ack") acked.set(id, text);
      else refused = outcome;
    }
    expect(refused).toBe("unavailable");
    console.log(`acknowledged before the disk was full: ${acked.size}`);

    // A person writing now keeps the message, pending, and is told. (A new visitor gets the
    // "unavailable" page: even a session needs a row.)
    const waiting = unique("written on a full disk ");
    await chat.say(waiting);
    await expect(chat.page.locator("li.pending", { hasText: waiting })).toBeVisible();
    await expect(chat.status).toHaveAttribute("data-status", "unavailable");

    c.exec("rm", "/data/fill");
    // The pending message goes out by itself, once.
    await expect(chat.message(waiting)).toBeVisible({ timeout: 30_000 });
    await expect(chat.page.locator("li.pending")).toHaveCount(0);
    const after = await sendOne(page, unique("after space returned "));
    expect(after.outcome).toBe("ack");

    const stored = await storedMessages(page);
    for (const [id, text] of acked) expect(stored.get(id), `acknowledged ${id}`).toEqual([text]);
    expect([...stored.values()].filter((t) => t[0] === waiting)).toHaveLength(1);
    await chat.close();
  } catch (err) {
    console.log(c.logs());
    throw err;
  } finally {
    c.remove();
  }
});

test("SIGKILL under load, then a start on the same volume: every acknowledged message is there, once", { tag: "@image" }, async ({ browser }) => {
  const volume = dataDir();
  const first = new Container(8085, ["-v", `${volume}:/data`], unlimited);
  const second = new Container(8085, ["-v", `${volume}:/data`], unlimited);
  try {
    await first.start();
    const page = await protocolPage(browser, first.url);
    // Four senders, each with up to 8 messages in flight, until their sockets close.
    await page.evaluate(async () => {
      const confab = (window as any).confab;
      const acked: Record<string, string> = {};
      (window as any).acked = acked;
      (window as any).senders = await Promise.all(
        [0, 1, 2, 3].map(async (n) => {
          const { index } = await confab.open("", `Loader ${n} ${Math.random().toString(36).slice(2, 6)}`);
          const socket: WebSocket = confab.sockets[index];
          const inflight = new Map<string, string>();
          socket.addEventListener("message", (e) => {
            const f = JSON.parse(e.data);
            if (f.type === "ack" && inflight.has(f.id)) {
              acked[f.id] = inflight.get(f.id)!;
              inflight.delete(f.id);
            }
          });
          const timer = setInterval(() => {
            if (socket.readyState !== WebSocket.OPEN) return clearInterval(timer);
            while (inflight.size < 8) {
              const id = crypto.randomUUID();
              const text = `load ${n} ${id}`;
              inflight.set(id, text);
              socket.send(JSON.stringify({ type: "send", id, text }));
            }
          }, 2);
          return index;
        }),
      );
    });
    await expect.poll(() => page.evaluate(() => Object.keys((window as any).acked).length)).toBeGreaterThan(200);
    first.kill();
    await expect
      .poll(() => page.evaluate(() => (window as any).confab.sockets.every((s: WebSocket) => s.readyState === WebSocket.CLOSED)))
      .toBe(true);
    const acked: Record<string, string> = await page.evaluate(() => (window as any).acked);
    console.log(`acknowledged before SIGKILL: ${Object.keys(acked).length}`);

    await second.start();
    const reader = await protocolPage(browser, second.url);
    const stored = await storedMessages(reader);
    for (const [id, text] of Object.entries(acked)) expect(stored.get(id), `acknowledged ${id}`).toEqual([text]);
  } finally {
    first.remove();
    second.remove();
  }
});

test("on PostgreSQL a machine needs no volume: nothing is written under /data", { tag: "@image" }, async ({ browser }) => {
  const admin = process.env.CONFAB_TEST_DATABASE_URL;
  expect(admin, "make image-test sets CONFAB_TEST_DATABASE_URL (.ci/postgres)").toBeTruthy();
  const db = `confab_image_${process.pid}_${Date.now()}`;
  execFileSync("psql", ["-X", "-q", admin!, "-c", `CREATE DATABASE ${db}`]);
  const url = admin!.replace(/\/[^/]*$/, `/${db}`);
  const c = new Container(8086, [], { DATABASE_URL: url });
  try {
    await c.start();
    const ann = await ChatPage.open(browser, undefined, c.url);
    const bob = await ChatPage.open(browser, undefined, c.url);
    await ann.join(unique("Pg Ann "));
    await bob.join(unique("Pg Bob "));
    const text = unique("stored in PostgreSQL ");
    await ann.say(text);
    await expect(bob.message(text)).toBeVisible();
    expect(c.logs()).toContain("PostgreSQL store open");
    expect(c.exec("ls", "-A", "/data")).toBe("");
    await ann.close();
    await bob.close();
  } finally {
    c.remove();
    spawnSync("psql", ["-X", "-q", admin!, "-c", `DROP DATABASE IF EXISTS ${db} WITH (FORCE)`]);
  }
});

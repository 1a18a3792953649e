import { defineConfig } from "@playwright/test";
import { readFileSync } from "node:fs";
import path from "node:path";

// The tests start the release server themselves (built by `make test`), on a port of their own so a
// running `make run` or `cargo leptos watch` is left alone.
const port = Number(process.env.CONFAB_E2E_PORT ?? 3100);
const chromium = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

export default defineConfig({
  testDir: "./tests",
  // The container's own tests: `make image-test` runs them (image.config.ts).
  testIgnore: "image.spec.ts",
  timeout: 30_000,
  expect: { timeout: 10_000 },
  // One room is shared by every test: run them one at a time so each reads its own messages.
  workers: 1,
  fullyParallel: false,
  forbidOnly: !!process.env.CI,
  retries: 0,
  reporter: [["list"]],
  use: {
    baseURL: `http://127.0.0.1:${port}`,
    trace: "retain-on-failure",
    launchOptions: {
      executablePath: chromium,
      // Without these, Chromium keeps trying to reach Google's services, which this network refuses.
      args: [
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
      ],
    },
  },
  projects: [{ name: "chromium" }],
  webServer: {
    // Started the way the Docker image starts it (see imageEnv): the binary and hash.txt side by side, the
    // site beside them, configured by the Dockerfile's own ENV and bound to 0.0.0.0. Only the port, the
    // paths and test-friendly timings differ. A fresh database for every run, so tests read only their own.
    command:
      "rm -rf target/e2e-image target/e2e-data && mkdir -p target/e2e-image target/e2e-data" +
      " && cp target/release/confab target/release/hash.txt target/e2e-image/" +
      " && cp -r target/site target/e2e-image/site" +
      " && cd target/e2e-data && exec ../e2e-image/confab",
    cwd: "..",
    url: `http://127.0.0.1:${port}/healthz`,
    reuseExistingServer: false,
    timeout: 60_000,
    stdout: "pipe",
    stderr: "pipe",
    env: {
      ...imageEnv(),
      LEPTOS_SITE_ADDR: `0.0.0.0:${port}`,
      LEPTOS_SITE_ROOT: path.resolve(__dirname, "../target/e2e-image/site"),
      CONFAB_DATA_DIR: ".",
      RUST_LOG: "warn",
      CONFAB_LEAVE_GRACE_MS: "1000",
      // Tests fill the history quickly; the rate limit itself is covered by the integration tests.
      CONFAB_RATE_BURST: "500",
      CONFAB_RATE_ADDRESS_BURST: "2000",
      // Every browser of the suite signs in from 127.0.0.1.
      CONFAB_SIGNIN_ATTEMPTS: "1000",
      // The bots spec's webhook receiver listens on 127.0.0.1.
      CONFAB_WEBHOOK_ALLOW_PRIVATE: "true",
    },
  },
});

/** The environment the Dockerfile's runtime stage sets with ENV (KEY=value pairs, `\` continuations). */
function imageEnv(): Record<string, string> {
  const dockerfile = readFileSync(path.resolve(__dirname, "../Dockerfile"), "utf8");
  const runtime = dockerfile.slice(dockerfile.lastIndexOf("\nFROM "));
  const block = runtime.match(/^ENV ((?:.*\\\n)*.*)$/m);
  if (!block) throw new Error("the Dockerfile's runtime stage sets no ENV");
  const env: Record<string, string> = {};
  for (const pair of block[1].replace(/\\\n/g, " ").trim().split(/\s+/)) {
    const [key, ...value] = pair.split("=");
    env[key] = value.join("=");
  }
  return env;
}

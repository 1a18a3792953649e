import { defineConfig } from "@playwright/test";

// The tests start the release server themselves (built by `make test`), on a port of their own so a
// running `make run` or `cargo leptos watch` is left alone.
const port = Number(process.env.CONFAB_E2E_PORT ?? 3100);
const chromium = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

export default defineConfig({
  testDir: "./tests",
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
    // A fresh database for every run, so the tests read only their own history.
    command: "rm -rf target/e2e-data && ./target/release/confab",
    cwd: "..",
    url: `http://127.0.0.1:${port}/healthz`,
    reuseExistingServer: false,
    timeout: 60_000,
    stdout: "pipe",
    stderr: "pipe",
    env: {
      LEPTOS_SITE_ADDR: `127.0.0.1:${port}`,
      LEPTOS_SITE_ROOT: "target/site",
      LEPTOS_ENV: "PROD",
      LEPTOS_HASH_FILES: "true",
      RUST_LOG: "warn",
      CONFAB_DATA_DIR: "target/e2e-data",
      CONFAB_LEAVE_GRACE_MS: "1000",
      // Tests fill the history quickly; the rate limit itself is covered by the integration tests.
      CONFAB_RATE_BURST: "500",
    },
  },
});

import { defineConfig } from "@playwright/test";
import base from "./playwright.config";
import { SHARED as name, engine, image, readOnly } from "./tests/fixtures/container";

// `make image-test`: the built image, run as Fly.io runs it, and the tests tagged @image against it. The
// production tests of the suite that need no server of their own run here too, unchanged. Port 8080 on
// the host's network, a host directory as /data, the image's own user and ENV, a read-only root.
const data = "target/image-e2e/data";

export default defineConfig({
  ...base,
  testMatch: ["image.spec.ts", "production.spec.ts", "chat.spec.ts"],
  testIgnore: [],
  grep: /@image/,
  timeout: 60_000,
  use: { ...base.use, baseURL: "http://127.0.0.1:8080" },
  webServer: {
    command: [
      `${engine} rm -f ${name} >/dev/null 2>&1;`,
      `rm -rf ${data} && mkdir -p ${data} && chmod 777 ${data} &&`,
      `exec ${engine} run --rm --name ${name} --network host ${readOnly.join(" ")}`,
      `-v "$PWD/${data}:/data"`,
      // Test-friendly limits, as in playwright.config.ts: every browser of the suite comes from 127.0.0.1.
      `-e CONFAB_RATE_BURST=500 -e CONFAB_RATE_ADDRESS_BURST=2000 -e CONFAB_SIGNIN_ATTEMPTS=1000`,
      image,
    ].join(" "),
    cwd: "..",
    url: "http://127.0.0.1:8080/healthz",
    reuseExistingServer: false,
    timeout: 120_000,
    stdout: "pipe",
    stderr: "pipe",
    // `run` without -d passes the signal on to the container, which then stops as on `fly deploy`.
    gracefulShutdown: { signal: "SIGTERM", timeout: 15_000 },
  },
});

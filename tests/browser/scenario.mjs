// What every browser scenario shares: Chromium launched as the tests need
// it, failed expectations as errors, and one JSON line of what was seen
// (with `ok`), the exit status non-zero on failure.
import { chromium } from "playwright-core";

export function expect(condition, what) {
  if (!condition) throw new Error(`expectation failed: ${what}`);
}

// Run `body(browser, result)`; it fills `result` with what it saw.
export async function scenario(body) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const result = {};
  try {
    await body(browser, result);
    result.ok = true;
  } catch (error) {
    result.ok = false;
    result.error = String(error && error.stack ? error.stack : error);
    process.exitCode = 1;
  } finally {
    await browser.close();
    console.log(JSON.stringify(result));
  }
}

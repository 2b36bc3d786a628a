/**
 * The rate limiter with a clock the test controls: the waits it asks for and the bandwidth it
 * measures are exact functions of the bytes counted (no wall clock involved).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { BUFFER_DELAY_MS, MigrationClock, RateLimiter } from "../../src/migration/rate_limit.js";

/** A clock that only moves when the limiter sleeps (or the test advances it). */
function fakeClock(): MigrationClock & { t: number; sleeps: number[] } {
  const c = {
    t: 1000,
    sleeps: [] as number[],
    now: () => c.t,
    sleep: (ms: number) => {
      c.sleeps.push(ms);
      c.t += ms;
      return Promise.resolve();
    },
  };
  return c;
}

test("1000 bytes/s: each write waits until the slice's bytes fit the rate; bandwidth per slice", async () => {
  const c = fakeClock();
  const rl = new RateLimiter(1000, c);
  await rl.account(50); // due at 50 ms
  assert.deepEqual(c.sleeps, [50]);
  assert.equal(rl.bandwidth, 0, "no slice has ended yet");
  await rl.account(60); // 110 bytes: due at 110 ms, past the 100 ms slice
  assert.deepEqual(c.sleeps, [50, 60]);
  assert.equal(rl.bandwidth, 1, "110 bytes in 110 ms");
  // A new slice started at 110 ms: 200 bytes are due 200 ms into it.
  await rl.account(200);
  assert.deepEqual(c.sleeps, [50, 60, 200]);
  assert.equal(rl.bandwidth, 1);
  assert.equal(c.t, 1000 + 310);
});

test("waits under a millisecond are not taken; they add up to the next write's", async () => {
  const c = fakeClock();
  c.t = 0;
  const rl = new RateLimiter(1_024_000, c); // 1024 bytes per ms
  await rl.account(512); // due 0.5 ms: not slept
  assert.deepEqual(c.sleeps, []);
  await rl.account(768); // 1280 bytes: due 1.25 ms
  assert.deepEqual(c.sleeps, [1.25]);
});

test("no limit, or disabled for the completion stage: never waits, still measures bandwidth", async () => {
  for (const disabled of [false, true]) {
    const c = fakeClock();
    const rl = new RateLimiter(disabled ? 10 : 0, c);
    rl.enabled = !disabled;
    await rl.account(4096);
    c.t += BUFFER_DELAY_MS / 2;
    await rl.account(4096);
    assert.equal(rl.bandwidth, 0);
    c.t += BUFFER_DELAY_MS / 2;
    await rl.account(8192);
    assert.deepEqual(c.sleeps, []);
    assert.equal(rl.bandwidth, 16384 / BUFFER_DELAY_MS);
  }
});

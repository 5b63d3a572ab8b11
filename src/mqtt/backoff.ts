/**
 * Reconnect delays. mqtt.js only knows a fixed reconnectPeriod; a fleet of boards hammering a broker
 * that just restarted needs growing, jittered delays instead.
 */

/**
 * Delay before reconnect attempt number `failures` (0 for the first retry): min·2^failures, capped at max,
 * spread by ±20 % jitter (still within [min, max]) so boards that lost the broker together do not return
 * together.
 */
export function backoffDelay(
  failures: number,
  minMs: number,
  maxMs: number,
  random: () => number = Math.random,
): number {
  const max = Math.max(minMs, maxMs);
  const base = Math.min(max, minMs * 2 ** Math.min(failures, 30));
  const jittered = base * (0.8 + 0.4 * random());
  return Math.round(Math.min(max, Math.max(minMs, jittered)));
}

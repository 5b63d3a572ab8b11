/**
 * A part of the daemon with a lifecycle of its own. The controller starts its modules from one ordered list
 * and stops them in reverse; each start is isolated (one that fails is reported and the others run), each
 * stop removes what its start added.
 */
import type { StatsMessage } from '../mqtt/messages.js';

export interface DaemonModule {
  /** Short, stable name: logs, errors and the `modules` object of the stats message. */
  readonly name: string;
  start(): Promise<void> | void;
  /** Undoes start: listeners removed, timers cleared, work ended. Only called after a start that succeeded. */
  stop(): Promise<void> | void;
  /** Its part of the stats message. */
  stats?(): Partial<StatsMessage>;
  /** The MQTT connection (re)connected: republish retained state. */
  connected?(): void;
}

export type ModuleState = 'starting' | 'running' | 'failed' | 'stopping' | 'stopped';

/** A module from plain functions, for the controller's own small parts. */
export function defineModule(name: string, parts: Omit<DaemonModule, 'name'>): DaemonModule {
  return { name, ...parts };
}

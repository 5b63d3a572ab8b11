/** `perch run`: the daemon's entry point, with systemd readiness, watchdog and signal handling. */
import type { PerchConfig } from '../config/schema.js';
import { createLogger } from '../common/log.js';
import { Controller } from './controller.js';
import { installShutdown } from './shutdown.js';
import { SystemdNotifier } from './systemd.js';
import { perchVersion } from '../common/version.js';

/** How often --exit-with-parent looks at the parent process id (a second of overlap at most on a port). */
const PARENT_CHECK_MS = 1000;

export async function runDaemon(
  config: PerchConfig,
  opts: { configPath: string; exitWithParent?: boolean },
): Promise<void> {
  const log = createLogger(config.log);
  log.info({ config: opts.configPath, version: perchVersion() }, 'Perch starting');
  const notifier = new SystemdNotifier({ logger: log });
  const controller = new Controller({ config, version: perchVersion(), logger: log });
  const shutdown = installShutdown({
    logger: log,
    drainTimeoutMs: config.daemon.drain_timeout_ms,
    stop: async (reason) => {
      await notifier.stopping(`stopping: ${reason}`);
      notifier.stopWatchdog();
      await controller.stop(reason);
      await notifier.close();
    },
  });
  if (opts.exitWithParent) {
    // A process whose parent died is handed to init (or a subreaper): its parent id changes.
    const parent = process.ppid;
    setInterval(() => {
      if (process.ppid !== parent) void shutdown.shutdown(`parent process ${parent} ended`);
    }, PARENT_CHECK_MS).unref();
  }
  await controller.start();
  await notifier.ready('running');
  notifier.startWatchdog();
}

/** `perch run`: the daemon's entry point, with systemd readiness, watchdog and signal handling. */
import type { PerchConfig } from '../config/schema.js';
import { createLogger } from '../log.js';
import { Controller } from './controller.js';
import { installShutdown } from './shutdown.js';
import { SystemdNotifier } from './systemd.js';
import { perchVersion } from '../version.js';

export async function runDaemon(config: PerchConfig, opts: { configPath: string }): Promise<void> {
  const log = createLogger(config.log);
  log.info({ config: opts.configPath, version: perchVersion() }, 'Perch starting');
  const notifier = new SystemdNotifier({ logger: log });
  const controller = new Controller({ config, version: perchVersion(), logger: log });
  installShutdown({
    logger: log,
    drainTimeoutMs: config.daemon.drain_timeout_ms,
    stop: async (reason) => {
      await notifier.stopping(`stopping: ${reason}`);
      notifier.stopWatchdog();
      await controller.stop(reason);
      await notifier.close();
    },
  });
  await controller.start();
  await notifier.ready('running');
  notifier.startWatchdog();
}

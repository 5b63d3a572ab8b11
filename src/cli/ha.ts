/** `perch ha remove`: deletes Perch's device (every entity) from Home Assistant's MQTT discovery. */
import type { Command } from 'commander';
import mqtt from 'mqtt';
import { EXIT_CONFIG, loadOrReport } from './config.js';
import { loadTls } from '../mqtt/client-options.js';
import { haRemove } from '../mqtt/discovery.js';

export function registerHaCommands(program: Command): void {
  const ha = program.command('ha').description('Home Assistant integration');
  ha.command('remove')
    .description('Remove the Perch device and all its entities from Home Assistant (empty retained discovery)')
    .option('-c, --config <file>', 'config file (default: $PERCH_CONFIG, else /etc/perch/config.yaml)')
    .action(async (opts: { config?: string }) => {
      const loaded = loadOrReport(opts.config);
      if (!loaded) {
        process.exitCode = EXIT_CONFIG;
        return;
      }
      const { config } = loaded;
      const tls = loadTls(config.mqtt);
      // Its own client id and no last will: a running daemon keeps its session and its status topic.
      const client = await mqtt.connectAsync(config.mqtt.url, {
        protocolVersion: 4,
        clientId: `perch-${config.device.id}-admin-${process.pid}`,
        clean: true,
        reconnectPeriod: 0,
        connectTimeout: 10_000,
        username: config.mqtt.username,
        password: config.mqtt.password,
        rejectUnauthorized: tls.rejectUnauthorized,
        ...(tls.ca ? { ca: tls.ca } : {}),
        ...(tls.cert ? { cert: tls.cert } : {}),
        ...(tls.key ? { key: tls.key } : {}),
      });
      try {
        const topics = await haRemove((topic, payload, o) => client.publishAsync(topic, payload, o), {
          discoveryPrefix: config.homeassistant.discovery_prefix,
          deviceId: config.device.id,
          stateDir: config.daemon.state_dir,
        });
        process.stdout.write(`removed Home Assistant discovery: ${topics.join(', ')}\n`);
      } finally {
        await client.endAsync();
      }
    });
}

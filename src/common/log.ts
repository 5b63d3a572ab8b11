/** Structured logging: JSON lines on stdout (journald stores them), or pretty lines for a terminal. */
import { pino, type Logger } from 'pino';

export type { Logger };

export interface LogOptions {
  level: string;
  format: 'json' | 'pretty';
}

export function createLogger(opts: LogOptions, destination: NodeJS.WritableStream = process.stdout): Logger {
  if (opts.format === 'pretty') {
    const write = (line: string) => {
      const rec = JSON.parse(line) as Record<string, unknown>;
      const { time, level, msg, pid: _pid, hostname: _host, module, ...rest } = rec;
      const extra = Object.keys(rest).length ? ' ' + JSON.stringify(rest) : '';
      destination.write(
        `${new Date(time as number).toISOString()} ${pino.levels.labels[level as number]?.toUpperCase() ?? level}${module ? ` [${module}]` : ''} ${msg ?? ''}${extra}\n`,
      );
    };
    return pino({ level: opts.level }, { write });
  }
  return pino({ level: opts.level, base: undefined, timestamp: pino.stdTimeFunctions.isoTime }, destination);
}

/** A logger that drops everything: for tests and library callers that pass none. */
export const silentLogger: Logger = pino({ level: 'silent' });

// A real `deep-recall serve` for the tests: the binary from DEEP_RECALL_BIN (scripts/test.sh
// sets it; else the cargo target directory's debug build), on a free loopback port, over a
// fresh embedded store, with the test JWT secret and the models of DEEP_RECALL_MODELS_DIR.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

export const SECRET = 'test-secret-0123456789abcdef';

const target =
  process.env.CARGO_TARGET_DIR ?? join(homedir(), '.cache', 'deep-recall', 'target');
const bin = process.env.DEEP_RECALL_BIN ?? join(target, 'debug', 'deep-recall');
const models =
  process.env.DEEP_RECALL_MODELS_DIR ?? join(homedir(), '.cache', 'deep-recall', 'models');

/** Starts a server with `extra` flags and `env`; resolves to { url, stop() } once it listens. */
export async function startServer(extra = [], env = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'deep-recall-ts-'));
  const child = spawn(
    bin,
    ['--data-dir', dir, '--models-dir', models, '--device', 'cpu', 'serve', '--bind',
      '127.0.0.1:0', '--jwt-secret', SECRET, ...extra],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, DEEP_RECALL__LOG__FILTER: 'warn', ...env } },
  );
  let logs = '';
  child.stderr.on('data', (d) => {
    logs += d;
  });
  const line = await new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    lines.once('line', resolve);
    child.once('exit', (code) => reject(new Error(`deep-recall exited ${code}:\n${logs}`)));
  });
  const url = String(line).replace('deep-recall: listening on ', '').trim();
  return {
    url,
    logs: () => logs,
    stop() {
      child.kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');

/** An HS256 JWT for `sub`, valid for `ttl` seconds. */
export function token(sub, ttl = 600) {
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const body = b64({ sub, exp: Math.floor(Date.now() / 1000) + ttl });
  const sig = createHmac('sha256', SECRET).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

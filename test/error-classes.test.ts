/**
 * Every error class of the state store, the audit log, the protocol, the SOPS reader, git, the keys,
 * the client, the agent, the daemon, its listeners, the command line, the rotation engine and the
 * repository reader is a RotorError, keeps its name and code, and says whether trying again can help:
 * the same decisions the callers made before from the code strings.
 */

import { writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import path from 'node:path';
import { generateX25519Identity, identityToRecipient } from 'age-encryption';
import t from 'tap';
import { AgentConfigError } from '../agent/src/config.js';
import type { DbErrorCode } from '../agent/src/engines/types.js';
import { DbError } from '../agent/src/engines/types.js';
import { AgentError } from '../agent/src/errors.js';
import type { AuditErrorCode } from '../src/audit/entry.js';
import { AuditError, AuditLog, nodeAuditFs } from '../src/audit/index.js';
import { AdminError } from '../src/cli/admin-client.js';
import { auditDirOf } from '../src/cli/audit.js';
import { FieldError } from '../src/cli/get.js';
import { ExportError } from '../src/cli/state-export.js';
import { RotorClientError } from '../src/client/index.js';
import { daemonStopping, StepError } from '../src/daemon/agents.js';
import { checkDataDir, DataDirError, LockError } from '../src/daemon/lock.js';
import { BACKOFF, errnoOf, NEVER, RotorError, retryOf, storageOf } from '../src/errors.js';
import type { GitRepoErrorCode } from '../src/git/errors.js';
import { GitRepoError } from '../src/git/errors.js';
import { GitError } from '../src/git/run.js';
import { KeyError, loadKeys } from '../src/keys.js';
import { tooLarge } from '../src/model/source.js';
import { openSealed, SealError, sealForAgent } from '../src/protocol/seal.js';
import { ProtocolError } from '../src/protocol/sign.js';
import type { EngineOptions } from '../src/rotation/engine.js';
import { Engine } from '../src/rotation/engine.js';
import { stopped } from '../src/rotation/steps.js';
import { SocketError } from '../src/serve/consumer-sockets.js';
import { HttpError } from '../src/serve/http-json.js';
import { listenTcp } from '../src/serve/listen.js';
import { parseMetricsHosts } from '../src/serve/metrics.js';
import { AgentTlsError } from '../src/serve/tls.js';
import { AuthFailure } from '../src/sops/cipher.js';
import { openSops } from '../src/sops/index.js';
import { SopsError } from '../src/sops/types.js';
import { nodeFs, openStore } from '../src/state/store.js';
import type { StateErrorCode } from '../src/state/types.js';
import { StateError } from '../src/state/types.js';
import { UsageError } from '../src/util/args.js';
import { tempDir } from './helpers.js';

t.test('every error class is a RotorError and keeps its own name', async (t) => {
  const errors: Array<[string, Error]> = [
    ['StateError', new StateError('STATE_CORRUPT', 'x')],
    ['AuditError', new AuditError('AUDIT_MALFORMED', 'x')],
    ['ProtocolError', new ProtocolError('PROTOCOL_KEY', 'x')],
    ['SealError', new SealError('SEAL_CORRUPT', 'x')],
    ['SopsError', new SopsError('SOPS_CORRUPT', 'x')],
    ['AuthFailure', new AuthFailure()],
    ['GitRepoError', new GitRepoError('GIT_FAILED', 'x')],
    ['GitError', new GitError(['status'], 1, 'fatal: x')],
    ['KeyError', new KeyError('KEYS_MISSING', 'x')],
    ['RotorClientError', new RotorClientError('TIMEOUT', 'x')],
    ['AgentError', new AgentError('AGENT_STOPPED', 'x')],
    ['DbError', new DbError('DB_ERROR', 'x', '42')],
    ['AgentConfigError', new AgentConfigError('agent.yaml', [])],
    ['LockError', new LockError('x')],
    ['DataDirError', new DataDirError('x')],
    ['StepError', new StepError('AGENT_TIMEOUT', 'x')],
    ['HttpError', new HttpError(404, 'NOT_FOUND', 'x')],
    ['SocketError', new SocketError('SOCKET_DIR_UNSAFE', 'x')],
    ['AgentTlsError', new AgentTlsError('AGENT_TLS_INVALID', 'x')],
    ['FieldError', new FieldError('x')],
    ['AdminError', new AdminError('ADMIN_DENIED', 'x')],
    ['ExportError', new ExportError('EXPORT_SECRET_UNKNOWN', 'x')],
    ['UsageError', new UsageError('x')],
  ];
  for (const [name, e] of errors) {
    t.ok(e instanceof RotorError, `${name} is a RotorError`);
    t.ok(e instanceof Error, `${name} is an Error`);
    t.equal(e.name, name, `${name} keeps its name`);
  }
  t.equal(new GitError(['status'], 1, '').code, 'GIT_FAILED');
  t.equal(new AgentConfigError('agent.yaml', []).code, 'AGENT_CONFIG_INVALID');
  const db = new DbError('DB_PERMISSION', 'x', '42501');
  t.equal(db.dbCode, '42501', 'extra fields stay');
  const at = { file: '2026-11.jsonl', line: 3, seq: 7 };
  t.same(new AuditError('AUDIT_HASH_MISMATCH', 'x', at).at, at);
  const details = { files: ['audit/a'] };
  t.same(new GitRepoError('GIT_AUDIT_CONFLICT', 'x', { details }).details, details);
  const refused = new AgentError('AGENT_DAEMON_REFUSED', 'x', 403, 'ACCESS_DENIED');
  t.match(refused, { status: 403, daemonCode: 'ACCESS_DENIED' });
  t.equal(new RotorClientError('ACCESS_DENIED', 'x', 403).status, 403);
});

t.test('the state store: STATE_IO is its storage failing, retried with backoff; the rest need a person', async (t) => {
  const codes: StateErrorCode[] = [
    'STATE_CORRUPT',
    'STATE_CHAIN_BROKEN',
    'STATE_ROLLBACK',
    'STATE_FOREIGN',
    'STATE_KEY',
    'STATE_FENCED',
    'STATE_URL_PASSWORD',
    'STATE_URL_INVALID',
    'STATE_PASSWORD_FILE',
    'STATE_AUTH',
    'STATE_PERMISSION',
    'STATE_SCHEMA',
  ];
  for (const code of codes) {
    const e = new StateError(code, 'x');
    t.same(retryOf(e), NEVER, `${code} is never retried`);
    t.equal(storageOf(e), undefined, `${code} is not a storage failure`);
  }
  const identity = await generateX25519Identity();
  const recipients = [await identityToRecipient(identity)];
  const dir = tempDir(t);
  const fs = {
    ...nodeFs,
    rename: async () => {
      throw Object.assign(new Error('ENOSPC: injected'), { code: 'ENOSPC' });
    },
  };
  const e = await openStore({ dir, identity, recipients, fs }).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(e instanceof StateError, 'creating a store on a full disk fails');
  t.match(e, { name: 'StateError', code: 'STATE_IO' });
  t.same(retryOf(e), BACKOFF, 'with backoff');
  t.equal(storageOf(e), 'state store', 'as the state store failing');
  t.equal(errnoOf(e), 'ENOSPC');
});

t.test('the audit log: a failed append is its storage failing, retried with backoff', async (t) => {
  const dir = tempDir(t);
  const fs = {
    ...nodeAuditFs,
    open: async (file: string, flags: 'a' | 'wx' | 'r') => {
      if (flags !== 'r') throw Object.assign(new Error('EROFS: injected'), { code: 'EROFS' });
      return nodeAuditFs.open(file, flags);
    },
  };
  const log = await AuditLog.open(dir, { fs });
  const time = '2026-11-26T02:00:00.000Z';
  const entry = { time, event: 'rotated', secret: 'a/b', from: 1, to: 2, trigger: 'schedule' };
  const e = await log.append([entry as never]).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(e instanceof AuditError);
  t.match(e, { name: 'AuditError', code: 'AUDIT_WRITE_FAILED' });
  t.same(retryOf(e), BACKOFF, 'with backoff');
  t.equal(storageOf(e), 'audit log', 'as the audit log failing');
  t.equal(errnoOf(e), 'EROFS');
  const bad = await log.append([{ nonsense: true } as never]).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.match(bad, { code: 'AUDIT_INVALID_ENTRY' });
  t.same(retryOf(bad), NEVER, 'an entry the writer refuses is never retried');
  t.equal(storageOf(bad), undefined);
  t.same(retryOf(new AuditError('AUDIT_IO', 'x')), BACKOFF, 'a read that failed is retried');
  t.equal(storageOf(new AuditError('AUDIT_IO', 'x')), undefined, 'but is not the log failing to be written');
  const permanent: AuditErrorCode[] = [
    'AUDIT_MALFORMED',
    'AUDIT_HASH_MISMATCH',
    'AUDIT_CHAIN_BROKEN',
    'AUDIT_SEQ_GAP',
    'AUDIT_TRUNCATED',
    'AUDIT_UNUSABLE',
  ];
  for (const code of permanent) t.same(retryOf(new AuditError(code, 'x')), NEVER, `${code} is never retried`);
});

t.test('permanent failures of the protocol, the SOPS reader and the keys are never retried', async (t) => {
  const sealed = await sealForAgent(await identityToRecipient(await generateX25519Identity()), { a: 1 });
  const wrongKey = await openSealed(await generateX25519Identity(), sealed).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.match(wrongKey, { name: 'SealError', code: 'SEAL_WRONG_KEY' });
  t.same(retryOf(wrongKey), NEVER);
  const notSops = await openSops('a: 1\n', await generateX25519Identity()).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.match(notSops, { name: 'SopsError', code: 'SOPS_NOT_SOPS' });
  t.same(retryOf(notSops), NEVER);
  const missing = await loadKeys(tempDir(t)).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.match(missing, { name: 'KeyError', code: 'KEYS_MISSING' });
  t.same(retryOf(missing), NEVER);
  t.same(retryOf(new ProtocolError('PROTOCOL_INVALID', 'x')), NEVER);
});

t.test('git: a remote that cannot be reached is retried with backoff; the repository content is not', async (t) => {
  const backoff: GitRepoErrorCode[] = ['GIT_CLONE_FAILED', 'GIT_FETCH_FAILED', 'GIT_PUSH_GAVE_UP'];
  const never: GitRepoErrorCode[] = [
    'GIT_BAD_ARGUMENT',
    'GIT_NOT_A_CLONE',
    'GIT_ORIGIN_MISMATCH',
    'GIT_BRANCH_MISSING',
    'GIT_WORKTREE_DIRTY',
    'GIT_AUDIT_CONFLICT',
    'GIT_AUDIT_PATH_UNSAFE',
    'GIT_LOCAL_DIVERGED',
    'GIT_PATH_OUTSIDE_AUDIT',
    'GIT_COMMIT_FAILED',
    'GIT_PUSH_REFUSED',
    'GIT_FAILED',
  ];
  for (const code of backoff) t.same(retryOf(new GitRepoError(code, 'x')), BACKOFF, `${code}: backoff`);
  for (const code of never) t.same(retryOf(new GitRepoError(code, 'x')), NEVER, `${code}: never`);
  t.same(retryOf(new GitError(['fetch', 'origin'], 128, 'fatal: unable to access')), BACKOFF, 'a fetch that failed');
  t.same(retryOf(new GitError(['-C', '/x', 'push', 'origin'], 1, '')), BACKOFF, 'a push that failed');
  t.same(retryOf(new GitError(['status'], -1, '', 'timeout')), BACKOFF, 'a local call that timed out');
  t.same(retryOf(new GitError(['rev-parse', 'HEAD'], 128, 'fatal: not a git repository')), NEVER, 'a local refusal');
});

t.test("a DbError's retry is what its code meant: only an unreachable database is retried", async (t) => {
  const codes: DbErrorCode[] = [
    'DB_UNREACHABLE',
    'DB_ADMIN_AUTH',
    'DB_PERMISSION',
    'DB_USER_MISSING',
    'DB_VALUE_REJECTED',
    'DB_UNSUPPORTED',
    'DB_ERROR',
  ];
  for (const code of codes) {
    t.same(retryOf(new DbError(code, 'x')), code === 'DB_UNREACHABLE' ? BACKOFF : NEVER, code);
  }
});

t.test('the agent drops results only when the daemon refused them for good', async (t) => {
  for (const status of [400, 413, 422]) {
    t.same(retryOf(new AgentError('AGENT_DAEMON_REFUSED', 'x', status)), NEVER, `refused with ${status}`);
    t.same(retryOf(new AgentError('AGENT_DAEMON_UNVERIFIED', 'x', status)), BACKOFF, `unverified with ${status}`);
  }
  for (const status of [undefined, 401, 403, 409, 429, 500, 503]) {
    t.same(retryOf(new AgentError('AGENT_DAEMON_REFUSED', 'x', status)), BACKOFF, `refused with ${status}`);
  }
  const others = [
    'AGENT_DAEMON_UNREACHABLE',
    'AGENT_DAEMON_CERT',
    'AGENT_ANSWER_INVALID',
    'AGENT_ANSWER_TOO_LARGE',
    'AGENT_STOPPED',
  ] as const;
  for (const code of others) {
    t.same(retryOf(new AgentError(code, 'x')), BACKOFF, code);
  }
  t.same(retryOf(new AgentConfigError('agent.yaml', [])), NEVER, 'an invalid configuration');
});

t.test('the client gives up on what trying again cannot fix, and retries the rest', async (t) => {
  for (const code of ['ACCESS_DENIED', 'SECRET_UNKNOWN', 'NO_SOCKET', 'SOCKET_DENIED', 'BAD_REQUEST', 'ABORTED']) {
    t.same(retryOf(new RotorClientError(code, 'x')), NEVER, code);
  }
  for (const code of ['DAEMON_NOT_RUNNING', 'TIMEOUT', 'IO', 'BAD_RESPONSE', 'HTTP_503', 'UNAVAILABLE']) {
    t.same(retryOf(new RotorClientError(code, 'x')), BACKOFF, code);
  }
});

t.test('the daemon: a data directory it refuses, or another daemon holding it, needs a person', async (t) => {
  t.match(new LockError('x'), { code: 'DATA_DIR_LOCKED', message: 'x' });
  t.same(retryOf(new LockError('x')), NEVER);
  const dir = tempDir(t);
  const file = path.join(dir, 'file');
  await writeFile(file, '');
  const e = await checkDataDir(file).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(e instanceof DataDirError, 'a data directory that is a file');
  t.match(e, { name: 'DataDirError', code: 'DATA_DIR_UNSAFE' });
  t.same(retryOf(e), NEVER);
});

t.test("an agent's step: retried, unless no agent is declared; a stop is not a failure", async (t) => {
  t.same(retryOf(new StepError('DB_UNREACHABLE', 'x')), BACKOFF, 'what the agent reported: the engine runs it again');
  t.same(retryOf(new StepError('AGENT_UNKNOWN', 'x', { retry: NEVER })), NEVER);
  const stop = daemonStopping();
  t.match(stop, { name: 'StepError', code: 'DAEMON_STOPPING', message: 'the daemon is stopping', stopping: true });
  t.ok(stop instanceof StepError);
  t.ok(stopped(stop), 'the engine recognises the stop');
  t.notOk(stopped(new StepError('AGENT_TIMEOUT', 'x')), 'a timeout is a failure');
  t.notOk(stopped(Object.assign(new Error('x'), { code: 'DAEMON_STOPPING' })), 'by its flag, not by the code string');
  t.notOk(stopped(undefined));
});

t.test('listeners: a bad flag value, and an address that cannot be bound, are never retried', async (t) => {
  const failure = (p: Promise<unknown>) =>
    p.then(
      () => undefined,
      (e: unknown) => e,
    );
  const bad = await failure(listenTcp(createServer(), 'nonsense', '--agent-listen', 'AGENT_LISTEN'));
  t.ok(bad instanceof RotorError);
  t.match(bad, { code: 'AGENT_LISTEN_INVALID', message: '--agent-listen nonsense is not HOST:PORT' });
  t.same(retryOf(bad), NEVER);
  const first = createServer();
  const { address, close } = await listenTcp(first, '127.0.0.1:0', '--metrics-listen', 'METRICS_LISTEN');
  t.teardown(close);
  const taken = await failure(listenTcp(createServer(), address, '--metrics-listen', 'METRICS_LISTEN'));
  t.ok(taken instanceof RotorError);
  t.match(taken, { code: 'METRICS_LISTEN_FAILED', message: /EADDRINUSE/, cause: { code: 'EADDRINUSE' } });
  t.same(retryOf(taken), NEVER);
  const host = (() => {
    try {
      parseMetricsHosts(['not a host']);
    } catch (e) {
      return e;
    }
  })();
  t.ok(host instanceof RotorError);
  t.match(host, { code: 'METRICS_HOST_INVALID' });
  t.same(retryOf(host), NEVER);
  t.match(new HttpError(413, 'BODY_TOO_LARGE', 'x'), { status: 413, code: 'BODY_TOO_LARGE' });
  for (const code of ['AGENT_TLS_UNREADABLE', 'AGENT_TLS_INVALID'] as const)
    t.same(retryOf(new AgentTlsError(code, 'x')), NEVER, `${code}: a TLS file needs a person`);
  t.match(new SocketError('SOCKET_CHOWN_DENIED', 'x'), { code: 'SOCKET_CHOWN_DENIED' });
  t.same(retryOf(new SocketError('SOCKET_CHOWN_DENIED', 'x')), NEVER);
});

t.test('the command line: only a daemon that does not answer may pass', async (t) => {
  t.match(new UsageError('x'), { code: 'USAGE' });
  t.same(retryOf(new UsageError('x')), NEVER);
  t.match(new FieldError('x'), { code: 'FIELD_UNKNOWN' });
  t.same(retryOf(new FieldError('x')), NEVER);
  for (const code of ['DAEMON_NOT_RUNNING', 'TIMEOUT', 'ADMIN_IO']) {
    t.same(retryOf(new AdminError(code, 'x')), BACKOFF, code);
  }
  for (const code of ['ADMIN_DENIED', 'BAD_RESPONSE', 'SECRET_UNKNOWN', 'ACCESS_DENIED']) {
    t.same(retryOf(new AdminError(code, 'x')), NEVER, code);
  }
  t.match(new ExportError('EXPORT_IDENTITY', 'x'), { code: 'EXPORT_IDENTITY' });
  t.same(retryOf(new ExportError('EXPORT_NOT_DATA_DIR', 'x')), NEVER, 'an export refused needs a person');
  const repo = tempDir(t);
  await writeFile(path.join(repo, 'rotor.yaml'), 'kind: Config\naudit:\n  dir: ../outside\n');
  const e = await auditDirOf(repo).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(e instanceof RotorError, 'an audit.dir outside the repository');
  t.match(e, { name: 'ReadError', code: 'AUDIT_DIR_INVALID' });
  t.same(retryOf(e), NEVER);
});

t.test('the repository reader: a file over its limit is never retried', async (t) => {
  const e = tooLarge('rotor.yaml', 10, 4);
  t.ok(e instanceof RotorError);
  t.match(e, { code: 'FILE_TOO_LARGE', message: 'rotor.yaml is 10 bytes, over the limit of 4 bytes' });
  t.same(retryOf(e), NEVER);
});

t.test('the rotation engine: a request for a secret it does not rotate is never retried', async (t) => {
  const engine = new Engine({} as EngineOptions); // nothing applied: rotateNow looks no further
  const e = await engine.rotateNow('app/key', 'x').then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(e instanceof RotorError);
  t.match(e, { code: 'SECRET_UNKNOWN', message: 'secret "app/key" is not declared' });
  t.same(retryOf(e), NEVER);
});

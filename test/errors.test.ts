import t from 'tap';
import { BACKOFF, codeOf, errnoOf, NEVER, RotorError, retryAfter, retryOf, storageOf } from '../src/errors.js';

t.test('a RotorError carries its code, cause, retry and storage', async (t) => {
  const cause = Object.assign(new Error('read-only file system'), { code: 'EROFS' });
  class AuditWriteError extends RotorError {}
  const e = new AuditWriteError('AUDIT_WRITE_FAILED', 'the audit log cannot be written', {
    cause,
    retry: BACKOFF,
    storage: 'audit log',
  });
  t.ok(e instanceof Error);
  t.equal(e.name, 'AuditWriteError', 'the name is the derived class');
  t.equal(e.code, 'AUDIT_WRITE_FAILED');
  t.equal(e.cause, cause);
  t.same(retryOf(e), { kind: 'backoff' });
  t.equal(storageOf(e), 'audit log');
  t.equal(errnoOf(e), 'EROFS');
});

t.test('an error is permanent unless its maker says otherwise', async (t) => {
  const e = new RotorError('STATE_CORRUPT', 'the state store fails to decrypt');
  t.same(e.retry, NEVER);
  t.equal(storageOf(e), undefined);
  t.equal(e.cause, undefined);
  t.same(retryOf(new RotorError('X', 'x', { retry: retryAfter(1500) })), { kind: 'after', ms: 1500 });
});

t.test('errors that are not RotorErrors: backoff, their code or ERROR', async (t) => {
  t.same(retryOf(new Error('a bug')), { kind: 'backoff' });
  t.same(retryOf(undefined), { kind: 'backoff' });
  t.equal(codeOf(Object.assign(new Error('x'), { code: 'ENOENT' })), 'ENOENT');
  t.equal(codeOf(new Error('x')), 'ERROR');
  t.equal(codeOf(null), 'ERROR');
  t.equal(codeOf({ code: 42 }), 'ERROR');
});

t.test('errnoOf looks through causes, not at the error itself, and stops', async (t) => {
  const deep = new Error('a', { cause: new Error('b', { cause: Object.assign(new Error('c'), { code: 'ENOSPC' }) }) });
  t.equal(errnoOf(deep), 'ENOSPC');
  t.equal(errnoOf(Object.assign(new Error('x'), { code: 'EIO' })), undefined, 'the error itself is not its cause');
  t.equal(errnoOf(new Error('x', { cause: { code: 'STATE_IO' } })), undefined, 'not a system code');
  const loop: { cause?: unknown } = {};
  loop.cause = loop;
  t.equal(errnoOf(loop), undefined, 'a cycle ends');
});

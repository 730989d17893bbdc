/**
 * `rotor state export`: the state store's current values as JSON, read (never opened for writing) with
 * the daemon's or a break-glass age identity, from a data directory or a PostgreSQL store. The document
 * and its checks are in state-export.ts; reading is src/state/read-only.ts and pg-read-only.ts.
 */
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { identityToRecipient } from 'age-encryption';
import { RotorError } from '../errors.js';
import type { StoreReading } from '../state/index.js';
import { identitiesDecrypter, readFileStore, readPostgresStore, StateError } from '../state/index.js';
import type { Flags } from '../util/args.js';
import { HELP_FLAG, optionsHelp, parse, UsageError } from '../util/args.js';
import { auditLogOf } from './audit.js';
import type { Io } from './io.js';
import { EXIT } from './io.js';
import type { AuditFacts } from './state-export.js';
import { checkAgainstAudit, ExportError, exportDocument, readAuditFacts } from './state-export.js';
import { postgresConfigOf, STORE_FLAGS } from './state-flags.js';

export const STATE_FLAGS = {
  'data-dir': {
    type: 'string',
    arg: 'DIR',
    description:
      "the daemon's data directory, whose state/ holds the file store (snapshot.age and log.bin); or a directory holding copies of those two files",
  },
  state: {
    type: 'string',
    arg: 'URL',
    description:
      'read the store from PostgreSQL instead: postgres://USER@HOST:PORT/DATABASE, as given to the daemon (parameters sslmode, host, schema). A password in the URL is refused: give it with --state-password-file, PGPASSWORD, or PGPASSFILE (or ~/.pgpass)',
  },
  'state-password-file': STORE_FLAGS['state-password-file'],
  identity: {
    type: 'string',
    arg: 'FILE',
    description:
      "an age identity file (AGE-SECRET-KEY-1..., as age-keygen writes it): the identity of a --break-glass recipient the daemon ran with, or the daemon's own DATA_DIR/identity.age (required)",
  },
  secret: {
    type: 'string',
    arg: 'NAME',
    multiple: true,
    description: 'only this secret (repeatable); one the store does not hold is EXPORT_SECRET_UNKNOWN',
  },
  audit: {
    type: 'string',
    arg: 'REPO',
    description:
      'a checkout of the GitOps repository: check the store against its audit log (not older, the same store, each value the audited one)',
  },
  'no-values': {
    type: 'boolean',
    description: 'leave the values out: names, versions, usernames and times only',
  },
  help: HELP_FLAG,
} as const satisfies Flags;

export const STATE_HELP = `rotor state: read the state store without the daemon (break-glass export)

Usage: rotor state export --data-dir DIR --identity FILE [--secret NAME]... [--audit REPO] [--no-values]
       rotor state export --state postgres://USER@HOST:PORT/DATABASE [--state-password-file FILE]
                          --identity FILE [--secret NAME]... [--audit REPO] [--no-values]

Subcommands:
  export    print the store's secrets as JSON: for each, its current and previous value and version

export opens the state store with an age identity: the one of a recipient the daemon was started
with (--break-glass age1...; the file age-keygen wrote) or the daemon's own DATA_DIR/identity.age.
It reads snapshot.age and then every record of log.bin after it (on PostgreSQL: the segment and its
records), so it shows the versions made since the last compaction too, which snapshot.age alone
lacks. It only reads: no lock, no write, no compaction, no migration. It runs beside a running
daemon, and on the files of a daemon that was killed: a last record cut short by the crash was never
acknowledged, and is ignored and left in the file. On PostgreSQL it reads in one read-only
transaction (SELECT on the store's four tables is all it needs).

Output, on stdout, one JSON document:
  {"format": "rotor-state-export/1", "exportedAt", "store": {"place", "storeId", "generation", ...},
   "secrets": {"NAME": {"current":  {"version", "value", "username" (database secrets), "rotatedAt"},
                        "previous": {..., "validUntil"},      (until it is retired)
                        "pending":  {..., "trigger"}}}}       (a rotation under way: a database may
                                                               have this value already)
Nothing else goes to stdout; stderr gets one line of counts (never a name or a value). It writes no
file: redirect stdout to one only you can read, in memory (umask 077; /dev/shm), and remove it after.

What it checks. The identity must open the store (STATE_KEY otherwise), and the snapshot and every
record must decrypt and chain (STATE_CORRUPT, STATE_CHAIN_BROKEN): damage and records missing or
reordered are caught. What a key cannot tell is whether this copy is the newest: the daemon checks
that against the audit log (the store's generation and id recorded in it). Give --audit REPO, a
checkout of the GitOps repository, and export does the same: a store older than the log is
STATE_ROLLBACK, another store STATE_FOREIGN, and each value whose version has an entry in the log
must match that entry's fingerprint ("audited": true; EXPORT_AUDIT_MISMATCH otherwise; false when
the log has no entry for it, as for entries the daemon had not pushed yet).

Options:
${optionsHelp(STATE_FLAGS)}
Errors, on stderr with a code: EXPORT_DIR_MISSING, EXPORT_NOT_DATA_DIR (no store in DIR),
EXPORT_NO_STORE (none in the PostgreSQL schema), EXPORT_IDENTITY (the file holds no usable identity),
STATE_KEY (the store is not encrypted to it), EXPORT_SECRET_UNKNOWN, STATE_SCHEMA (tables of a rotor
this one does not know), and the store's own (STATE_CORRUPT, STATE_AUTH, ...). None holds a value.
Exit status: 0 exported, 1 refused (any of those codes), 2 usage error, 3 unexpected failure.

Examples:
  (umask 077; rotor state export --data-dir /var/lib/rotor --identity bg.key > /dev/shm/rotor.json)
  rotor state export --state postgres://rotor@db.internal:5432/rotor --identity bg.key --secret app/db
  rotor state export --data-dir /mnt/backup/rotor --identity bg.key --audit secrets-repo --no-values
`;

/** The largest identity file read (age-keygen writes about 200 bytes). */
const MAX_IDENTITY_FILE = 64 * 1024;

export async function stateCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parse(argv, STATE_FLAGS, io.env, 1);
  if (flags.help) {
    io.stdout(STATE_HELP);
    return EXIT.ok;
  }
  const sub = positionals[0];
  if (sub === undefined) throw new UsageError('missing subcommand: use "rotor state export"');
  if (sub !== 'export') throw new UsageError(`unknown subcommand "${sub}": use "rotor state export"`);
  if (flags['data-dir'] !== undefined && flags.state !== undefined)
    throw new UsageError(
      'give either --data-dir (the file store) or --state (PostgreSQL), not both (ROTOR_DATA_DIR and ROTOR_STATE count too)',
    );
  if (flags['data-dir'] === undefined && flags.state === undefined)
    throw new UsageError('give --data-dir DIR (the file store) or --state postgres://... (PostgreSQL)');
  if (flags['state-password-file'] !== undefined && flags.state === undefined)
    throw new UsageError('--state-password-file is the password of a --state postgres://... store');
  if (flags.identity === undefined)
    throw new UsageError(
      "--identity FILE is required: a break-glass identity (age-keygen's file) or the daemon's DATA_DIR/identity.age",
    );
  const pgConfig = flags.state !== undefined ? postgresConfigOf({ ...flags, state: flags.state }, io) : undefined;
  try {
    const identityFile = path.resolve(io.cwd, flags.identity);
    const identities = await readIdentities(identityFile, io);
    const dec = await identitiesDecrypter(identities);
    let reading: StoreReading;
    try {
      reading = pgConfig
        ? await readPg(pgConfig, dec)
        : await readDataDir(path.resolve(io.cwd, flags['data-dir']!), flags['data-dir']!, dec);
    } catch (e) {
      if (e instanceof StateError && e.code === 'STATE_KEY') throw await wrongIdentity(e, identityFile, identities);
      throw e;
    }
    let audit: AuditFacts | undefined;
    if (flags.audit !== undefined) {
      audit = await auditFactsOf(flags.audit, io);
      checkAgainstAudit(reading, audit);
    }
    const doc = exportDocument(reading, {
      ...(flags.secret.length > 0 ? { names: flags.secret } : {}),
      values: !flags['no-values'],
      now: io.now(),
      ...(audit ? { audit } : {}),
    });
    io.stdout(`${JSON.stringify(doc, null, 2)}\n`);
    const count = Object.keys(doc.secrets as object).length;
    io.stderr(
      `rotor state export: ${count} secret${count === 1 ? '' : 's'}${flags['no-values'] ? ' (no values)' : ''} from store ${reading.storeId} at generation ${reading.seq} (snapshot ${reading.snapshotSeq}, ${reading.seq - reading.snapshotSeq} records after it)${audit ? `, checked against ${audit.entries} audit entries` : ''}\n`,
    );
    if (reading.torn)
      io.stderr(
        `rotor state export: the last record of the log was cut short (${reading.torn.bytes} bytes: a write under way, or interrupted by a crash, never acknowledged): ignored, the file left as it is\n`,
      );
    return EXIT.ok;
  } catch (e) {
    if (e instanceof RotorError && !(e instanceof UsageError)) {
      io.stderr(`rotor state export: ${e.message} [${e.code}]\n`);
      return EXIT.invalid;
    }
    throw e;
  }
}

async function readPg(config: ReturnType<typeof postgresConfigOf>, dec: Parameters<typeof readPostgresStore>[1]) {
  const r = await readPostgresStore(config, dec);
  if (!r)
    throw new ExportError(
      'EXPORT_NO_STORE',
      `${config.url.replace(/\?.*$/, '')} holds no rotor state store in that schema: check the URL and its schema parameter (the daemon's --state)`,
    );
  return r;
}

/** The store of a data directory (DIR/state), or of a directory holding the store's files itself. */
async function readDataDir(dir: string, shown: string, dec: Parameters<typeof readFileStore>[1]) {
  const st = await stat(dir).catch(() => undefined);
  if (!st?.isDirectory())
    throw new ExportError(
      'EXPORT_DIR_MISSING',
      `${shown} ${st ? 'is not a directory' : 'does not exist'}: give the daemon's data directory (its --data-dir), or a directory holding copies of its state/snapshot.age and state/log.bin`,
    );
  const stateDir = path.join(dir, 'state');
  if ((await stat(stateDir).catch(() => undefined))?.isDirectory()) {
    const r = await readFileStore(stateDir, dec);
    if (r) return r;
  }
  const r = await readFileStore(dir, dec);
  if (r) return r;
  throw new ExportError(
    'EXPORT_NOT_DATA_DIR',
    `${shown} holds no rotor state store (neither state/snapshot.age and state/log.bin, nor snapshot.age and log.bin): give the daemon's data directory; a daemon started with --state postgres://... keeps its store in that database (export it with --state)`,
  );
}

/** The age identities in a file (AGE-SECRET-KEY-1... lines, as age-keygen writes them). Never shows one. */
async function readIdentities(file: string, io: Io): Promise<string[]> {
  let text: string;
  try {
    const st = await stat(file);
    if (!st.isFile()) throw new ExportError('EXPORT_IDENTITY', `${file} is not a file: give an age identity file`);
    if (st.size > MAX_IDENTITY_FILE)
      throw new ExportError(
        'EXPORT_IDENTITY',
        `${file} is ${st.size} bytes, more than an identity file (${MAX_IDENTITY_FILE} at most): is it the right file?`,
      );
    if ((st.mode & 0o077) !== 0)
      io.stderr(
        `rotor state export: warning: ${file} is readable by other users (mode ${(st.mode & 0o777).toString(8)}); keep an identity mode 0600 (chmod 600 ${file})\n`,
      );
    text = await readFile(file, 'utf8');
  } catch (e) {
    if (e instanceof ExportError) throw e;
    const errno = (e as NodeJS.ErrnoException).code;
    throw new ExportError(
      'EXPORT_IDENTITY',
      errno === 'ENOENT'
        ? `${file} does not exist: give the break-glass identity (the file age-keygen wrote) or the daemon's DATA_DIR/identity.age`
        : `${file} cannot be read (${errno ?? 'error'}): run as a user who may read it`,
      { cause: e },
    );
  }
  const identities = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.startsWith('AGE-SECRET-KEY-1'));
  if (identities.length > 0) return identities;
  const encrypted = text.startsWith('age-encryption.org/') || text.includes('-----BEGIN AGE ENCRYPTED FILE-----');
  throw new ExportError(
    'EXPORT_IDENTITY',
    encrypted
      ? `${file} is itself age-encrypted (an identity kept under a passphrase?): decrypt it first into memory, e.g. (umask 077; age -d -o /dev/shm/identity ${file}), and give that file`
      : `${file} holds no age identity (a line AGE-SECRET-KEY-1...): give the file age-keygen wrote, or the daemon's DATA_DIR/identity.age`,
  );
}

/** STATE_KEY, saying which public key was tried and what to give instead. */
async function wrongIdentity(e: StateError, file: string, identities: readonly string[]): Promise<StateError> {
  const publics = await Promise.all(identities.map((i) => identityToRecipient(i)));
  return new StateError(
    'STATE_KEY',
    `${e.message}: ${file} (public key ${publics.join(', ')}) does not open this store. Give the identity of a --break-glass recipient the daemon ran with, or its DATA_DIR/identity.age; a recipient added to the daemon later opens only what was written after that`,
    { cause: e },
  );
}

async function auditFactsOf(repoArg: string, io: Io): Promise<AuditFacts> {
  const found = await auditLogOf(repoArg, io);
  if ('missing' in found) throw new RotorError('AUDIT_BRANCH_MISSING', found.missing);
  const { logDir, shown, branch, cleanup } = found;
  try {
    return await readAuditFacts(logDir, shown, (name) =>
      branch !== undefined ? `${shown}/${name}` : path.join(shown, name),
    );
  } finally {
    await cleanup();
  }
}

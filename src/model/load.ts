/**
 * Loading a repository's declarations: list, read within limits, parse, validate against the schemas,
 * check the meaning (references, schedules, strategies, entropy...), and return an immutable model with
 * every problem found. Pure apart from reading through the RepoSource.
 */
import { bech32 } from '@scure/base';
import { checkCron, compileSchedule, intervalOf, isTimeZone } from '../schedule/schedule.js';
import { MAX_SOPS_FILE_BYTES, sopsCleartextMessage, sopsFormatOf, sopsOutline } from '../sops/index.js';
import { formatDuration, parseDuration } from '../util/duration.js';
import { auditDirNameProblem, auditDirShapeProblem, auditPathProblems } from './audit-path.js';
import { alphabetOf, DB_UNSAFE, DEFAULT_LENGTH, entropyBits } from './charsets.js';
import { defaultStrategy, ENGINES } from './engines.js';
import type { Glob } from './glob.js';
import { compileGlob, NameIndex } from './glob.js';
import type { Desired, LoadResult, Located } from './model.js';
import { DEFAULT_AUDIT_DIR } from './model.js';
import { checkNotify } from './notify-config.js';
import type { Code, Problem, Severity } from './problems.js';
import { compareProblems, hasErrors, suggest } from './problems.js';
import type { Agent, Config, Consumer, Generator, Policy, Secret, Target } from './schema-types.js';
import type { Kind } from './schemas.js';
import { KINDS, validateSchema } from './schemas.js';
import type { RepoSource, SourceFile } from './source.js';
import type { ParsedDoc, Path } from './yaml.js';
import { decodeUtf8, LIMITS, parseDocuments, positionOf } from './yaml.js';

export interface LoadOptions {
  /** The current time (ms since the epoch), for checks that look at upcoming cron times. */
  readonly now: number;
  /**
   * Also read the SOPS file of each `sops:` secret, without a key, and refuse a value stored in clear
   * (SOPS_VALUE_CLEARTEXT): rotor validate and rotor plan, in the pull request. The daemon leaves
   * this out: it refuses such a value per secret, with its key (src/daemon/sops-values.ts), and
   * applies the rest of the commit.
   */
  readonly sopsValues?: boolean;
}

interface Entry<T> {
  readonly decl: T;
  readonly pd: ParsedDoc;
}

type Decls = {
  Config: Entry<Config>[];
  Policy: Entry<Policy>[];
  Secret: Entry<Secret>[];
  Target: Entry<Target>[];
  Agent: Entry<Agent>[];
  Consumer: Entry<Consumer>[];
};

const CONFIG_FILE = 'rotor.yaml';
/** Config.ignore holds at most this many globs (the schema's maxItems); more are reported, not applied. */
const MAX_IGNORE = 100;
const MIN_ENTROPY_BITS = 128;

class Reporter {
  readonly problems: Problem[] = [];
  add(pd: ParsedDoc, path: Path, severity: Severity, code: Code, message: string, key = false): void {
    this.problems.push({ ...positionOf(pd, path, key), severity, code, message });
  }
  error(pd: ParsedDoc, path: Path, code: Code, message: string, key = false): void {
    this.add(pd, path, 'error', code, message, key);
  }
  warn(pd: ParsedDoc, path: Path, code: Code, message: string, key = false): void {
    this.add(pd, path, 'warning', code, message, key);
  }
}

function isYaml(p: string): boolean {
  return p.endsWith('.yaml') || p.endsWith('.yml');
}

/** A SOPS-encrypted document: its `sops` key holds SOPS metadata (a MAC, a version). */
function isSopsFile(data: Record<string, unknown>): boolean {
  const meta = data.sops;
  return isRecord(meta) && ('mac' in meta || 'version' in meta || 'lastmodified' in meta);
}

/** One line per problem: control characters in a message (from a user's value) are escaped. */
function oneLine(message: string): string {
  // eslint-disable-next-line no-control-regex
  return message.replace(/[\u0000-\u001f\u007f\u2028\u2029]/g, (c) => JSON.stringify(c).slice(1, -1));
}

function withoutTrailingSlashes(s: string): string {
  let end = s.length;
  while (end > 0 && s.charCodeAt(end - 1) === 0x2f) end--;
  return s.slice(0, end);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function deepFreeze<T>(v: T): T {
  if (typeof v === 'object' && v !== null && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const k of Object.keys(v)) deepFreeze((v as Record<string, unknown>)[k]);
  }
  return v;
}

/** Loads and checks every declaration of a repository. Never throws on bad input: it reports it. */
export async function loadModel(source: RepoSource, options: LoadOptions): Promise<LoadResult> {
  const r = new Reporter();
  const listing = await source.list();
  r.problems.push(...listing.problems);
  if (listing.truncated) {
    r.problems.push({
      file: '.',
      line: 1,
      col: 1,
      severity: 'error',
      code: 'REPO_TOO_LARGE',
      message: `the repository has more than ${100_000} files and directories (or a path longer than 8 KiB); rotor stopped listing there`,
    });
  }
  const budget = { docs: LIMITS.docsTotal };

  // rotor.yaml first: it says where the audit log is and what to ignore.
  const configDocs = listing.files.has(CONFIG_FILE)
    ? await readAndParse(source, [listing.files.get(CONFIG_FILE)!], r, budget)
    : [];
  const configData = configDocs.map((pd) => pd.data).find((d) => isRecord(d) && d.kind === 'Config') as
    | Record<string, unknown>
    | undefined;
  const auditDirRaw =
    isRecord(configData?.audit) && typeof configData.audit.dir === 'string' ? configData.audit.dir : DEFAULT_AUDIT_DIR;
  // Read before the schema checks rotor.yaml, so bounded here too: a regex such as /\/+$/ takes
  // quadratic time on a long run of "/", and every ignore glob is tried on every file.
  const auditDir = withoutTrailingSlashes(auditDirRaw);
  // The audit directory must be a plain directory all the way down (no link, file or submodule on it).
  if (auditDirShapeProblem(auditDir) === undefined) {
    const pathProblems = auditPathProblems(auditDir, await source.probe(auditDir));
    const reported = new Set(pathProblems.map((p) => p.file));
    // a link on the audit path is an error now: not also a warning that it is ignored
    const kept = r.problems.filter((p) => !(p.code === 'SYMLINK_OUTSIDE' && reported.has(p.file)));
    r.problems.splice(0, r.problems.length, ...kept, ...pathProblems);
  }
  const ignore: Glob[] = [];
  if (Array.isArray(configData?.ignore)) {
    for (const g of configData.ignore.slice(0, MAX_IGNORE))
      if (typeof g === 'string') {
        const c = compileGlob(g);
        if (typeof c !== 'string') ignore.push(c);
      }
  }

  const candidates: SourceFile[] = [];
  for (const f of listing.files.values()) {
    if (f.path === CONFIG_FILE || !isYaml(f.path)) continue;
    if (f.path === auditDir || f.path.startsWith(`${auditDir}/`)) continue;
    if (ignore.some((g) => g.test(f.path))) continue;
    candidates.push(f);
  }
  candidates.sort((a, b) => (a.path < b.path ? -1 : 1));
  const docs = [
    ...configDocs,
    ...(await readAndParse(source, candidates, r, budget, listing.files.get(CONFIG_FILE)?.size ?? 0)),
  ];

  // Kinds and schemas.
  const decls: Decls = { Config: [], Policy: [], Secret: [], Target: [], Agent: [], Consumer: [] };
  /** Names of every document of a kind, valid or not: references to a broken declaration are not reported twice. */
  const mentioned: Record<Kind, Set<string>> = {
    Config: new Set(),
    Policy: new Set(),
    Secret: new Set(),
    Target: new Set(),
    Agent: new Set(),
    Consumer: new Set(),
  };
  for (const pd of docs) {
    if (!isRecord(pd.data)) {
      r.error(
        pd,
        [],
        'DOC_NOT_MAPPING',
        `each YAML document must be a mapping with a kind, not ${Array.isArray(pd.data) ? 'a list' : typeof pd.data}`,
      );
      continue;
    }
    const kind = pd.data.kind;
    if (kind === undefined || kind === null) {
      if (isSopsFile(pd.data)) continue; // a SOPS-encrypted file: data, not a declaration
      r.error(pd, [], 'KIND_MISSING', `this document has no kind; add "kind:" with one of ${KINDS.join(', ')}`);
      continue;
    }
    if (typeof kind !== 'string' || !(KINDS as readonly string[]).includes(kind)) {
      const hint = typeof kind === 'string' ? suggest(kind, KINDS) : undefined;
      r.error(
        pd,
        ['kind'],
        'KIND_UNKNOWN',
        `unknown kind ${JSON.stringify(kind)}${hint ? `; did you mean "${hint}"?` : `; use one of ${KINDS.join(', ')}`}`,
      );
      continue;
    }
    const k = kind as Kind;
    if (typeof pd.data.name === 'string') mentioned[k].add(pd.data.name);
    const schemaProblems = validateSchema(k, pd);
    if (schemaProblems.length > 0) {
      r.problems.push(...schemaProblems);
      continue;
    }
    (decls[k] as Entry<unknown>[]).push({ decl: pd.data, pd });
  }

  const config = checkConfig(
    decls.Config,
    r,
    listing.files.has(CONFIG_FILE),
    mentioned.Config.size > 0 || docs.some((d) => isRecord(d.data) && d.data.kind === 'Config'),
  );
  const policies = unique('Policy', decls.Policy, r);
  const targets = unique('Target', decls.Target, r);
  const agents = unique('Agent', decls.Agent, r);
  const consumers = unique('Consumer', decls.Consumer, r);
  const secrets = unique('Secret', decls.Secret, r);

  for (const e of policies.values()) checkPolicy(e, r, options.now);
  for (const e of agents.values()) checkAgent(e, agents, r);
  for (const e of targets.values())
    checkRef(e.pd, ['agent'], 'Agent', e.decl.agent, agents, mentioned.Agent, 'AGENT_UNKNOWN', r);
  const dbUsers = new Map<string, string>();
  for (const e of secrets.values())
    checkSecret(e, { policies, targets, mentioned, files: listing.files, auditDir, dbUsers }, r);
  if (options.sopsValues) await checkSopsValues(source, listing.files, secrets, r);
  const index = new NameIndex(secrets.keys());
  for (const e of consumers.values()) {
    checkConsumer(e, index, r);
    if (e.decl.agent !== undefined)
      checkRef(e.pd, ['agent'], 'Agent', e.decl.agent, agents, mentioned.Agent, 'AGENT_UNKNOWN', r);
  }
  checkUnused(policies, targets, agents, secrets, consumers, r);
  if (config)
    for (const p of checkNotify(config.decl, secrets, mentioned.Secret)) r.error(config.pd, p.path, p.code, p.message);

  const locate = <T>(m: Map<string, Entry<T>>) => new Map([...m].map(([k, e]) => [k, locatedOf(e)]));
  const desired: Desired = Object.freeze({
    config: config ? locatedOf(config) : undefined,
    policies: locate(policies),
    secrets: locate(secrets),
    targets: locate(targets),
    agents: locate(agents),
    consumers: locate(consumers),
  });
  const problems = r.problems.map((p) => ({ ...p, message: oneLine(p.message) })).sort(compareProblems);
  return { desired, problems, valid: !hasErrors(problems), auditDir };
}

const NAME_LINE = /^name:[ \t]*/m;

/** Where a declaration is: the line of its top-level `name:` (found without building a YAML tree). */
function locatedOf<T>(e: Entry<T>): Located<T> {
  const m = NAME_LINE.exec(e.pd.text);
  if (!m) return deepFreeze({ decl: e.decl, source: positionOf(e.pd, ['name']) });
  let line = e.pd.firstLine + 1;
  for (let i = 0; i < m.index; i++) if (e.pd.text.charCodeAt(i) === 10) line++;
  return deepFreeze({ decl: e.decl, source: { file: e.pd.file, line, col: m[0].length + 1 } });
}

async function readAndParse(
  source: RepoSource,
  files: readonly SourceFile[],
  r: Reporter,
  budget: { docs: number },
  usedBytes = 0,
): Promise<ParsedDoc[]> {
  const toRead: string[] = [];
  let total = usedBytes;
  let count = 0;
  for (const f of files) {
    if (f.size > LIMITS.fileBytes) {
      r.problems.push({
        file: f.path,
        line: 1,
        col: 1,
        severity: 'error',
        code: 'FILE_TOO_LARGE',
        message: `the file is ${formatBytes(f.size)}, over the limit of ${formatBytes(LIMITS.fileBytes)}; split it into several files`,
      });
      continue;
    }
    total += f.size;
    if (total > LIMITS.totalBytes || ++count > LIMITS.files) {
      r.problems.push({
        file: f.path,
        line: 1,
        col: 1,
        severity: 'error',
        code: 'REPO_TOO_LARGE',
        message: `rotor reads at most ${LIMITS.files} declaration files and ${formatBytes(LIMITS.totalBytes)} in all; it stopped before this file. Move unrelated YAML under Config.ignore`,
      });
      break;
    }
    toRead.push(f.path);
  }
  const contents = await source.readMany(toRead, { maxBytes: LIMITS.fileBytes });
  const out: ParsedDoc[] = [];
  for (const p of toRead) {
    const buf = contents.get(p);
    if (!(buf instanceof Buffer)) {
      r.problems.push({
        file: p,
        line: 1,
        col: 1,
        severity: 'error',
        code: 'FILE_UNREADABLE',
        message: `cannot read the file (${(buf as Error | undefined)?.message ?? 'unknown error'})`,
      });
      continue;
    }
    if (buf.length > LIMITS.fileBytes) {
      r.problems.push({
        file: p,
        line: 1,
        col: 1,
        severity: 'error',
        code: 'FILE_TOO_LARGE',
        message: `the file is over the limit of ${formatBytes(LIMITS.fileBytes)}; split it into several files`,
      });
      continue;
    }
    const text = decodeUtf8(p, buf, r.problems);
    if (text === undefined) continue;
    out.push(...parseDocuments(p, text, r.problems, budget));
  }
  return out;
}

function formatBytes(n: number): string {
  return n >= 1024 * 1024
    ? `${(n / 1024 / 1024).toFixed(n % (1024 * 1024) ? 1 : 0)} MiB`
    : `${Math.ceil(n / 1024)} KiB`;
}

function checkConfig(
  configs: Entry<Config>[],
  r: Reporter,
  hasFile: boolean,
  declared: boolean,
): Entry<Config> | undefined {
  let chosen: Entry<Config> | undefined;
  for (const e of configs) {
    if (e.pd.file !== CONFIG_FILE) {
      r.error(
        e.pd,
        ['kind'],
        'CONFIG_LOCATION',
        `kind: Config must be in ${CONFIG_FILE} at the repository root, not in ${e.pd.file}; move it there`,
      );
    } else if (chosen) {
      r.error(
        e.pd,
        ['kind'],
        'CONFIG_DUPLICATE',
        `a second kind: Config (the first is at ${chosen.pd.file}:${positionOf(chosen.pd, []).line}); keep exactly one`,
      );
    } else {
      chosen = e;
    }
  }
  if (chosen) {
    const interval = chosen.decl.sync?.interval;
    if (interval !== undefined) {
      const ms = parseDuration(interval);
      if (ms === undefined || ms < 1000 || ms > 86_400_000)
        r.error(
          chosen.pd,
          ['sync', 'interval'],
          'DURATION_INVALID',
          `sync.interval ${interval} must be between 1s and 1d`,
        );
    }
    const dir = chosen.decl.audit?.dir;
    const bad = dir === undefined ? undefined : auditDirNameProblem(withoutTrailingSlashes(dir));
    if (bad) r.error(chosen.pd, ['audit', 'dir'], 'AUDIT_DIR_INVALID', bad);
    chosen.decl.ignore?.forEach((g, i) => {
      const glob = compileGlob(g);
      if (typeof glob === 'string')
        r.error(chosen!.pd, ['ignore', i], 'GLOB_INVALID', `ignore[${i}] ${JSON.stringify(g)}: ${glob}`);
    });
  }
  if (!chosen && configs.length === 0 && !declared) {
    r.problems.push({
      file: CONFIG_FILE,
      line: 1,
      col: 1,
      severity: 'error',
      code: 'CONFIG_MISSING',
      message: hasFile
        ? `${CONFIG_FILE} has no document with kind: Config; add one (see schemas/config.schema.json)`
        : `there is no ${CONFIG_FILE} at the repository root; create it with "kind: Config" (rotor init makes one)`,
    });
  }
  return chosen;
}

function unique<T extends { name: string }>(kind: Kind, entries: Entry<T>[], r: Reporter): Map<string, Entry<T>> {
  const out = new Map<string, Entry<T>>();
  for (const e of entries) {
    const first = out.get(e.decl.name);
    if (first) {
      const at = positionOf(first.pd, ['name']);
      r.error(
        e.pd,
        ['name'],
        'NAME_DUPLICATE',
        `${kind} "${e.decl.name}" is already declared at ${at.file}:${at.line}; rename or remove one`,
      );
    } else {
      out.set(e.decl.name, e);
    }
  }
  return out;
}

function checkRef<T>(
  pd: ParsedDoc,
  path: Path,
  kind: Kind,
  name: string,
  known: Map<string, T>,
  mentioned: Set<string>,
  code: Code,
  r: Reporter,
): boolean {
  if (known.has(name)) return true;
  if (mentioned.has(name)) return false; // declared, but broken: its own problem says why
  const hint = suggest(name, known.keys());
  r.error(
    pd,
    path,
    code,
    `${kind} "${name}" is not declared${hint ? `; did you mean "${hint}"?` : `; declare it with kind: ${kind}`}`,
  );
  return false;
}

/** Checks a policy; returns false when its schedule is unusable. */
function checkPolicy(e: Entry<Policy>, r: Reporter, now: number): boolean {
  const p = e.decl;
  const pd = e.pd;
  let ok = true;
  for (const key of ['every', 'jitter', 'overlap', 'maxAge', 'verify'] as const) {
    const text = p[key];
    if (text === undefined) continue;
    const ms = parseDuration(text);
    if (ms === undefined) {
      r.error(pd, [key], 'DURATION_INVALID', `${key} ${text} is longer than the limit of 36500d`);
      ok = false;
    }
  }
  if (p.every !== undefined && p.cron !== undefined) {
    r.error(pd, ['cron'], 'POLICY_SCHEDULE_CONFLICT', 'a policy has either every or cron, not both; remove one', true);
    return false;
  }
  if (p.every === undefined && p.cron === undefined) {
    r.error(
      pd,
      ['name'],
      'POLICY_SCHEDULE_MISSING',
      'the policy says neither when to rotate; add "every: 30d" or "cron: 0 3 * * 0"',
    );
    return false;
  }
  for (const key of ['every', 'verify'] as const)
    if (p[key] !== undefined && parseDuration(p[key]) === 0) {
      r.error(pd, [key], 'DURATION_INVALID', `${key} must be at least 1s`);
      ok = false;
    }
  if (p.onDrift !== undefined && p.verify === undefined)
    r.warn(pd, ['onDrift'], 'DRIFT_WITHOUT_VERIFY', 'onDrift does nothing without verify (how often to check)', true);
  const tz = p.timezone ?? 'UTC';
  if (!isTimeZone(tz)) {
    const hint = suggest(tz, Intl.supportedValuesOf('timeZone'));
    r.error(
      pd,
      ['timezone'],
      'TIMEZONE_INVALID',
      `unknown time zone "${tz}"${hint ? `; did you mean "${hint}"?` : '; use an IANA name such as UTC or Europe/Berlin'}`,
    );
    return false;
  }
  if (p.cron !== undefined) {
    const why = checkCron(p.cron, tz);
    if (why) {
      r.error(pd, ['cron'], 'CRON_INVALID', `cron "${p.cron}" does not parse: ${why}`);
      return false;
    }
  }
  if (p.window && p.window.start === p.window.end) {
    r.error(
      pd,
      ['window'],
      'WINDOW_EMPTY',
      `the window starts and ends at ${p.window.start}; give it a length (for a whole day, remove the window)`,
    );
    ok = false;
  }
  if (!ok) return false;

  const interval = intervalOf(compileSchedule(p), now);
  const scheduleWord =
    p.every !== undefined ? `every ${p.every}` : `the shortest gap of cron "${p.cron}" (${formatDuration(interval)})`;
  const overlap = parseDuration(p.overlap)!;
  if (overlap >= interval) {
    r.error(
      pd,
      ['overlap'],
      'OVERLAP_TOO_LONG',
      `overlap ${p.overlap} must be shorter than the rotation interval, ${scheduleWord}; shorten the overlap or rotate less often`,
    );
    ok = false;
  }
  if (p.jitter !== undefined) {
    const jitter = parseDuration(p.jitter)!;
    if (jitter >= interval) {
      r.error(
        pd,
        ['jitter'],
        'JITTER_TOO_LONG',
        `jitter ${p.jitter} must be shorter than the rotation interval, ${scheduleWord}`,
      );
      ok = false;
    }
    if (p.window) {
      const [sh, sm] = p.window.start.split(':').map(Number);
      const [eh, em] = p.window.end.split(':').map(Number);
      const length = ((eh! * 60 + em! - (sh! * 60 + sm!) + 1440) % 1440) * 60_000;
      if (jitter > length)
        r.warn(
          pd,
          ['jitter'],
          'JITTER_EXCEEDS_WINDOW',
          `jitter ${p.jitter} is longer than the window ${p.window.start}-${p.window.end}: rotations may start after it closes`,
        );
    }
  }
  if (p.maxAge !== undefined && parseDuration(p.maxAge)! < interval) {
    r.warn(
      pd,
      ['maxAge'],
      'MAXAGE_TOO_SHORT',
      `maxAge ${p.maxAge} is shorter than the rotation interval, ${scheduleWord}: the secret will show as overdue before each rotation`,
    );
  }
  return ok;
}

function checkAgent(e: Entry<Agent>, agents: Map<string, Entry<Agent>>, r: Reporter): void {
  try {
    const { prefix, words } = bech32.decode(e.decl.recipient as `${string}1${string}`, 90);
    if (prefix !== 'age' || bech32.fromWords(words).length !== 32) throw new Error('not an age X25519 recipient');
  } catch {
    r.error(
      e.pd,
      ['recipient'],
      'AGENT_RECIPIENT_INVALID',
      'recipient is not a valid age recipient (its checksum does not match); copy it again from the output of rotor keygen',
    );
  }
  for (const other of agents.values()) {
    if (other === e) break;
    if (
      Buffer.from(other.decl.signingKey.slice(8), 'base64').equals(Buffer.from(e.decl.signingKey.slice(8), 'base64'))
    ) {
      r.error(
        e.pd,
        ['signingKey'],
        'AGENT_KEY_REUSED',
        `agent "${e.decl.name}" has the same signing key as agent "${other.decl.name}"; run rotor keygen on each agent's host`,
      );
      break;
    }
  }
}

interface SecretContext {
  policies: Map<string, Entry<Policy>>;
  targets: Map<string, Entry<Target>>;
  mentioned: Record<Kind, Set<string>>;
  files: ReadonlyMap<string, SourceFile>;
  auditDir: string;
  /** target + user -> secret, to catch two secrets managing one user. */
  dbUsers: Map<string, string>;
}

function checkSecret(e: Entry<Secret>, ctx: SecretContext, r: Reporter): void {
  const s = e.decl;
  const pd = e.pd;
  const bad = s.name.split('/').find((seg) => seg === '.' || seg === '..');
  if (bad) r.error(pd, ['name'], 'NAME_INVALID', `secret names may not have a "${bad}" segment`);
  checkRef(pd, ['policy'], 'Policy', s.policy, ctx.policies, ctx.mentioned.Policy, 'POLICY_UNKNOWN', r);
  if (!s.database && ctx.policies.get(s.policy)?.decl.verify !== undefined) {
    const why = `policy "${s.policy}" has verify (drift detection), which checks database secrets only`;
    r.warn(pd, ['policy'], 'VERIFY_NOT_DATABASE', `${why}: this secret is not checked`);
  }

  const sources = (['generate', 'fields', 'sops'] as const).filter((k) => s[k] !== undefined);
  if (sources.length === 0) {
    r.error(
      pd,
      ['name'],
      'SECRET_SOURCE_MISSING',
      'the secret has no value source; add one of generate (a random value), fields (a structured value) or sops (a value kept by a person)',
    );
  } else if (sources.length > 1) {
    r.error(
      pd,
      [sources[1]!],
      'SECRET_SOURCE_MULTIPLE',
      `the secret has ${sources.join(' and ')}; keep exactly one value source`,
      true,
    );
  }
  if (s.generate) checkGenerator(pd, ['generate'], s.generate, s, r);
  if (s.fields) {
    for (const [field, def] of Object.entries(s.fields)) {
      const n = (def.generate !== undefined ? 1 : 0) + (def.value !== undefined ? 1 : 0);
      if (n !== 1) {
        r.error(
          pd,
          ['fields', field],
          'FIELD_SOURCE_INVALID',
          `field "${field}" needs exactly one of generate (a random value) or value (a static one)${n === 2 ? ', not both' : ''}`,
          true,
        );
      } else if (def.generate) {
        checkGenerator(pd, ['fields', field, 'generate'], def.generate, s, r);
      }
    }
  }
  if (s.sops) {
    const file = s.sops.file;
    const segs = file.split('/');
    if (
      file.startsWith('/') ||
      segs.includes('..') ||
      segs.includes('.') ||
      segs.includes('') ||
      file === ctx.auditDir ||
      file.startsWith(`${ctx.auditDir}/`)
    ) {
      r.error(
        pd,
        ['sops', 'file'],
        'SOPS_FILE_INVALID',
        `sops.file "${file}" must be a relative path inside the repository, without "." or ".." segments, outside the audit directory "${ctx.auditDir}"`,
      );
    } else if (!ctx.files.has(file)) {
      r.error(
        pd,
        ['sops', 'file'],
        'SOPS_FILE_MISSING',
        `sops.file "${file}" does not exist in the repository; add the encrypted file (sops --encrypt --age ...) or fix the path`,
      );
    }
  }
  if (s.database) checkDatabase(e, ctx, r);
}

/** Bytes of SOPS files rotor validate and plan read in all (each one at most MAX_SOPS_FILE_BYTES). */
export const SOPS_READ_BUDGET = 64 * 1024 * 1024;

/**
 * A `sops:` secret whose value is in clear in its file. Files are read one at a time, each at most
 * MAX_SOPS_FILE_BYTES and SOPS_READ_BUDGET in all (sizes from the listing, before reading); a file
 * beyond those, or that cannot be read or parsed, says nothing here: the daemon opens it with its
 * key and reports what is wrong (SOPS_UNSUPPORTED, SOPS_NOT_SOPS...).
 */
async function checkSopsValues(
  source: RepoSource,
  files: ReadonlyMap<string, SourceFile>,
  secrets: ReadonlyMap<string, Entry<Secret>>,
  r: Reporter,
): Promise<void> {
  const byFile = new Map<string, Entry<Secret>[]>();
  for (const e of secrets.values()) {
    const file = e.decl.sops?.file;
    if (file === undefined || !files.has(file)) continue;
    byFile.set(file, [...(byFile.get(file) ?? []), e]);
  }
  let budget = SOPS_READ_BUDGET;
  for (const file of [...byFile.keys()].sort()) {
    const size = files.get(file)!.size;
    if (size > MAX_SOPS_FILE_BYTES || size > budget) continue;
    budget -= size;
    const text = (await source.readMany([file], { maxBytes: MAX_SOPS_FILE_BYTES })).get(file);
    if (text === undefined || text instanceof Error) continue;
    let outline;
    try {
      outline = sopsOutline(text, { format: sopsFormatOf(file), name: file });
    } catch {
      continue;
    }
    for (const e of byFile.get(file)!) {
      const key = e.decl.sops!.key;
      if (outline.stateOf(key) === 'clear')
        r.error(e.pd, ['sops', 'key'], 'SOPS_VALUE_CLEARTEXT', sopsCleartextMessage(file, key));
    }
  }
}

function checkGenerator(pd: ParsedDoc, path: Path, gen: Generator, s: Secret, r: Reporter): void {
  const charset = gen.charset ?? 'alphanumeric';
  if (charset === 'custom') {
    if (gen.chars === undefined) {
      r.error(
        pd,
        [...path, 'charset'],
        'CHARSET_CHARS_MISSING',
        'charset custom needs chars, the characters to choose from (e.g. chars: "ABCDEFGHJKLMNPQRSTUVWXYZ23456789")',
      );
      return;
    }
    const chars = gen.chars;
    const invalid = [...chars].find((c) => c < '!' || c > '~');
    const dup = [...chars].find((c, i) => chars.indexOf(c) !== i);
    if (invalid !== undefined || dup !== undefined) {
      r.error(
        pd,
        [...path, 'chars'],
        'CHARSET_CHARS_INVALID',
        invalid !== undefined
          ? `chars may hold only printable ASCII characters without space; found ${JSON.stringify(invalid)}`
          : `chars lists ${JSON.stringify(dup)} twice, which would make it more likely; list each character once`,
      );
      return;
    }
  } else if (gen.chars !== undefined) {
    r.error(
      pd,
      [...path, 'chars'],
      'CHARSET_CHARS_UNUSED',
      `chars is only used with charset: custom (this generator uses ${charset}); remove chars or set charset: custom`,
      true,
    );
  }
  const bits = entropyBits(gen);
  if (bits < MIN_ENTROPY_BITS && s.allowWeak !== true) {
    const size = new Set(alphabetOf(gen)).size;
    const need = Math.ceil(MIN_ENTROPY_BITS / Math.log2(size));
    r.error(
      pd,
      [...path, gen.length !== undefined ? 'length' : 'charset'],
      'ENTROPY_TOO_LOW',
      `this generator gives ${Math.floor(bits)} bits of entropy (${gen.length ?? DEFAULT_LENGTH} characters from ${size}); 128 are needed: use length ${need} or more, or set allowWeak: true on the secret`,
    );
  }
}

function checkDatabase(e: Entry<Secret>, ctx: SecretContext, r: Reporter): void {
  const s = e.decl;
  const db = s.database!;
  const pd = e.pd;
  if (s.fields || s.sops) {
    r.error(
      pd,
      ['database'],
      'DB_SOURCE_INVALID',
      `a database secret's value is the user's password: use generate, not ${s.fields ? 'fields' : 'sops'}`,
      true,
    );
  }
  if (s.generate) {
    const alphabet = alphabetOf(s.generate);
    const unsafe = [...alphabet].find((c) => DB_UNSAFE.test(c));
    if (unsafe !== undefined) {
      r.error(
        pd,
        ['generate', 'charset'],
        'DB_CHARSET_UNSAFE',
        `database passwords must not contain quotes, backslashes or whitespace, and this charset has ${JSON.stringify(unsafe)}; use alphanumeric, hex or base64url`,
      );
    }
  }
  const target = ctx.targets.get(db.target);
  if (
    !checkRef(
      pd,
      ['database', 'target'],
      'Target',
      db.target,
      ctx.targets,
      ctx.mentioned.Target,
      'TARGET_UNKNOWN',
      r,
    ) ||
    !target
  )
    return;
  const engine = target.decl.engine;
  const traits = ENGINES[engine];
  const strategy = db.strategy ?? defaultStrategy(engine);
  if (!traits.strategies.includes(strategy)) {
    const why =
      strategy === 'dual'
        ? ` (it cannot hold two passwords for one user); use strategy: alternate with usernames: [${db.username ?? 'app'}_blue, ${db.username ?? 'app'}_green]`
        : `; use one of ${traits.strategies.join(', ')}`;
    r.error(
      pd,
      ['database', 'strategy'],
      'STRATEGY_UNSUPPORTED',
      `${traits.label} (target "${target.decl.name}") has no ${strategy} strategy${why}`,
    );
    return;
  }
  const implicit = db.strategy === undefined ? ` (the default for ${traits.label})` : '';
  let users: string[] = [];
  if (strategy === 'alternate') {
    if (db.username !== undefined) {
      r.error(
        pd,
        ['database', 'username'],
        'USERNAME_CONFLICT',
        `strategy alternate${implicit} takes two users, usernames: [a, b], not username`,
        true,
      );
    } else if (!db.usernames) {
      r.error(
        pd,
        ['database'],
        'USERNAME_MISSING',
        `strategy alternate${implicit} needs usernames: [a, b], the two users that take turns`,
        true,
      );
    } else if (db.usernames[0] === db.usernames[1]) {
      r.error(
        pd,
        ['database', 'usernames'],
        'USERNAMES_SAME',
        `strategy alternate needs two different users, not "${db.usernames[0]}" twice`,
      );
    } else users = [...db.usernames];
  } else {
    if (db.usernames !== undefined) {
      r.error(
        pd,
        ['database', 'usernames'],
        'USERNAME_CONFLICT',
        `strategy ${strategy}${implicit} takes one user, username: NAME, not usernames${engine !== 'redis' && traits.strategies.includes('alternate') ? ' (or set strategy: alternate)' : ''}`,
        true,
      );
    } else if (db.username === undefined) {
      r.error(
        pd,
        ['database'],
        'USERNAME_MISSING',
        `strategy ${strategy}${implicit} needs username: NAME, the database user`,
        true,
      );
    } else users = [db.username];
  }
  users.forEach((u, i) => {
    if (u.length > traits.maxUsername) {
      r.error(
        pd,
        ['database', db.usernames ? 'usernames' : 'username', ...(db.usernames ? [i] : [])],
        'USERNAME_TOO_LONG',
        `${traits.label} user names are at most ${traits.maxUsername} characters; "${u}" has ${u.length}`,
      );
    }
    const key = `${target.decl.name}\0${u}`;
    const other = ctx.dbUsers.get(key);
    if (other !== undefined && other !== s.name) {
      r.error(
        pd,
        ['database'],
        'DB_USER_SHARED',
        `user "${u}" on target "${target.decl.name}" is already rotated by secret "${other}"; two secrets would undo each other's passwords`,
        true,
      );
    } else ctx.dbUsers.set(key, s.name);
  });
  if (s.generate && (s.generate.length ?? DEFAULT_LENGTH) > traits.maxPassword) {
    r.error(
      pd,
      ['generate', 'length'],
      'DB_PASSWORD_TOO_LONG',
      `${traits.label} accepts passwords of at most ${traits.maxPassword} characters`,
    );
  }
}

function checkConsumer(e: Entry<Consumer>, index: NameIndex, r: Reporter): void {
  e.decl.secrets.forEach((g, i) => {
    const glob = compileGlob(g);
    if (typeof glob === 'string') {
      r.error(e.pd, ['secrets', i], 'GLOB_INVALID', `secrets[${i}] "${g}": ${glob}`);
    } else if (!index.any(glob)) {
      r.warn(
        e.pd,
        ['secrets', i],
        'CONSUMER_GLOB_UNMATCHED',
        `"${g}" matches no declared secret; check the name (the consumer gains access once such a secret is declared)`,
      );
    }
  });
}

function checkUnused(
  policies: Map<string, Entry<Policy>>,
  targets: Map<string, Entry<Target>>,
  agents: Map<string, Entry<Agent>>,
  secrets: Map<string, Entry<Secret>>,
  consumers: Map<string, Entry<Consumer>>,
  r: Reporter,
): void {
  const usedPolicies = new Set<string>();
  const usedTargets = new Set<string>();
  for (const s of secrets.values()) {
    usedPolicies.add(s.decl.policy);
    if (s.decl.database) usedTargets.add(s.decl.database.target);
  }
  const usedAgents = new Set([...targets.values()].map((t) => t.decl.agent));
  for (const c of consumers.values()) if (c.decl.agent !== undefined) usedAgents.add(c.decl.agent);
  for (const [name, e] of policies)
    if (!usedPolicies.has(name)) r.warn(e.pd, ['name'], 'UNUSED', `policy "${name}" is used by no secret`);
  for (const [name, e] of targets)
    if (!usedTargets.has(name)) r.warn(e.pd, ['name'], 'UNUSED', `target "${name}" is used by no secret`);
  for (const [name, e] of agents)
    if (!usedAgents.has(name)) r.warn(e.pd, ['name'], 'UNUSED', `agent "${name}" is used by no target and no consumer`);
}

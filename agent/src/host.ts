/**
 * The consumers an agent hosts: the Consumers declared with `agent:` this agent's name read their
 * secrets over sockets in the agent's socketDir, served by the daemon's own serving code
 * (ConsumerSockets, consumerHandler and ConsumerService from rotor), from the values the daemon sends.
 *
 * - The values loop long-polls the daemon (src/protocol/values.ts): an answer arrives as soon as a
 *   secret of these consumers changes, sealed to this agent and signed over the request's nonce. A
 *   full answer replaces the consumers (their sockets follow) and every value; a delta updates the
 *   secrets it names. Failures are retried with jittered backoff; meanwhile the last values are served
 *   and /v1/health says stale, since the last answer. With several daemons (./daemons.ts) the loop
 *   stays with one while it answers and moves to the next on a failure (at once; the backoff, and
 *   stale, come after a full round of failures); the new daemon's epoch differs, so it answers full.
 * - Reads: a consumer given a newer version than before is a read receipt, sent to the daemon (the
 *   receipts loop, batched, retried) so that `retireAfter: consumers` sees consumers on every host.
 * - The sealed cache: each applied answer is written to KEY_DIR/consumer-values.age (age, to this
 *   agent's own recipient, mode 0600, written whole and renamed into place), and read at start, so a
 *   restarted agent serves while the daemon is away. A previous value is never served past its
 *   validUntil, from the cache or otherwise.
 *
 * Logs hold names, versions and codes; never a value.
 */
import diagnostics_channel from 'node:diagnostics_channel';
import { constants } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import type {
  Health,
  HostedConsumer,
  Logger,
  SecretCopy,
  Served,
  ValuesAnswer,
  ValuesPayload,
  ValuesReceipt,
  VersionView,
} from 'rotor/internal';
import {
  ConsumerService,
  ConsumerSockets,
  consumerHandler,
  MAX_RECEIPTS_PER_REQUEST,
  MAX_VALUES_ANSWER,
  openSealed,
  SealError,
  sealForAgent,
  ValuesOpener,
} from 'rotor/internal';
import type { AgentConfig } from './config.js';
import { Rounds } from './daemons.js';
import { AgentError } from './errors.js';
import { logExchangeFailure, logMove, type Retry } from './loops.js';
import { Changes } from './pump.js';
import type { DaemonClient } from './transport.js';

export const CACHE_FILE = 'consumer-values.age';

/** Each values answer from the daemon, once applied: { agent, full, secrets: [{ name, version }] } (the bench and tests await it). */
export const agentValuesChannel = diagnostics_channel.channel('rotor-agent:values');

/** Each receipts request the daemon answered: { agent, receipts, accepted }. */
export const agentReceiptsChannel = diagnostics_channel.channel('rotor-agent:receipts');

export interface AgentReceiptsMessage {
  readonly agent: string;
  readonly receipts: readonly ValuesReceipt[];
  readonly accepted: number | undefined;
}

export interface AgentValuesMessage {
  readonly agent: string;
  readonly full: boolean;
  readonly secrets: readonly { readonly name: string; readonly version?: number }[];
}

export interface ConsumerHostOptions {
  readonly config: Pick<AgentConfig, 'name' | 'keys' | 'keyDir' | 'socketDir'>;
  readonly client: DaemonClient;
  readonly log: Logger;
  readonly retry: Retry;
  readonly now?: () => number;
  /** The values long-poll's wait in seconds (default 25). */
  readonly wait?: number;
  /** Keep the sealed cache (default true). */
  readonly cache?: boolean;
  /** Serve the sockets (default true; the propagation bench runs many agents without them). */
  readonly sockets?: boolean;
}

interface CacheFile {
  readonly v: 1;
  readonly agent: string;
  readonly savedAt: string;
  readonly consumers: readonly HostedConsumer[];
  readonly secrets: readonly SecretCopy[];
}

export class ConsumerHost {
  readonly #o: ConsumerHostOptions;
  readonly #now: () => number;
  readonly #opener: ValuesOpener;
  readonly #service: ConsumerService;
  readonly #sockets: ConsumerSockets | undefined;
  #socketsOpen = false;
  #copies = new Map<string, SecretCopy>();
  #consumers: readonly HostedConsumer[] = [];
  #cursor: { epoch?: string; after?: number } = {};
  /** ms of the last answer from the daemon (or of the cache read at start). */
  #heardAt: number | undefined;
  #connected = false;
  /** consumer/secret -> the version last given as current here. */
  readonly #read = new Map<string, number>();
  readonly #outbox = new Map<string, ValuesReceipt>();
  readonly #outboxChanged = new Changes();
  readonly #halt = new AbortController();
  #stopping = false;
  #loops: Promise<void>[] = [];
  #cacheBusy: Promise<void> | undefined;
  #cacheDirty = false;

  constructor(o: ConsumerHostOptions) {
    this.#o = o;
    this.#now = o.now ?? Date.now;
    this.#opener = new ValuesOpener(o.config.name, o.config.keys.identity);
    this.#service = new ConsumerService({
      source: {
        served: (name) => this.#served(name),
        version: (name, v) => this.#version(name, v),
        nextRotationAt: (name) => {
          const at = this.#copies.get(name)?.nextRotationAt;
          return at ? Date.parse(at) : undefined;
        },
      },
      receipts: {
        record: (consumer, secret, version) => {
          const id = `${consumer}/${secret}`;
          if ((this.#read.get(id) ?? 0) >= version) return false;
          this.#read.set(id, version);
          return true;
        },
        get: (consumer, secret) => {
          const version = this.#read.get(`${consumer}/${secret}`);
          return version === undefined ? undefined : { version };
        },
      },
      log: o.log,
      now: this.#now,
      running: () => !this.#stopping,
      onNewer: (consumer, secret, version) => {
        this.#outbox.set(`${consumer}/${secret}`, { consumer, secret, version });
        this.#outboxChanged.notify();
      },
      health: () => this.health(),
    });
    const service = this.#service;
    if (o.sockets !== false)
      this.#sockets = new ConsumerSockets({
        dir: o.config.socketDir,
        log: o.log,
        handler: (consumer) => consumerHandler(consumer, service),
        words: { who: 'the agent', flag: 'socketDir (in the agent configuration)' },
      });
  }

  /** ok while the daemon answers; stale (since its last answer) while it does not. */
  health(): Health {
    if (this.#connected) return { status: 'ok' };
    return {
      status: 'stale',
      ...(this.#heardAt !== undefined ? { since: new Date(this.#heardAt).toISOString() } : {}),
    };
  }

  /** The consumers this agent serves now. */
  get consumers(): readonly string[] {
    return this.#consumers.map((c) => c.name);
  }

  /** Where a consumer's socket is. */
  socketOf(consumer: string): string {
    return path.join(this.#o.config.socketDir, `${consumer}.sock`);
  }

  /** Reads the sealed cache, then starts the values and receipts loops. */
  async start(): Promise<void> {
    if (this.#o.cache !== false) await this.#readCache();
    this.#loops = [this.#valuesLoop(), this.#receiptsLoop()];
  }

  /** Ends the loops, sends what receipts it can at once, closes the sockets, finishes the cache. */
  async stop(): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    this.#service.notifyAll();
    this.#halt.abort();
    this.#outboxChanged.notify();
    await Promise.all(this.#loops);
    await this.#sockets?.close();
    await this.#cacheBusy;
  }

  #served(name: string): Served | undefined {
    const c = this.#copies.get(name);
    if (!c?.current) return undefined;
    const prev = this.#livePrevious(c);
    return {
      name,
      version: c.current.version,
      value: c.current.value as Served['value'],
      ...(c.current.username !== undefined ? { username: c.current.username } : {}),
      rotatedAt: c.current.rotatedAt,
      ...(prev
        ? {
            previous: {
              version: prev.version,
              value: prev.value as Served['value'],
              ...(prev.username !== undefined ? { username: prev.username } : {}),
              validUntil: prev.validUntil,
            },
          }
        : {}),
    };
  }

  /** The agent holds the current and, during the overlap, the previous version: `?version=N` of an older one is 404. */
  #version(name: string, version: number): VersionView | undefined {
    const c = this.#copies.get(name);
    if (!c?.current) return undefined;
    if (c.current.version === version)
      return {
        version,
        value: c.current.value as VersionView['value'],
        ...(c.current.username !== undefined ? { username: c.current.username } : {}),
        rotatedAt: c.current.rotatedAt,
        state: 'current',
      };
    const prev = this.#livePrevious(c);
    if (prev?.version !== version) return undefined;
    return {
      version,
      value: prev.value as VersionView['value'],
      ...(prev.username !== undefined ? { username: prev.username } : {}),
      rotatedAt: prev.rotatedAt ?? c.current.rotatedAt,
      state: 'previous',
      validUntil: prev.validUntil,
    };
  }

  /** The previous version while its validUntil is ahead; never after, whatever the daemon last said. */
  #livePrevious(c: SecretCopy): SecretCopy['previous'] {
    const p = c.previous;
    return p && Date.parse(p.validUntil) > this.#now() ? p : undefined;
  }

  async #valuesLoop(): Promise<void> {
    const signal = this.#halt.signal;
    const rounds = new Rounds(this.#o.client.valueDaemons, this.#o.retry);
    while (!signal.aborted) {
      try {
        const answer = await this.#o.client.values(this.#cursor, this.#o.wait ?? 25, signal);
        const at = this.#now();
        let payload: ValuesPayload;
        try {
          payload = this.#opener.open(answer);
        } catch (e) {
          const why = e instanceof SealError ? e.code : 'ERROR';
          throw new AgentError(
            'AGENT_VALUES_SEAL',
            `the daemon's values answer does not open with this agent's identity (${why}): is the recipient of its Agent declaration the one \`rotor keygen\` printed for this keyDir?`,
          );
        }
        // Before #apply: the cache it writes records this answer's time.
        this.#heardAt = at;
        await this.#apply(payload, answer);
        const was = this.#connected;
        this.#connected = true;
        rounds.ok();
        if (!was) this.#o.log('info', 'values from the daemon are current', { agent: this.#o.config.name });
        if (agentValuesChannel.hasSubscribers)
          agentValuesChannel.publish({
            agent: this.#o.config.name,
            full: payload.full,
            secrets: payload.secrets.map((s) => ({
              name: s.name,
              ...(s.current ? { version: s.current.version } : {}),
            })),
          } satisfies AgentValuesMessage);
      } catch (e) {
        if (signal.aborted) break;
        const delayMs = rounds.failed(e);
        if (delayMs === undefined) {
          logMove(this.#o.log, 'values', e, this.#o.client.valueDaemons.current);
          continue;
        }
        const was = this.#connected;
        this.#connected = false;
        if (was)
          this.#o.log('warn', 'lost the daemon: serving the last values received (health: stale)', {
            agent: this.#o.config.name,
          });
        logExchangeFailure(this.#o.log, 'values', e, delayMs);
        await rounds.sleep(delayMs, signal);
      }
    }
  }

  async #apply(payload: ValuesPayload, answer: ValuesAnswer | undefined): Promise<void> {
    if (!Array.isArray(payload.secrets) || !payload.secrets.every((s) => typeof s?.name === 'string'))
      throw new AgentError('AGENT_ANSWER_INVALID', "the daemon's values answer has no list of secrets", 200);
    if (payload.full) {
      this.#copies = new Map(payload.secrets.map((s) => [s.name, s]));
      this.#consumers = Array.isArray(payload.consumers) ? payload.consumers : [];
      this.#service.setModel({
        consumers: new Map(this.#consumers.map((c) => [c.name, c.secrets])),
        secrets: this.#copies.keys(),
      });
      for (const id of [...this.#read.keys()]) {
        const slash = id.indexOf('/');
        if (!this.#copies.has(id.slice(slash + 1)) || !this.#consumers.some((c) => c.name === id.slice(0, slash)))
          this.#read.delete(id);
      }
      await this.#syncSockets();
      this.#service.notifyAll();
    } else {
      for (const s of payload.secrets) {
        this.#copies.set(s.name, s);
        this.#service.notify(s.name);
      }
    }
    if (answer) this.#cursor = { epoch: answer.epoch, after: answer.cursor };
    if (answer && this.#o.cache !== false && (payload.full || payload.secrets.length > 0)) this.#saveCache();
  }

  async #syncSockets(): Promise<void> {
    if (!this.#sockets) return;
    if (!this.#socketsOpen) {
      if (this.#consumers.length === 0) return;
      try {
        await this.#sockets.open();
        this.#socketsOpen = true;
      } catch (e) {
        const err = e as { code?: string; message?: string };
        this.#o.log(
          'error',
          'the socket directory cannot be used; consumers on this host cannot read until it is fixed',
          {
            code: err.code ?? 'ERROR',
            reason: err.message,
            socketDir: this.#o.config.socketDir,
          },
        );
        return;
      }
    }
    await this.#sockets.sync(
      this.#consumers.map((c) => ({ name: c.name, uid: c.uid, ...(c.gid !== undefined ? { gid: c.gid } : {}) })),
    );
  }

  async #receiptsLoop(): Promise<void> {
    const signal = this.#halt.signal;
    const rounds = new Rounds(this.#o.client.valueDaemons, this.#o.retry);
    while (!signal.aborted) {
      if (this.#outbox.size === 0) {
        await this.#outboxChanged.wait(signal);
        continue;
      }
      const batch = [...this.#outbox.values()].slice(0, MAX_RECEIPTS_PER_REQUEST);
      try {
        const accepted = await this.#o.client.receipts(batch, signal);
        if (agentReceiptsChannel.hasSubscribers)
          agentReceiptsChannel.publish({
            agent: this.#o.config.name,
            receipts: batch,
            accepted,
          } satisfies AgentReceiptsMessage);
        for (const r of batch) {
          const id = `${r.consumer}/${r.secret}`;
          if (this.#outbox.get(id)?.version === r.version) this.#outbox.delete(id);
        }
        rounds.ok();
      } catch (e) {
        if (signal.aborted) break;
        const delayMs = rounds.failed(e);
        if (delayMs === undefined) {
          logMove(this.#o.log, 'receipts', e, this.#o.client.valueDaemons.current);
          continue;
        }
        logExchangeFailure(this.#o.log, 'receipts', e, delayMs);
        await rounds.sleep(delayMs, signal);
      }
    }
  }

  get #cachePath(): string {
    return path.join(this.#o.config.keyDir, CACHE_FILE);
  }

  /** Writes the cache after this answer; one write at a time, the last state wins. */
  #saveCache(): void {
    this.#cacheDirty = true;
    if (this.#cacheBusy) return;
    this.#cacheBusy = (async () => {
      while (this.#cacheDirty) {
        this.#cacheDirty = false;
        try {
          await this.#writeCache();
        } catch (e) {
          this.#o.log('warn', 'the sealed cache of consumer values could not be written', {
            code: (e as { code?: string }).code ?? 'ERROR',
            file: this.#cachePath,
          });
        }
      }
      this.#cacheBusy = undefined;
    })();
  }

  async #writeCache(): Promise<void> {
    const body: CacheFile = {
      v: 1,
      agent: this.#o.config.name,
      savedAt: new Date(this.#heardAt ?? this.#now()).toISOString(),
      consumers: this.#consumers,
      secrets: [...this.#copies.values()],
    };
    const text = await sealForAgent(this.#o.config.keys.recipient, body, MAX_VALUES_ANSWER);
    const tmp = `${this.#cachePath}.${process.pid}.tmp`;
    await rm(tmp, { force: true });
    const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    try {
      await fh.writeFile(text);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, this.#cachePath);
  }

  async #readCache(): Promise<void> {
    let text: string;
    try {
      const fh = await open(this.#cachePath, constants.O_RDONLY | constants.O_NOFOLLOW);
      try {
        const st = await fh.stat();
        if (!st.isFile() || st.size > MAX_VALUES_ANSWER * 2)
          throw Object.assign(new Error('too large'), { code: 'EFBIG' });
        text = await fh.readFile('utf8');
      } finally {
        await fh.close();
      }
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code !== 'ENOENT')
        this.#o.log('warn', 'the sealed cache of consumer values cannot be read; starting without it', {
          code: code ?? 'ERROR',
          file: this.#cachePath,
        });
      return;
    }
    try {
      const c = (await openSealed(this.#o.config.keys.identity, text, MAX_VALUES_ANSWER)) as CacheFile;
      if (c?.v !== 1 || c.agent !== this.#o.config.name || !Array.isArray(c.secrets) || !Array.isArray(c.consumers))
        throw new SealError('SEAL_NOT_JSON', 'not a cache of this agent');
      await this.#apply({ full: true, consumers: c.consumers, secrets: c.secrets }, undefined);
      this.#heardAt = Date.parse(c.savedAt);
      this.#o.log('info', 'serving the sealed cache until the daemon answers', {
        agent: this.#o.config.name,
        savedAt: c.savedAt,
        secrets: c.secrets.length,
      });
    } catch (e) {
      this.#o.log('warn', 'the sealed cache of consumer values does not open; starting without it', {
        code: (e as { code?: string }).code ?? 'ERROR',
        file: this.#cachePath,
      });
    }
  }
}

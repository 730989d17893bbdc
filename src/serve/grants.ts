/**
 * Which consumer may read which secret: the consumers' globs and the declared secrets of the model in
 * force (the daemon's whole model, or the part of it the daemon sent an agent for its own consumers).
 */

import { compileGlob, type Glob } from '../model/glob.js';
import type { Desired } from '../model/model.js';

/** The consumers (name -> their globs) and the declared secrets a Grants answers for. */
export interface Access {
  readonly consumers: ReadonlyMap<string, readonly string[]>;
  readonly secrets: Iterable<string>;
}

/** The Access of a whole model; `only` keeps the consumers it accepts. */
export function accessOf(desired: Desired | undefined, only?: (consumer: string, agent?: string) => boolean): Access {
  const consumers = new Map<string, readonly string[]>();
  for (const [name, c] of desired?.consumers ?? [])
    if (!only || only(name, c.decl.agent)) consumers.set(name, c.decl.secrets);
  return { consumers, secrets: desired?.secrets.keys() ?? [] };
}

export class Grants {
  private readonly globs = new Map<string, Glob[]>();
  private readonly bySecret = new Map<string, string[]>();
  private readonly secrets: readonly string[];

  constructor(access: Access | undefined) {
    for (const [name, globs] of access?.consumers ?? []) {
      // The loader rejected invalid globs before a model is applied (and the agent drops what does not compile).
      this.globs.set(
        name,
        globs.map((g) => compileGlob(g)).filter((g): g is Glob => typeof g !== 'string'),
      );
    }
    this.secrets = [...(access?.secrets ?? [])];
  }

  /** Whether a consumer is one of these. */
  has(consumer: string): boolean {
    return this.globs.has(consumer);
  }

  private readonly answers = new Map<string, Map<string, boolean>>();

  granted(consumer: string, secret: string): boolean {
    let known = this.answers.get(consumer);
    const hit = known?.get(secret);
    if (hit !== undefined) return hit;
    const globs = this.globs.get(consumer);
    let ok = false;
    if (globs) for (const g of globs) if (secret.startsWith(g.prefix) && g.test(secret)) ok = true;
    // Remembered per model (a new commit makes a new Grants); bounded against names made up by a consumer.
    if (!known) this.answers.set(consumer, (known = new Map()));
    if (known.size < 10_000) known.set(secret, ok);
    return ok;
  }

  /** The declared consumers that may read a secret (cached per model). */
  consumersOf(secret: string): readonly string[] {
    let out = this.bySecret.get(secret);
    if (!out) {
      out = [...this.globs.keys()].filter((c) => this.granted(c, secret));
      this.bySecret.set(secret, out);
    }
    return out;
  }

  /** The declared secrets a consumer may read, in name order. */
  readable(consumer: string): string[] {
    return this.secrets.filter((s) => this.granted(consumer, s)).sort();
  }
}

/** Which consumer may read which secret, from the Consumer declarations of the model in force. */

import { compileGlob, type Glob } from '../model/glob.js';
import type { Desired } from '../model/model.js';

export class Grants {
  private readonly globs = new Map<string, Glob[]>();
  private readonly bySecret = new Map<string, string[]>();

  constructor(private readonly desired: Desired | undefined) {
    for (const [name, c] of desired?.consumers ?? []) {
      // The loader rejected invalid globs before a model is applied.
      this.globs.set(
        name,
        c.decl.secrets.map((g) => compileGlob(g)).filter((g): g is Glob => typeof g !== 'string'),
      );
    }
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
    return [...(this.desired?.secrets.keys() ?? [])].filter((s) => this.granted(consumer, s)).sort();
  }
}

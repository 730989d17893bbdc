/** The desired state declared in a repository: immutable, typed from the schemas. */

import type { Position, Problem } from './problems.js';
import type { Agent, Config, Consumer, Policy, Secret, Target } from './schema-types.js';

export type { Agent, Config, Consumer, Policy, Secret, Target };

export interface Located<T> {
  readonly decl: Readonly<T>;
  readonly source: Position;
}

export interface Desired {
  readonly config: Located<Config> | undefined;
  readonly policies: ReadonlyMap<string, Located<Policy>>;
  readonly secrets: ReadonlyMap<string, Located<Secret>>;
  readonly targets: ReadonlyMap<string, Located<Target>>;
  readonly agents: ReadonlyMap<string, Located<Agent>>;
  readonly consumers: ReadonlyMap<string, Located<Consumer>>;
}

export interface LoadResult {
  /** The declarations that passed their checks (all of them when `valid`). */
  readonly desired: Desired;
  /** Every problem found, sorted by file, line and column. */
  readonly problems: readonly Problem[];
  /** No errors (warnings allowed). */
  readonly valid: boolean;
  /** The audit directory of the Config (default `audit`). */
  readonly auditDir: string;
}

export const DEFAULT_AUDIT_DIR = 'audit';

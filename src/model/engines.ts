/**
 * What each database engine supports. A Record keyed by engine, so that adding an engine to the
 * schema without describing it here fails the type check.
 */
import type { Secret, Target } from './schema-types.js';

export type Engine = Target['engine'];
export type Strategy = NonNullable<NonNullable<Secret['database']>['strategy']>;

export interface EngineTraits {
  readonly label: string;
  /** Strategies in order of preference; the first is the default. */
  readonly strategies: readonly Strategy[];
  readonly maxUsername: number;
  readonly maxPassword: number;
}

export const ENGINES: Record<Engine, EngineTraits> = {
  postgres: { label: 'PostgreSQL', strategies: ['alternate', 'single'], maxUsername: 63, maxPassword: 1000 },
  mysql: { label: 'MySQL', strategies: ['dual', 'alternate', 'single'], maxUsername: 32, maxPassword: 256 },
  mariadb: { label: 'MariaDB', strategies: ['dual', 'alternate', 'single'], maxUsername: 80, maxPassword: 256 },
  mongodb: { label: 'MongoDB', strategies: ['alternate', 'single'], maxUsername: 63, maxPassword: 1000 },
  redis: { label: 'Redis', strategies: ['dual', 'single'], maxUsername: 63, maxPassword: 1000 },
  mssql: { label: 'SQL Server', strategies: ['alternate', 'single'], maxUsername: 128, maxPassword: 128 },
};

/**
 * Every engine name, in the order of ENGINES: the one runtime list (the type comes from the schema, through
 * Target['engine']; the protocol and the agent import both from here).
 */
export const ENGINE_NAMES: readonly Engine[] = Object.keys(ENGINES) as Engine[];

export function defaultStrategy(engine: Engine): Strategy {
  return ENGINES[engine].strategies[0]!;
}

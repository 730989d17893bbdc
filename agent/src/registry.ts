/**
 * Engine name -> driver: the engine factories, loaded on first use so that the agent loads only the
 * drivers it needs, and the engines made from them, one per target and engine, kept for later jobs.
 */
import type { DbEngine, EngineFactory, EngineName, TargetConnection } from './engines/types.js';

/** The engine factories of ./engines, imported on first use. */
export async function loadFactory(engine: EngineName): Promise<EngineFactory> {
  switch (engine) {
    case 'postgres':
      return (await import('./engines/postgres.js')).postgresEngine;
    case 'mysql':
      return (await import('./engines/mysql.js')).mysqlEngine;
    case 'mariadb':
      return (await import('./engines/mysql.js')).mariadbEngine;
    case 'redis':
      return (await import('./engines/redis.js')).redisEngine;
    case 'mongodb':
      return (await import('./engines/mongodb.js')).mongodbEngine;
    case 'mssql':
      return (await import('./engines/mssql.js')).mssqlEngine;
  }
}

export class EngineRegistry {
  readonly #factories: Partial<Record<EngineName, EngineFactory>>;
  readonly #engines = new Map<string, Promise<DbEngine>>();

  /** `factories` replace the engines of ./engines by name (tests). */
  constructor(factories: Partial<Record<EngineName, EngineFactory>> = {}) {
    this.#factories = factories;
  }

  /** The engine of a target (made on first use; one that failed to be made is made again next time). */
  get(target: string, engineName: EngineName, conn: TargetConnection): Promise<DbEngine> {
    const key = `${target}\0${engineName}`;
    let engine = this.#engines.get(key);
    if (!engine) {
      const given = this.#factories[engineName];
      engine = (given ? Promise.resolve(given) : loadFactory(engineName)).then((factory) => factory(conn));
      this.#engines.set(key, engine);
      engine.catch(() => {
        if (this.#engines.get(key) === engine) this.#engines.delete(key);
      });
    }
    return engine;
  }

  /** Closes every engine made so far (errors ignored); later jobs would make new ones. */
  async closeAll(): Promise<void> {
    const engines = [...this.#engines.values()];
    this.#engines.clear();
    await Promise.all(engines.map((e) => e.then((x) => x.close()).catch(() => {})));
  }
}

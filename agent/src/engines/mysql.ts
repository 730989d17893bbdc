/**
 * The MySQL 8 / MariaDB engine, from ./mysql/ (this path stays for the agent's registry and the tests).
 */
export * from './mysql/index.js';

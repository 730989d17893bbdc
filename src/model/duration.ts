/** Durations of the declarations: parsed in src/util/duration.ts (below the model and the schedule). */
export { formatDuration, MAX_DURATION_MS, parseDuration } from '../util/duration.js';

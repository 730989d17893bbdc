// The rotor CLI in this process (as dist's bin runs it: run(argv) of dist/src/cli/main.js), for the
// failover proof (prove/8-failover.mjs), with one fault of its own: it SIGKILLs itself at a rotation
// step boundary. It watches the diagnostics channel `rotor:rotation` (the engine publishes
// { secret, step } once each step of a rotation is done) and, when the step named is published for the
// Nth time, kills itself at once, in that tick: the step's result is persisted, the next step not begun.
//
//   ROTOR_PROVE_KILL_STEP=audited [ROTOR_PROVE_KILL_NTH=1] node daemon-child.mjs daemon --state ... --name d0
//
// The parent may also arm it later over the IPC channel (the leader is only known once elected):
//   { cmd: 'kill-at', step: 'audited', nth: 1 }   counts occurrences from then on
//   { cmd: 'kill-at', step: 'set', nth: 1, secret: 'db/app' }   counts only that secret's steps
// Logs go to stderr, as the CLI's.
import diagnostics_channel from 'node:diagnostics_channel';
import { writeSync } from 'node:fs';

const { run } = await import(new URL('../../dist/src/cli/main.js', import.meta.url).href);

let armed;
const arm = (step, nth, secret) => {
  armed = step ? { step, secret, left: Math.max(1, Number(nth) || 1) } : undefined;
};
arm(process.env.ROTOR_PROVE_KILL_STEP, process.env.ROTOR_PROVE_KILL_NTH, process.env.ROTOR_PROVE_KILL_SECRET);

diagnostics_channel.channel('rotor:rotation').subscribe((m) => {
  if (!armed || m?.step !== armed.step || (armed.secret !== undefined && m.secret !== armed.secret)) return;
  if (--armed.left > 0) return;
  writeSync(2, `${JSON.stringify({ msg: 'prove: killed at a step boundary', step: m.step, secret: m.secret })}\n`);
  process.kill(process.pid, 'SIGKILL');
});

process.on('message', (m) => {
  if (m?.cmd === 'kill-at') arm(m.step, m.nth, m.secret);
});
// The IPC channel must not keep the daemon alive after it stopped.
process.channel?.unref();

process.exitCode = await run(process.argv.slice(2));

/**
 * Step boundaries are published on the diagnostics channel `rotor-agent:step` ({ job, secret, step }),
 * right after each step completes: how the crash tests stop the process at each boundary.
 */
import diagnostics_channel from 'node:diagnostics_channel';
import type { Job } from 'rotor/internal';

export const agentStepChannel = diagnostics_channel.channel('rotor-agent:step');

export type AgentStep = 'received' | 'set' | 'tested' | 'retired' | 'reported';

export interface AgentStepMessage {
  readonly job: string;
  readonly secret: string;
  readonly step: AgentStep;
}

export function publishStep(job: Job, step: AgentStep): void {
  if (!agentStepChannel.hasSubscribers) return;
  agentStepChannel.publish({ job: job.id, secret: job.secret, step } satisfies AgentStepMessage);
}

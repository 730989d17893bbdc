/** Printing problems: one line each for people, JSON for programs, annotations for GitHub Actions. */
import path from 'node:path';
import type { LoadResult } from '../model/model.js';
import type { Problem } from '../model/problems.js';
import { problemLine } from '../model/problems.js';

export type ProblemFormat = 'text' | 'json' | 'github';

export { problemLine };

function ghEscapeData(s: string): string {
  return s.replace(/%/g, '%25').replace(/\r/g, '%0D').replace(/\n/g, '%0A');
}
function ghEscapeProp(s: string): string {
  return ghEscapeData(s).replace(/:/g, '%3A').replace(/,/g, '%2C');
}

/** A GitHub Actions annotation; `prefix` makes the file relative to the workspace. */
export function githubLine(p: Problem, prefix: string): string {
  const file = path.posix.normalize(path.posix.join(prefix.split(path.sep).join('/'), p.file));
  return `::${p.severity} file=${ghEscapeProp(file)},line=${p.line},col=${p.col},title=${ghEscapeProp(p.code)}::${ghEscapeData(p.message)}`;
}

export function counts(result: LoadResult) {
  const d = result.desired;
  return {
    configs: d.config ? 1 : 0,
    policies: d.policies.size,
    secrets: d.secrets.size,
    targets: d.targets.size,
    agents: d.agents.size,
    consumers: d.consumers.size,
  };
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

export function summaryLine(result: LoadResult, label: string): string {
  const errors = result.problems.filter((p) => p.severity === 'error').length;
  const warnings = result.problems.length - errors;
  const c = counts(result);
  const decls = `${plural(c.secrets, 'secret')}, ${plural(c.policies, 'policy').replace('policys', 'policies')}, ${plural(c.targets, 'target')}, ${plural(c.agents, 'agent')}, ${plural(c.consumers, 'consumer')}`;
  return result.valid
    ? `${label}: valid (${decls}; ${plural(warnings, 'warning')})`
    : `${label}: invalid (${plural(errors, 'error')}, ${plural(warnings, 'warning')})`;
}

export function formatProblems(result: LoadResult, format: ProblemFormat, label: string, dirArg: string): string {
  switch (format) {
    case 'json':
      return `${JSON.stringify({ valid: result.valid, counts: counts(result), problems: result.problems }, null, 2)}\n`;
    case 'github':
      return `${result.problems.map((p) => `${githubLine(p, dirArg)}\n`).join('') + summaryLine(result, label)}\n`;
    case 'text':
      return `${result.problems.map((p) => `${problemLine(p)}\n`).join('') + summaryLine(result, label)}\n`;
  }
}

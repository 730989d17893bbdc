/** Printing a plan: plain text for terminals, markdown for pull-request comments, JSON for programs. */
import type { Problem } from '../model/problems.js';
import { problemLine } from '../model/problems.js';
import type { AuditViolation } from './append-only.js';
import type { DeclChange, FieldChange, Plan, Reminder, RotationForecast } from './plan.js';

export interface PlanReport {
  readonly base: { readonly ref: string; readonly commit: string };
  readonly head: { readonly ref: string | null; readonly commit: string | null };
  /** True when the head is valid and the audit log was only appended to. */
  readonly ok: boolean;
  /** Problems of the head revision (errors make the plan refuse). */
  readonly problems: readonly Problem[];
  /** Number of errors in the base revision (the plan compares against what of it was valid). */
  readonly baseErrors: number;
  readonly audit: readonly AuditViolation[];
  readonly plan: Plan;
}

export type PlanFormat = 'text' | 'markdown' | 'json';

export function formatPlan(r: PlanReport, format: PlanFormat): string {
  switch (format) {
    case 'json':
      return `${JSON.stringify(r, null, 2)}\n`;
    case 'markdown':
      return markdown(r);
    case 'text':
      return text(r);
  }
}

const short = (c: string | null) => (c ? c.slice(0, 7) : '');
const headLabel = (r: PlanReport) => (r.head.ref ? `${r.head.ref} (${short(r.head.commit)})` : 'the work tree');
const baseLabel = (r: PlanReport) => `${r.base.ref} (${short(r.base.commit)})`;

function value(v: unknown): string {
  return typeof v === 'string' ? v : JSON.stringify(v);
}

function fieldText(f: FieldChange, action: DeclChange['action']): string {
  if (action === 'added') return `${f.path}: ${value(f.to)}`;
  if (action === 'removed') return `${f.path}: ${value(f.from)}`;
  if (f.from === undefined) return `${f.path}: (unset) -> ${value(f.to)}`;
  if (f.to === undefined) return `${f.path}: ${value(f.from)} -> (unset)`;
  return `${f.path}: ${value(f.from)} -> ${value(f.to)}`;
}

function when(t: string): string {
  return t
    .replace('T', ' ')
    .replace(/:00\.000Z$/, 'Z')
    .replace(/\.\d{3}Z$/, 'Z');
}

function nextTimes(f: RotationForecast): string[] {
  return f.next.map((t, i) =>
    i === 0 && (f.why === 'new' || f.why === 'rotate now') && !f.manual ? 'on apply' : when(t),
  );
}

function counts(p: Plan) {
  const c = { added: 0, changed: 0, removed: 0 };
  for (const ch of p.changes) c[ch.action]++;
  return c;
}

function summary(r: PlanReport): string {
  const c = counts(r.plan);
  const parts = [`${c.added} added`, `${c.changed} changed`, `${c.removed} removed`];
  if (r.plan.rotateNow.length) parts.push(`${r.plan.rotateNow.length} rotate-now`);
  if (r.plan.access.length) parts.push(`${r.plan.access.length} access change${r.plan.access.length === 1 ? '' : 's'}`);
  if (r.plan.attention.length)
    parts.push(`${r.plan.attention.length} need${r.plan.attention.length === 1 ? 's' : ''} attention`);
  if (r.plan.reminders.length) parts.push(`${r.plan.reminders.length} to rotate by hand`);
  return parts.join(', ');
}

function reminderText(x: Reminder): string {
  const state = x.overdue ? `overdue since ${x.dueAt.slice(0, 10)}` : `due on ${x.dueAt.slice(0, 10)}`;
  return `${x.secret}: ${state} (maxAge ${x.maxAge}; current value since ${x.lastRotatedAt.slice(0, 10)}). Edit ${x.file} with sops and commit: the new value becomes the next version`;
}

function text(r: PlanReport): string {
  const out: string[] = [];
  out.push(`rotor plan: ${baseLabel(r)} -> ${headLabel(r)}`);
  if (!r.ok) {
    out.push('REFUSED:');
    for (const v of r.audit)
      out.push(`  ${v.file}:${v.line}: the audit log is append-only: ${v.message} [AUDIT_NOT_APPEND_ONLY]`);
    for (const p of r.problems.filter((x) => x.severity === 'error')) out.push(`  ${problemLine(p)}`);
  }
  out.push(summary(r));
  if (r.baseErrors) out.push(`(the base has ${r.baseErrors} errors of its own; it is compared as far as it is valid)`);
  if (r.plan.attention.length) {
    out.push('', 'Needs attention:');
    for (const a of r.plan.attention) out.push(`  ! ${a.subject}: ${a.message} [${a.code}]`);
  }
  if (r.plan.reminders.length) {
    out.push('', 'Rotate by hand (sops: secrets):');
    for (const x of r.plan.reminders)
      out.push(`  ! ${reminderText(x)} [${x.overdue ? 'SOPS_OVERDUE' : 'SOPS_DUE_SOON'}]`);
  }
  if (r.plan.changes.length) {
    out.push('', 'Changes:');
    const sign = { added: '+', removed: '-', changed: '~' } as const;
    for (const c of r.plan.changes) {
      out.push(`  ${sign[c.action]} ${c.kind} ${c.name} (${c.action})`);
      if (c.action === 'changed') for (const f of c.fields) out.push(`      ${fieldText(f, c.action)}`);
    }
  }
  if (r.plan.rotateNow.length) {
    out.push('', 'Rotate now:');
    for (const x of r.plan.rotateNow)
      out.push(`  ${x.secret}: request ${JSON.stringify(x.request)}, reason ${JSON.stringify(x.reason)}`);
  }
  if (r.plan.rotations.length) {
    out.push('', 'Next rotations (UTC):');
    for (const f of r.plan.rotations)
      out.push(
        `  ${f.secret} [${f.why}; policy ${f.policy}${f.manual ? '; rotated by a person: due' : ''}]: ${nextTimes(f).join(', ')}${f.jitter ? ` (+ up to ${f.jitter} jitter)` : ''}`,
      );
  }
  if (r.plan.access.length) {
    out.push('', 'Access:');
    for (const a of r.plan.access) out.push(`  ${a.consumer} ${a.change === 'gained' ? 'gains' : 'loses'} ${a.secret}`);
  }
  return `${out.join('\n')}\n`;
}

function md(s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/\|/g, '\\|').replace(/</g, '&lt;').replace(/\n/g, ' ');
}
function code(s: string): string {
  const t = s.replace(/\n/g, ' ');
  return t.includes('`') ? `<code>${md(t)}</code>` : `\`${t.replace(/\|/g, '\\|')}\``;
}

function mdField(f: FieldChange, action: DeclChange['action']): string {
  if (action === 'added') return `${code(f.path)}: ${code(value(f.to))}`;
  if (action === 'removed') return `${code(f.path)}`;
  if (f.from === undefined) return `${code(f.path)}: *unset* → ${code(value(f.to))}`;
  if (f.to === undefined) return `${code(f.path)}: ${code(value(f.from))} → *unset*`;
  return `${code(f.path)}: ${code(value(f.from))} → ${code(value(f.to))}`;
}

/** Tables longer than this fold into <details>, so a big change keeps the comment readable. */
const FOLD = 30;

function table(head: string[], rows: string[][], title: string): string[] {
  if (rows.length === 0) return [];
  const lines = [
    `| ${head.join(' | ')} |`,
    `|${head.map(() => '---').join('|')}|`,
    ...rows.map((r) => `| ${r.join(' | ')} |`),
  ];
  return rows.length > FOLD
    ? ['<details>', `<summary>${title}: ${rows.length} rows</summary>`, '', ...lines, '', '</details>']
    : lines;
}

function markdown(r: PlanReport): string {
  const out: string[] = [];
  out.push(`### rotor plan: ${code(baseLabel(r))} → ${r.head.ref ? code(headLabel(r)) : 'the work tree'}`);
  out.push('');
  out.push(`${r.ok ? '✅' : '⛔'} ${summary(r)}`);
  if (!r.ok) {
    out.push('', '> [!CAUTION]', '> This change cannot be applied as it is:');
    for (const v of r.audit)
      out.push(
        `> - **${md(v.file)}:${v.line}**: ${md(v.message)}; the audit log is append-only (\`AUDIT_NOT_APPEND_ONLY\`)`,
      );
    for (const p of r.problems.filter((x) => x.severity === 'error'))
      out.push(`> - **${md(p.file)}:${p.line}:${p.col}**: ${md(p.message)} (\`${p.code}\`)`);
  }
  if (r.baseErrors)
    out.push('', `_The base has ${r.baseErrors} errors of its own; it is compared as far as it is valid._`);
  const warnings = r.problems.filter((p) => p.severity === 'warning');
  if (r.plan.attention.length) {
    out.push('', '#### ⚠️ Needs attention', '');
    for (const a of r.plan.attention) out.push(`- **${md(a.subject)}**: ${md(a.message)} (\`${a.code}\`)`);
  }
  if (r.plan.reminders.length) {
    out.push('', '#### ⏰ Rotate by hand', '');
    for (const x of r.plan.reminders)
      out.push(
        `- **${md(x.secret)}**: ${md(reminderText(x).slice(x.secret.length + 2))} (\`${x.overdue ? 'SOPS_OVERDUE' : 'SOPS_DUE_SOON'}\`)`,
      );
  }
  if (r.plan.changes.length) {
    out.push('', '#### Changes', '');
    const icon = { added: '➕ added', removed: '➖ removed', changed: '✏️ changed' } as const;
    out.push(
      ...table(
        ['', 'Kind', 'Name', 'Details'],
        r.plan.changes.map((c) => [
          icon[c.action],
          c.kind,
          code(c.name),
          c.action === 'removed' ? '' : c.fields.map((f) => mdField(f, c.action)).join('<br>'),
        ]),
        'Changes',
      ),
    );
  }
  if (r.plan.rotateNow.length) {
    out.push('', '#### 🔁 Rotate now', '');
    out.push(
      ...table(
        ['Secret', 'Request', 'Reason'],
        r.plan.rotateNow.map((x) => [code(x.secret), code(x.request), md(x.reason)]),
        'Rotate now',
      ),
    );
  }
  if (r.plan.rotations.length) {
    out.push('', '#### Next rotations', '');
    out.push(
      ...table(
        ['Secret', 'Why', 'Policy', 'Next three (UTC)'],
        r.plan.rotations.map((f) => [
          code(f.secret),
          f.manual ? `${f.why}; rotated by a person` : f.why,
          code(f.policy),
          nextTimes(f).join(' · ') + (f.jitter ? ` _(+ up to ${f.jitter} jitter)_` : ''),
        ]),
        'Next rotations',
      ),
    );
  }
  if (r.plan.access.length) {
    out.push('', '#### Access', '');
    out.push(
      ...table(
        ['Consumer', 'Secret', 'Change'],
        r.plan.access.map((a) => [
          code(a.consumer),
          code(a.secret),
          a.change === 'gained' ? '🔓 gains read' : '🔒 loses read',
        ]),
        'Access',
      ),
    );
  }
  if (warnings.length) {
    out.push('', '<details>', `<summary>${warnings.length} warning${warnings.length === 1 ? '' : 's'}</summary>`, '');
    for (const p of warnings) out.push(`- ${md(p.file)}:${p.line}:${p.col}: ${md(p.message)} (\`${p.code}\`)`);
    out.push('', '</details>');
  }
  if (r.plan.changes.length === 0 && r.audit.length === 0) out.push('', '_No declaration changes._');
  return `${out.join('\n')}\n`;
}

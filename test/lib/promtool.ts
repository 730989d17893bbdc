/**
 * Prometheus's promtool for the tests of the alerting rules (deploy/prometheus/rotor-alerts.yml): where
 * it is, running it, and turning scrapes of a daemon's /metrics into the `input_series` of a
 * `promtool test rules` file, as Prometheus would have stored them.
 *
 * A scrape becomes series the way Prometheus stores one: each sample with the target's labels added
 * (`instance`, `job`), plus `up` (1; 0 and nothing else for a scrape that failed). promtool's clock
 * starts at 0 and every series holds its scraped value for HOLD_MINUTES, one sample a minute.
 */
import { spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';

/** How long each scraped value is held in the generated series (longer than any rule's `for`). */
export const HOLD_MINUTES = 30;

/** promtool on PATH (Debian's `prometheus` package puts it in /usr/bin), or undefined. */
export function promtoolPath(): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter).concat('/usr/bin', '/usr/local/bin')) {
    if (!dir) continue;
    const file = path.join(dir, 'promtool');
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch {}
  }
  return undefined;
}

export interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs promtool with `args`, `input` on its stdin. */
export function promtool(bin: string, args: readonly string[], input?: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(input ?? '');
  });
}

export interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const LABEL = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/;

/** The samples of a text exposition (format 0.0.4); throws on a line it cannot read. */
export function parseExposition(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const name = NAME.exec(line)?.[0];
    if (!name) throw new Error(`not a sample: ${line}`);
    let rest = line.slice(name.length);
    const labels: Record<string, string> = {};
    if (rest.startsWith('{')) {
      rest = rest.slice(1);
      while (!rest.startsWith('}')) {
        const m = LABEL.exec(rest);
        if (!m) throw new Error(`bad labels: ${line}`);
        labels[m[1]!] = m[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
        rest = rest.slice(m[0].length).replace(/^,/, '');
      }
      rest = rest.slice(1);
    }
    const [value, timestamp] = rest.trim().split(/\s+/);
    if (timestamp !== undefined) throw new Error(`a sample with a timestamp: ${line}`);
    // As Prometheus reads them (Go's ParseFloat): Inf and NaN in any case (prom-client writes NaN as "Nan").
    const word = value?.toLowerCase();
    const v = word === '+inf' || word === 'inf' ? Infinity : word === '-inf' ? -Infinity : Number(value);
    if (value === undefined || value === '' || (Number.isNaN(v) && word !== 'nan'))
      throw new Error(`bad value: ${line}`);
    samples.push({ name, labels, value: v });
  }
  return samples;
}

/** One scrape of one target: the exposition, or undefined when it failed (the daemon is down). */
export interface Scrape {
  readonly instance: string;
  readonly job: string;
  readonly text: string | undefined;
}

/** A value in promtool's series notation. */
function notation(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

/** A series selector in PromQL's notation: name{label="value",...}. */
function selector(name: string, labels: Readonly<Record<string, string>>): string {
  const inner = Object.entries(labels)
    .map(([k, v]) => `${k}=${JSON.stringify(v)}`)
    .join(',');
  return `${name}{${inner}}`;
}

/** The `input_series` of the scrapes, each series holding its scraped value from time 0 on. */
export function inputSeries(scrapes: readonly Scrape[]): { series: string; values: string }[] {
  const out: { series: string; values: string }[] = [];
  for (const s of scrapes) {
    const target = { instance: s.instance, job: s.job };
    const hold = (name: string, labels: Record<string, string>, v: number) =>
      out.push({ series: selector(name, labels), values: `${notation(v)}+0x${HOLD_MINUTES}` });
    hold('up', target, s.text === undefined ? 0 : 1);
    for (const x of s.text === undefined ? [] : parseExposition(s.text)) {
      if ('instance' in x.labels || 'job' in x.labels) throw new Error(`${x.name} has a target label of its own`);
      hold(x.name, { ...x.labels, ...target }, x.value);
    }
  }
  return out;
}

/** An alerting rule as the rules file has it. */
export interface AlertRule {
  readonly alert: string;
  readonly expr: string;
  readonly for?: string;
  readonly labels?: Readonly<Record<string, string>>;
  readonly annotations?: Readonly<Record<string, string>>;
}

/** The alerting rules of a rules file. */
export function alertRules(yamlText: string): AlertRule[] {
  const doc = YAML.parse(yamlText) as { groups: { rules: (AlertRule | { record: string })[] }[] };
  return doc.groups.flatMap((g) => g.rules.filter((r): r is AlertRule => 'alert' in r));
}

/**
 * The annotations of `rule` for an alert with `labels`, as Prometheus renders them: the rules use only
 * `{{ $labels.NAME }}`, and anything else in a template throws (the expected text could not be known).
 */
export function renderAnnotations(rule: AlertRule, labels: Readonly<Record<string, string>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, template] of Object.entries(rule.annotations ?? {})) {
    const text = template.replace(/\{\{\s*\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}/g, (_, l: string) => {
      const v = labels[l];
      if (v === undefined) throw new Error(`${rule.alert}: annotation ${key} names label ${l}, which the alert lacks`);
      return v;
    });
    if (text.includes('{{')) throw new Error(`${rule.alert}: annotation ${key} has a template other than $labels`);
    out[key] = text;
  }
  return out;
}

/** An alert expected to fire: its labels from the expression (the rule's own labels are added). */
export interface Expected {
  readonly alert: string;
  readonly labels: Readonly<Record<string, string>>;
}

export interface Scenario {
  readonly name: string;
  readonly scrapes: readonly Scrape[];
  /** Every alert that fires once the rules' `for` has passed; every other alert of the file must not. */
  readonly firing: readonly Expected[];
}

/** When the alerts are checked: after the longest `for` (the values are held for HOLD_MINUTES). */
export const EVAL_MINUTES = 20;

/**
 * A `promtool test rules` file: for each scenario and every alert of `rules`, none fires at 1m (no rule
 * fires on a single scrape) and at EVAL_MINUTES exactly the expected ones fire, with their labels and
 * annotations.
 */
export function ruleTests(rulesFile: string, rules: readonly AlertRule[], scenarios: readonly Scenario[]): string {
  const names = new Set(rules.map((r) => r.alert));
  const tests = scenarios.map((s) => {
    for (const e of s.firing) if (!names.has(e.alert)) throw new Error(`${s.name}: no alert ${e.alert} in the rules`);
    return {
      name: s.name,
      interval: '1m',
      input_series: inputSeries(s.scrapes),
      alert_rule_test: rules.flatMap((rule) => [
        { eval_time: '1m', alertname: rule.alert, exp_alerts: [] },
        {
          eval_time: `${EVAL_MINUTES}m`,
          alertname: rule.alert,
          exp_alerts: s.firing
            .filter((e) => e.alert === rule.alert)
            .map((e) => ({
              exp_labels: { ...e.labels, ...rule.labels },
              exp_annotations: renderAnnotations(rule, e.labels),
            })),
        },
      ]),
    };
  });
  return YAML.stringify({ rule_files: [rulesFile], evaluation_interval: '1m', tests }, { lineWidth: 0 });
}

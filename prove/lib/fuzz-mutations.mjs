// Mutations of a declaration repository for the loader fuzzer (prove/5-fuzz.mjs), as fast-check
// arbitraries. A mutation is plain data (so that fast-check can shrink it and a failure can be printed
// and replayed): the file it hits, structured edits of that file's YAML documents (made through the yaml
// library's document model, then written out again), edits of its text or bytes, and edits of the file
// set. Positions are fractions (0..1) of whatever they index, so that any mutation applies to any file.
import fc from 'fast-check';
import { isAlias, isMap, isScalar, isSeq, Pair, parseAllDocuments } from 'yaml';

/** Text that means something to YAML, or to a reader of it. */
export const SPECIAL = [
  ':',
  ': ',
  '- ',
  '? ',
  '|',
  '|-\n',
  '>',
  '>+\n',
  '&a ',
  '*a',
  '*undefined',
  '!',
  '!!str ',
  '!!binary ',
  '!!set ',
  '!<tag:x> ',
  '%',
  '@',
  '`',
  '#',
  ' #',
  "'",
  '"',
  "''",
  '""',
  '{',
  '}',
  '[',
  ']',
  ',',
  '{}',
  '[]',
  '\t',
  '\n',
  '\r',
  '\r\n',
  '\n\n',
  '---\n',
  '--- ',
  '...\n',
  '<<: *a\n',
  '<<: {}\n',
  '\u0000',
  '\u0007',
  '\ufeff',
  '\u2028',
  '\u2029',
  '\u202e',
  '\u00e9',
  '\ud83d\ude00',
  '\\',
  '\\u0000',
  '~',
  'null',
  'Null',
  'true',
  'yes',
  'on',
  '0x1F',
  '0o17',
  '0b101',
  '1_000',
  '1e309',
  '-0',
  '.nan',
  '-.inf',
  '=',
  '  ',
  '\n  ',
  '\n    - ',
  '- - - ',
  '{a: [b, {c: d}]}',
  '[a, b',
  '{a: b',
  'kind: Secret\n',
  'kind: Config\n',
  'name: x\n',
  'name: ../etc\n',
  '%YAML 1.1\n',
  '%TAG !e! tag:e.com,2000:\n',
  '? [a]\n: b\n',
];

/** Values a field may be set to: every type, the forms YAML resolves surprisingly, limits. */
const WEIRD = [
  '',
  ' ',
  '0',
  '-1',
  '1.5',
  '0x1F',
  '0o17',
  '1_000',
  'yes',
  'no',
  'on',
  'off',
  'True',
  'NULL',
  '~',
  '.inf',
  '.nan',
  '30d',
  '0s',
  '-1d',
  '1s',
  '24h',
  '999999999999d',
  '36500d',
  '36501d',
  '10m',
  '1.5h',
  '02:00',
  '24:00',
  '2:00',
  '25:61',
  '* * * * *',
  '0 3 * * 0',
  '61 * * * *',
  '* * * * * * *',
  '0 0 31 2 *',
  'UTC',
  'Europe/Berlin',
  'Mars/Olympus',
  'utc',
  'a/b',
  '../x',
  'a//b',
  '/abs',
  'A',
  'a b',
  'x'.repeat(254),
  'é',
  '\u0000',
  'line\nbreak',
  'Secret',
  'Policy',
  'Config',
  'Target',
  'Agent',
  'Consumer',
  'Unknown',
  'standard',
  'weekly-sunday',
  'payments/webhook-signing',
  'payments/*',
  '**',
  '*',
  'a*b',
  'postgres',
  'mysql',
  'mariadb',
  'redis',
  'mongodb',
  'mssql',
  'oracle',
  'dual',
  'alternate',
  'single',
  'custom',
  'alphanumeric',
  'hex',
  'base64url',
  'ascii',
  'consumers',
  'age1fsr2ptuq2f0pmk8q4hv2zhsyc9jlcvxaaaygvetxveakz87h298qwpeds6',
  'age1invalid',
  'ed25519:AAAA',
  'ed25519:ZpCJ0z+bwOxe4KxuR0czh92ZcOoZyrdZBJvQg8MaBKI=',
  'secrets/stripe.enc.yaml',
  'audit/x.yaml',
  'missing.yaml',
  '"quoted"',
  "it's",
];

/** A position in 0..1, uniform (fast-check's bias toward 0 and the bounds would hit the first node nearly always). */
const frac = fc.noBias(fc.integer({ min: 0, max: 999_999 })).map((n) => n / 1_000_000);

/** A nested value of `depth` levels: maps and lists in turn. */
function nest(depth) {
  let v = 'leaf';
  for (let i = 0; i < depth; i++) v = i % 2 ? [v] : { k: v };
  return v;
}

const value = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...WEIRD) },
  { weight: 2, arbitrary: fc.string({ maxLength: 40 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 20 }) },
  { weight: 2, arbitrary: fc.integer() },
  { weight: 1, arbitrary: fc.constantFrom(0, -1, 1, 2, 3, 8, 64, 1025, 2 ** 31, 2 ** 53 + 1, 1e300) },
  { weight: 1, arbitrary: fc.double() },
  { weight: 1, arbitrary: fc.boolean() },
  { weight: 1, arbitrary: fc.constant(null) },
  { weight: 1, arbitrary: fc.array(fc.constantFrom(...WEIRD), { maxLength: 5 }) },
  {
    weight: 1,
    arbitrary: fc.dictionary(
      fc.constantFrom('a', 'name', 'kind', 'every', 'generate', 'length', 'x'),
      fc.constantFrom(...WEIRD),
      { maxKeys: 4 },
    ),
  },
  { weight: 1, arbitrary: fc.record({ huge: fc.integer({ min: 1_000, max: 400_000 }) }) },
  { weight: 1, arbitrary: fc.record({ deep: fc.integer({ min: 2, max: 400 }) }) },
);

/** Builds a value for the yaml library from the plain description above. */
function realize(v) {
  if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
    const keys = Object.keys(v);
    if (keys.length === 1 && keys[0] === 'huge' && typeof v.huge === 'number') return 'x'.repeat(v.huge);
    if (keys.length === 1 && keys[0] === 'deep' && typeof v.deep === 'number') return nest(v.deep);
  }
  return v;
}

const KEYS = [
  'kind',
  'name',
  'policy',
  'every',
  'cron',
  'overlap',
  'retain',
  'generate',
  'length',
  'charset',
  'chars',
  'fields',
  'database',
  'target',
  'username',
  'usernames',
  'strategy',
  'secrets',
  'uid',
  'agent',
  'engine',
  'recipient',
  'signingKey',
  'audit',
  'dir',
  'sync',
  'interval',
  'ignore',
  'window',
  'start',
  'end',
  'timezone',
  'jitter',
  'maxAge',
  'rotate',
  'request',
  'sops',
  'file',
  'key',
  'allowWeak',
  'retireAfter',
  'description',
  'nmae',
  'Kind',
  'unknownField',
  '<<',
  '',
  '? x',
];

/** Structured edits of one document of the file, by path (fractions pick the document and the node). */
export const structuredOp = fc.oneof(
  fc.record({ kind: fc.constant('set'), doc: frac, at: frac, value }),
  fc.record({ kind: fc.constant('delete'), doc: frac, at: frac }),
  fc.record({ kind: fc.constant('rename'), doc: frac, at: frac, to: fc.constantFrom(...KEYS) }),
  fc.record({ kind: fc.constant('duplicate-key'), doc: frac, at: frac }),
  fc.record({ kind: fc.constant('add-key'), doc: frac, at: frac, key: fc.constantFrom(...KEYS), value }),
  fc.record({ kind: fc.constant('alias'), doc: frac, at: frac, to: frac }),
  fc.record({ kind: fc.constant('retype'), doc: frac, at: frac, as: fc.constantFrom('map', 'seq', 'scalar', 'null') }),
  fc.record({
    kind: fc.constant('style'),
    doc: frac,
    at: frac,
    style: fc.constantFrom('flow', 'block', 'QUOTE_DOUBLE', 'QUOTE_SINGLE', 'BLOCK_LITERAL', 'BLOCK_FOLDED', 'PLAIN'),
  }),
  fc.record({ kind: fc.constant('copy-doc'), doc: frac }),
  fc.record({ kind: fc.constant('drop-doc'), doc: frac }),
  fc.record({ kind: fc.constant('swap-values'), doc: frac, at: frac, to: frac }),
);

/** Edits of the text (or bytes) of the file. */
export const textOp = fc.oneof(
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('flip'), at: frac, mask: fc.integer({ min: 1, max: 255 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('delete'), at: frac, len: fc.integer({ min: 1, max: 80 }) }) },
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant('insert'),
      at: frac,
      text: fc.oneof(
        { weight: 5, arbitrary: fc.constantFrom(...SPECIAL) },
        { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 8 }) },
      ),
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('dup-line'), at: frac }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('swap-lines'), at: frac, to: frac }) },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('indent'),
      at: frac,
      by: fc.constantFrom('\t', ' ', '  ', '   ', '\t  '),
      all: fc.boolean(),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('truncate'), at: frac }) },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('huge'),
      at: frac,
      size: fc.constantFrom(4_096, 65_537, 500_000, 1_048_000, 1_048_577, 3_000_000),
      quote: fc.constantFrom('', '"', "'"),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('deep-flow'),
      at: frac,
      depth: fc.integer({ min: 50, max: 5_000 }),
      open: fc.constantFrom('[', '{', '{a: ', '[{', '- ['),
      close: fc.boolean(),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('deep-block'),
      at: frac,
      depth: fc.integer({ min: 10, max: 700 }),
      seq: fc.boolean(),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('alias-bomb'),
      at: frac,
      levels: fc.integer({ min: 1, max: 12 }),
      fan: fc.integer({ min: 2, max: 10 }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ kind: fc.constant('line-ends'), to: fc.constantFrom('\r\n', '\r', '\u2028', '\u0085') }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('bom'), at: frac }) },
  // Many documents: empty ones up to and over the per-file limit; a few thousand non-empty ones (each a
  // problem, with its position) rarely, as they take seconds.
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('documents'),
      at: frac,
      many: fc.oneof(
        {
          weight: 12,
          arbitrary: fc.constantFrom(
            ['---\n', 9_999],
            ['---\n', 10_001],
            ['---\n', 20_000],
            ['--- {}\n', 10_001],
            ['--- x\n', 2],
            ['--- {}\n', 40],
            ['...\n---\n', 100],
            ['--- []\n', 3],
          ),
        },
        { weight: 1, arbitrary: fc.constantFrom(['--- {}\n', 9_999], ['--- x\n', 5_000]) },
      ),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('directive'),
      text: fc.constantFrom(
        '%YAML 1.1\n---\n',
        '%YAML 1.2\n---\n',
        '%YAML 9.9\n---\n',
        '%TAG !x! tag:x,2000:\n---\n',
        '%FOO bar\n---\n',
        '%YAML 1.2\n',
      ),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('bad-utf8'),
      at: frac,
      bytes: fc.constantFrom('c3', 'ff', 'eda080', 'f4908080', 'c0af', 'e282', 'f0'),
    }),
  },
);

/** Edits of the set of files. */
export const fileOp = fc.oneof(
  fc.record({ kind: fc.constant('drop-file') }),
  fc.record({
    kind: fc.constant('copy-file'),
    to: fc.constantFrom(
      'copy.yaml',
      'x/y/copy.yml',
      'rotor.yaml',
      'audit/copy.yaml',
      'copy.txt',
      'docs/copy.yaml',
      '.hidden.yaml',
    ),
  }),
  fc.record({
    kind: fc.constant('rename-file'),
    to: fc.constantFrom('renamed.yaml', 'renamed.yml', 'renamed.YAML', 'sub/rotor.yaml', 'audit/r.yaml', 'r.json'),
  }),
  fc.record({ kind: fc.constant('empty-file') }),
);

/** One mutated repository: which file, then 0-3 structured, 0-4 text and 0-1 file edits (at least one in all). */
export const mutation = fc
  .record({
    file: frac,
    structured: fc.array(structuredOp, { maxLength: 3 }),
    text: fc.array(textOp, { maxLength: 4 }),
    files: fc.array(fileOp, { maxLength: 1 }),
  })
  .filter((m) => m.structured.length + m.text.length + m.files.length > 0);

// --- applying a mutation -------------------------------------------------------------------------------

const pick = (list, f) => list[Math.min(list.length - 1, Math.floor(f * list.length))];

/** Every node of a document with how to reach it: { parent, index, pair? }. */
function nodesOf(doc) {
  const out = [];
  const walk = (node, depth) => {
    if (depth > 50) return;
    if (isMap(node)) {
      node.items.forEach((pair, index) => {
        out.push({ parent: node, index, pair });
        walk(pair.value, depth + 1);
      });
    } else if (isSeq(node)) {
      node.items.forEach((item, index) => {
        out.push({ parent: node, index });
        walk(item, depth + 1);
      });
    }
  };
  walk(doc.contents, 0);
  return out;
}

const getNode = (n) => (n.pair ? n.pair.value : n.parent.items[n.index]);
const setNode = (n, v) => {
  if (n.pair) n.pair.value = v;
  else n.parent.items[n.index] = v;
};

function applyStructured(docs, op) {
  if (docs.length === 0) return;
  const di = Math.min(docs.length - 1, Math.floor(op.doc * docs.length));
  const doc = docs[di];
  if (op.kind === 'copy-doc') {
    docs.splice(di + 1, 0, doc.clone());
    return;
  }
  if (op.kind === 'drop-doc') {
    docs.splice(di, 1);
    return;
  }
  const nodes = nodesOf(doc);
  if (nodes.length === 0) {
    if (op.kind === 'set' || op.kind === 'add-key')
      doc.contents = doc.createNode({ [op.key ?? 'kind']: realize(op.value) });
    return;
  }
  const n = pick(nodes, op.at);
  switch (op.kind) {
    case 'set':
      setNode(n, doc.createNode(realize(op.value)));
      break;
    case 'delete':
      n.parent.items.splice(n.index, 1);
      break;
    case 'rename':
      if (n.pair) n.pair.key = doc.createNode(op.to);
      break;
    case 'duplicate-key':
      if (n.pair)
        n.parent.items.splice(
          n.index + 1,
          0,
          new Pair(
            doc.createNode(isScalar(n.pair.key) ? n.pair.key.value : String(n.pair.key)),
            doc.createNode('duplicate'),
          ),
        );
      break;
    case 'add-key':
      if (isMap(n.parent)) n.parent.items.push(new Pair(doc.createNode(op.key), doc.createNode(realize(op.value))));
      break;
    case 'alias': {
      const target = getNode(pick(nodes, op.to));
      if (!target || isAlias(target)) break;
      target.anchor ??= `a${Math.floor(op.to * 1000)}`;
      setNode(n, doc.createAlias(target, target.anchor));
      break;
    }
    case 'retype': {
      const old = getNode(n);
      const plain = old && typeof old.toJSON === 'function' ? old.toJSON() : null;
      const as = { map: { value: plain }, seq: [plain], scalar: JSON.stringify(plain) ?? 'null', null: null }[op.as];
      setNode(n, doc.createNode(as));
      break;
    }
    case 'style': {
      const node = getNode(n);
      if (!node) break;
      if (isMap(node) || isSeq(node)) node.flow = op.style === 'flow';
      else if (isScalar(node) && !['flow', 'block'].includes(op.style)) node.type = op.style;
      break;
    }
    case 'swap-values': {
      const other = pick(nodes, op.to);
      const a = getNode(n);
      const b = getNode(other);
      if (a === b || !a || !b) break;
      setNode(n, b.clone ? b.clone() : b);
      setNode(other, a.clone ? a.clone() : a);
      break;
    }
  }
}

/** The file's text after structured edits (undefined when the yaml library cannot write it back). */
function structured(text, ops) {
  const docs = parseAllDocuments(text, { uniqueKeys: false });
  if (!Array.isArray(docs)) return undefined; // an empty stream
  for (const op of ops) applyStructured(docs, op);
  try {
    return docs
      .map((d, i) => {
        const s = d.toString({ lineWidth: 0 });
        return i === 0 || s.startsWith('---') ? s : `---\n${s}`;
      })
      .join('');
  } catch {
    return undefined; // e.g. an alias whose anchor a later edit removed: left out, counted
  }
}

/** Line starts of a text. */
function lineStarts(s) {
  const out = [0];
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) === 10) out.push(i + 1);
  return out;
}

function applyText(buf, op) {
  const at = (f, len) => Math.min(len, Math.floor(f * (len + 1)));
  const s = () => buf.toString('utf8');
  switch (op.kind) {
    case 'flip': {
      if (buf.length === 0) return buf;
      const b = Buffer.from(buf);
      b[at(op.at, b.length - 1)] ^= op.mask;
      return b;
    }
    case 'delete': {
      const i = at(op.at, buf.length);
      return Buffer.concat([buf.subarray(0, i), buf.subarray(i + op.len)]);
    }
    case 'insert': {
      const i = at(op.at, buf.length);
      return Buffer.concat([buf.subarray(0, i), Buffer.from(op.text, 'utf8'), buf.subarray(i)]);
    }
    case 'bad-utf8': {
      const i = at(op.at, buf.length);
      return Buffer.concat([buf.subarray(0, i), Buffer.from(op.bytes, 'hex'), buf.subarray(i)]);
    }
    case 'truncate':
      return buf.subarray(0, at(op.at, buf.length));
    case 'bom': {
      const i = op.at < 0.5 ? 0 : at(op.at, buf.length);
      return Buffer.concat([buf.subarray(0, i), Buffer.from('\ufeff', 'utf8'), buf.subarray(i)]);
    }
    default:
      break;
  }
  // Line-level edits work on the text.
  const text = s();
  const starts = lineStarts(text);
  const lineAt = (f) => Math.min(starts.length - 1, Math.floor(f * starts.length));
  const lineText = (i) => text.slice(starts[i], i + 1 < starts.length ? starts[i + 1] : text.length);
  let out = text;
  switch (op.kind) {
    case 'dup-line': {
      const i = lineAt(op.at);
      out = text.slice(0, starts[i]) + lineText(i) + (lineText(i).endsWith('\n') ? '' : '\n') + text.slice(starts[i]);
      break;
    }
    case 'swap-lines': {
      const lines = text.split('\n');
      const i = Math.min(lines.length - 1, Math.floor(op.at * lines.length));
      const j = Math.min(lines.length - 1, Math.floor(op.to * lines.length));
      [lines[i], lines[j]] = [lines[j], lines[i]];
      out = lines.join('\n');
      break;
    }
    case 'indent': {
      const lines = text.split('\n');
      const i = Math.min(lines.length - 1, Math.floor(op.at * lines.length));
      // Leading spaces become `by` (tabs, odd widths): on every line, or on one (prefixed if it has none).
      const reindent = (l) =>
        /^ /.test(l) ? l.replace(/^ +/, (sp) => op.by.repeat(Math.max(1, sp.length >> 1))) : op.by + l;
      out = lines
        .map((l, k) =>
          op.all ? l.replace(/^ +/, (sp) => op.by.repeat(Math.max(1, sp.length >> 1))) : k === i ? reindent(l) : l,
        )
        .join('\n');
      break;
    }
    case 'huge': {
      const i = starts[lineAt(op.at)];
      out = `${text.slice(0, i)}description: ${op.quote}${'x'.repeat(op.size)}${op.quote}\n${text.slice(i)}`;
      break;
    }
    case 'deep-flow': {
      const i = starts[lineAt(op.at)];
      const closing = { '[': ']', '{': '}', '{a: ': '}', '[{': '}]', '- [': ']' }[op.open];
      out = `${text.slice(0, i)}deep: ${op.open.repeat(op.depth)}${op.close ? closing.repeat(op.depth) : ''}\n${text.slice(i)}`;
      break;
    }
    case 'deep-block': {
      const i = starts[lineAt(op.at)];
      let block = '';
      for (let d = 0; d < op.depth; d++) block += `${'  '.repeat(d)}${op.seq ? '- ' : 'k:'}\n`;
      out = `${text.slice(0, i)}deep:\n${block.replace(/^/gm, '  ')}${text.slice(i)}`;
      break;
    }
    case 'alias-bomb': {
      const i = starts[lineAt(op.at)];
      let bomb = 'bomb0: &b0 [lol]\n';
      for (let l = 1; l <= op.levels; l++)
        bomb += `bomb${l}: &b${l} [${Array.from({ length: op.fan }, () => `*b${l - 1}`).join(', ')}]\n`;
      out = text.slice(0, i) + bomb + text.slice(i);
      break;
    }
    case 'line-ends':
      out = text.replace(/\n/g, op.to);
      break;
    case 'documents': {
      const i = starts[lineAt(op.at)];
      out = text.slice(0, i) + op.many[0].repeat(op.many[1]) + text.slice(i);
      break;
    }
    case 'directive':
      out = op.text + text;
      break;
    default:
      throw new Error(`unknown text edit ${op.kind}`);
  }
  return Buffer.from(out, 'utf8');
}

/**
 * The repository after `m`: a new Map (base is left as it is), and what happened:
 * { files, target, unwritable } (unwritable: the structured edits could not be written back, skipped).
 */
export function applyMutation(base, m) {
  const names = [...base.keys()];
  const target = pick(names, m.file);
  const files = new Map(base);
  let buf = base.get(target);
  let unwritable = false;
  if (m.structured.length > 0) {
    const text = structured(buf.toString('utf8'), m.structured);
    if (text === undefined) unwritable = true;
    else buf = Buffer.from(text, 'utf8');
  }
  for (const op of m.text) buf = applyText(buf, op);
  files.set(target, buf);
  for (const op of m.files) {
    if (op.kind === 'drop-file') files.delete(target);
    else if (op.kind === 'copy-file') files.set(op.to, buf);
    else if (op.kind === 'rename-file') {
      files.delete(target);
      files.set(op.to, buf);
    } else if (op.kind === 'empty-file') files.set(target, Buffer.alloc(0));
  }
  return { files, target, unwritable };
}

/** A short description of a mutation for a report (long strings cut, never more than ~300 characters). */
export function describe(m, target) {
  const json = JSON.stringify(m, (_k, v) =>
    typeof v === 'string' && v.length > 24
      ? `${v.slice(0, 24)}...(${v.length})`
      : typeof v === 'number' && !Number.isInteger(v)
        ? Math.round(v * 1000) / 1000
        : v,
  );
  return `${target}: ${json.length > 300 ? `${json.slice(0, 300)}...` : json}`;
}

/** The kinds of edits in a mutation, for the tally: "text:flip", "yaml:set", "file:drop-file". */
export function kindsOf(m) {
  return [
    ...m.structured.map((o) => `yaml:${o.kind}`),
    ...m.text.map((o) => `text:${o.kind}`),
    ...m.files.map((o) => `file:${o.kind}`),
  ];
}

/** Every kind of edit a mutation can make (kindsOf's names): the fuzzer must have made each. */
export const EDIT_KINDS = [
  ...[
    'set',
    'delete',
    'rename',
    'duplicate-key',
    'add-key',
    'alias',
    'retype',
    'style',
    'copy-doc',
    'drop-doc',
    'swap-values',
  ].map((k) => `yaml:${k}`),
  ...[
    'flip',
    'delete',
    'insert',
    'dup-line',
    'swap-lines',
    'indent',
    'truncate',
    'huge',
    'deep-flow',
    'deep-block',
    'alias-bomb',
    'line-ends',
    'bom',
    'documents',
    'directive',
    'bad-utf8',
  ].map((k) => `text:${k}`),
  ...['drop-file', 'copy-file', 'rename-file', 'empty-file'].map((k) => `file:${k}`),
];

/**
 * Targeted hostile inputs, one per limit or check the loader must answer with its code: loaded before
 * the random cases, in the short run as in the full one, so that a limit that stopped working fails
 * every run (the random cases reach the rarer codes only by chance in a short run). Each edits a copy
 * of the repository: `edit(files)` (a Map of path -> Buffer).
 */
export const TARGETED = [
  {
    code: 'FILE_TOO_LARGE',
    what: 'a file of 1 MiB + 1 byte',
    edit: (f) => f.set('hostile.yaml', Buffer.from(`description: ${'x'.repeat(1024 * 1024 - 13)}\n`)),
  },
  {
    code: 'FILE_NOT_UTF8',
    what: 'a byte 0xff in a name',
    edit: (f) =>
      f.set(
        'hostile.yaml',
        Buffer.concat([Buffer.from('kind: Policy\nname: a'), Buffer.from([0xff]), Buffer.from('\nevery: 30d\n')]),
      ),
  },
  {
    code: 'YAML_SYNTAX',
    what: 'an unclosed flow sequence',
    edit: (f) => f.set('hostile.yaml', Buffer.from('kind: Policy\nname: [a, b\nevery: 30d\n')),
  },
  {
    code: 'YAML_DUPLICATE_KEY',
    what: 'name given twice',
    edit: (f) => f.set('hostile.yaml', Buffer.from('kind: Policy\nname: a\nname: b\nevery: 30d\n')),
  },
  {
    code: 'YAML_ALIAS_LIMIT',
    what: 'a billion laughs (10 aliases to 10 aliases, 9 levels)',
    edit: (f) => {
      let bomb = 'kind: Policy\nname: bomb\nevery: 30d\nb0: &b0 [lol]\n';
      for (let l = 1; l <= 9; l++)
        bomb += `b${l}: &b${l} [${Array.from({ length: 10 }, () => `*b${l - 1}`).join(', ')}]\n`;
      f.set('hostile.yaml', Buffer.from(bomb));
    },
  },
  {
    code: 'YAML_TOO_DEEP',
    what: '5,000 nested flow sequences',
    edit: (f) =>
      f.set(
        'hostile.yaml',
        Buffer.from(`kind: Policy\nname: deep\nevery: 30d\ndeep: ${'['.repeat(5000)}${']'.repeat(5000)}\n`),
      ),
  },
  {
    code: 'YAML_TOO_MANY_DOCUMENTS',
    what: '20,000 empty documents',
    edit: (f) => f.set('hostile.yaml', Buffer.from('---\n'.repeat(20_000))),
  },
  {
    code: 'SCHEMA_TYPE',
    what: 'retain: a list',
    edit: (f) => f.set('hostile.yaml', Buffer.from('kind: Policy\nname: typed\nevery: 30d\nretain: [3]\n')),
  },
  { code: 'CONFIG_MISSING', what: 'rotor.yaml removed', edit: (f) => f.delete('rotor.yaml') },
];

/**
 * Parsing declaration files: UTF-8 only, multi-document YAML 1.2 with source positions, duplicate keys
 * rejected, alias expansion and document counts bounded, deep nesting caught. Never throws on input.
 */

import jsyaml from 'js-yaml';
import type { Document, Node } from 'yaml';
import { Composer, isMap, isPair, isScalar, isSeq, LineCounter, Parser, visit } from 'yaml';
import type { Code, Position, Problem } from './problems.js';

export const LIMITS = {
  /** Bytes of one file. */
  fileBytes: 1024 * 1024,
  /** Bytes of all declaration files together. */
  totalBytes: 64 * 1024 * 1024,
  /** Declaration files read. */
  files: 20_000,
  /** YAML documents in one file. */
  docsPerFile: 10_000,
  /** YAML documents in the repository. */
  docsTotal: 100_000,
  /** Nodes an alias expansion may produce (the yaml library's maxAliasCount). */
  aliasCount: 100,
} as const;

export type Path = readonly (string | number)[];

/**
 * One YAML document of a file. `data` is its content as plain data. The yaml library's Document (with
 * source positions) is built only when a position is asked for: that is, for problems, which are rare.
 */
export class ParsedDoc {
  private parsed: { doc: Document.Parsed; lines: LineCounter } | undefined;
  constructor(
    readonly file: string,
    /** 0-based index of the document in its file. */
    readonly index: number,
    readonly data: unknown,
    /** The document's text: from its `---` line (or the file's start) to the next document. */
    readonly text: string,
    /** 0-based line of the file where `text` starts. */
    readonly firstLine: number,
    parsed?: { doc: Document.Parsed; lines: LineCounter },
  ) {
    this.parsed = parsed;
  }

  /** The yaml library's view of this document, for positions. */
  get positions(): { doc: Document.Parsed; lines: LineCounter } {
    if (!this.parsed) {
      const lines = new LineCounter();
      const docs = [
        ...new Composer(COMPOSER_OPTIONS).compose(
          new Parser(lines.addNewLine).parse(this.text),
          true,
          this.text.length,
        ),
      ];
      this.parsed = { doc: docs.find((d) => d.contents !== null) ?? docs[0]!, lines };
    }
    return this.parsed;
  }

  /** File position of an offset into `text`. */
  linePos(offset: number): { line: number; col: number } {
    const { line, col } = this.positions.lines.linePos(offset);
    return { line: line + this.firstLine, col };
  }
}

const COMPOSER_OPTIONS = { uniqueKeys: true, strict: true, version: '1.2', schema: 'core', merge: false } as const;

const decoder = new TextDecoder('utf-8', { fatal: true });

/** The offset of the first byte that does not start a valid UTF-8 sequence. */
function firstInvalidUtf8(buf: Buffer): number {
  let i = 0;
  while (i < buf.length) {
    const b = buf[i]!;
    const n = b < 0x80 ? 1 : b >= 0xc2 && b <= 0xdf ? 2 : b >= 0xe0 && b <= 0xef ? 3 : b >= 0xf0 && b <= 0xf4 ? 4 : 0;
    if (n === 0 || i + n > buf.length) return i;
    try {
      decoder.decode(buf.subarray(i, i + n));
    } catch {
      return i;
    }
    i += n;
  }
  return buf.length;
}

/** Decodes strict UTF-8 (without a BOM), or reports where the first bad byte is. */
export function decodeUtf8(file: string, buf: Buffer, problems: Problem[]): string | undefined {
  try {
    const text = decoder.decode(buf);
    return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  } catch {
    const before = buf.subarray(0, firstInvalidUtf8(buf)).toString('utf8');
    const line = before.split('\n').length;
    const col = before.length - (before.lastIndexOf('\n') + 1) + 1;
    problems.push({
      file,
      line,
      col,
      severity: 'error',
      code: 'FILE_NOT_UTF8',
      message: 'the file is not valid UTF-8 (first bad byte here); save it as UTF-8',
    });
    return undefined;
  }
}

/**
 * The YAML 1.2 core schema (spec 10.3.2) for js-yaml, whose own CORE_SCHEMA also takes YAML 1.1 forms
 * (0b101, 1_000, 0777): plain scalars resolve exactly as in the yaml library's `core` schema.
 */
const CORE_1_2 = jsyaml.FAILSAFE_SCHEMA.extend({
  implicit: [
    new jsyaml.Type('tag:yaml.org,2002:null', {
      kind: 'scalar',
      resolve: (s: string) => s === '' || s === '~' || s === 'null' || s === 'Null' || s === 'NULL',
      construct: () => null,
      predicate: (v: unknown) => v === null,
    }),
    new jsyaml.Type('tag:yaml.org,2002:bool', {
      kind: 'scalar',
      resolve: (s: string) => /^(?:true|True|TRUE|false|False|FALSE)$/.test(s),
      construct: (s: string) => s[0] === 't' || s[0] === 'T',
      predicate: (v: unknown) => typeof v === 'boolean',
    }),
    new jsyaml.Type('tag:yaml.org,2002:int', {
      kind: 'scalar',
      resolve: (s: string) => /^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$/.test(s),
      construct: (s: string) =>
        s.startsWith('0o') ? parseInt(s.slice(2), 8) : s.startsWith('0x') ? parseInt(s.slice(2), 16) : Number(s),
      predicate: (v: unknown) => typeof v === 'number' && Number.isInteger(v),
    }),
    new jsyaml.Type('tag:yaml.org,2002:float', {
      kind: 'scalar',
      resolve: (s: string) =>
        /^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$/.test(
          s,
        ),
      construct: (s: string) =>
        /\.(?:nan|NaN|NAN)$/.test(s) ? NaN : /inf$/i.test(s) ? (s[0] === '-' ? -Infinity : Infinity) : Number(s),
      predicate: (v: unknown) => typeof v === 'number',
    }),
  ],
});

/** Flow collections nested deeper than this are refused before any parser recurses into them. */
const MAX_FLOW_DEPTH = 200;

/**
 * Where flow collections first nest deeper than MAX_FLOW_DEPTH, or -1. Counts only brackets that
 * open a collection (after a line start, ':', ',', '-', '?', '[' or '{'), and skips comments and
 * quoted scalars, so that brackets inside strings do not count.
 */
export function flowTooDeep(text: string): number {
  let depth = 0;
  let prev = 0x0a; // the last significant character
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x20 || c === 0x09 || c === 0x0d) continue;
    const opening =
      prev === 0x0a ||
      prev === 0x3a ||
      prev === 0x2c ||
      prev === 0x2d ||
      prev === 0x3f ||
      prev === 0x5b ||
      prev === 0x7b;
    if (c === 0x23 && (i === 0 || /\s/.test(text[i - 1]!))) {
      const nl = text.indexOf('\n', i);
      if (nl < 0) break;
      i = nl - 1;
      continue;
    }
    if ((c === 0x22 || c === 0x27) && opening) {
      // a quoted scalar: skip to its closing quote ('' escapes ' in single quotes, \ escapes in double)
      let j = i + 1;
      for (; j < text.length; j++) {
        const d = text.charCodeAt(j);
        if (c === 0x22 && d === 0x5c) j++;
        else if (d === c) {
          if (c === 0x27 && text.charCodeAt(j + 1) === 0x27) j++;
          else break;
        }
      }
      i = j;
      prev = c;
      continue;
    }
    if ((c === 0x5b || c === 0x7b) && opening) {
      if (++depth > MAX_FLOW_DEPTH) return i;
    } else if ((c === 0x5d || c === 0x7d) && depth > 0) depth--;
    prev = c;
  }
  return -1;
}

interface Chunk {
  readonly text: string;
  readonly firstLine: number;
  /** Offset of `text` in the file. */
  readonly offset: number;
}

const DOC_MARKER = /^---(?=[ \t\r\n]|$)/gm;

/**
 * Splits a file at its document start markers. A `---` at the start of a line always starts a new
 * document in YAML (it is forbidden inside scalars), so the split is exact for files without directives.
 */
function splitDocuments(text: string): Chunk[] {
  const starts = [0];
  for (const m of text.matchAll(DOC_MARKER)) if (m.index! > 0) starts.push(m.index!);
  const chunks: Chunk[] = [];
  let line = 0;
  let lineAt = 0;
  for (let i = 0; i < starts.length; i++) {
    const from = starts[i]!;
    for (let j = lineAt; j < from; j++) if (text.charCodeAt(j) === 10) line++;
    lineAt = from;
    chunks.push({ text: text.slice(from, starts[i + 1] ?? text.length), firstLine: line, offset: from });
  }
  // Comments before the first `---` belong to the first document, not to a document of their own.
  if (chunks.length > 1 && !HAS_CONTENT.test(chunks[0]!.text)) {
    const [pre, first] = chunks;
    chunks.splice(0, 2, { text: pre!.text + first!.text, firstLine: pre!.firstLine, offset: pre!.offset });
  }
  return chunks;
}

/** A chunk that may use anchors or aliases (`&a`, `*a`): those need the yaml library's alias limits. */
const MAYBE_ALIAS = /(?:^|[\s[{,:])[&*][^\s,[\]{}]/;
/** A chunk with content beyond markers, comments and blank lines. */
const HAS_CONTENT = /^(?!---(?:\s|$)|\.\.\.(?:\s|$)|[ \t]*#|[ \t]*\r?$)/m;

/**
 * Parses every document of one file. Problems go to `problems`; documents with errors are left out.
 * `budget.docs` is the number of documents the repository may still hold; it is decreased.
 *
 * Speed: the yaml library keeps exact positions but parses about 1.5 MB/s; js-yaml is several times
 * faster and keeps none. Each document is read by js-yaml first, and by the yaml library when js-yaml
 * refuses it (for the exact error and position), when it may hold aliases (for the alias limit), or
 * when it is empty or a bare scalar. Positions come from the yaml library later, only where needed.
 */
export function parseDocuments(file: string, text: string, problems: Problem[], budget: { docs: number }): ParsedDoc[] {
  const deep = flowTooDeep(text);
  if (deep >= 0) {
    const before = text.slice(0, deep);
    const line = before.split('\n').length;
    problems.push({
      file,
      line,
      col: deep - before.lastIndexOf('\n'),
      severity: 'error',
      code: 'YAML_TOO_DEEP',
      message: `flow collections nest more than ${MAX_FLOW_DEPTH} levels deep here; declarations need only a few levels`,
    });
    return [];
  }
  if (/^%/m.test(text)) return parseWithYaml(file, { text, firstLine: 0, offset: 0 }, problems, budget, 0);
  const chunks = splitDocuments(text);
  const limit = Math.max(0, Math.min(LIMITS.docsPerFile, budget.docs));
  if (chunks.length > limit) {
    const which =
      limit === LIMITS.docsPerFile
        ? `this file has more than ${LIMITS.docsPerFile} YAML documents`
        : `the repository has more than ${LIMITS.docsTotal} YAML documents`;
    problems.push({
      file,
      line: chunks[limit]!.firstLine + 1,
      col: 1,
      severity: 'error',
      code: 'YAML_TOO_MANY_DOCUMENTS',
      message: `${which}; split the declarations or remove empty documents`,
    });
    budget.docs -= limit;
    return [];
  }
  const out: ParsedDoc[] = [];
  chunks.forEach((chunk, index) => {
    budget.docs--;
    if (!MAYBE_ALIAS.test(chunk.text)) {
      try {
        const data: unknown = jsyaml.load(chunk.text, { schema: CORE_1_2, json: false, filename: file });
        if (typeof data === 'object' && data !== null) {
          out.push(new ParsedDoc(file, index, data, chunk.text, chunk.firstLine));
          return;
        }
        if ((data === undefined || data === null) && !HAS_CONTENT.test(chunk.text)) return; // an empty document
      } catch (e) {
        if (e instanceof RangeError) {
          problems.push({
            file,
            line: chunk.firstLine + 1,
            col: 1,
            severity: 'error',
            code: 'YAML_TOO_DEEP',
            message: 'the YAML nests too deeply to read; declarations need only a few levels',
          });
          return;
        }
        // fall through: the yaml library says exactly what is wrong
      }
    }
    out.push(...parseWithYaml(file, chunk, problems, { docs: Infinity }, index));
  });
  return out;
}

function parseWithYaml(
  file: string,
  chunk: Chunk,
  problems: Problem[],
  budget: { docs: number },
  firstIndex: number,
): ParsedDoc[] {
  const lines = new LineCounter();
  const parser = new Parser(lines.addNewLine);
  const composer = new Composer(COMPOSER_OPTIONS);
  const out: ParsedDoc[] = [];
  const at = (offset: number) => {
    const p = lines.linePos(offset);
    return { line: p.line + chunk.firstLine, col: p.col };
  };
  const report = (offset: number, code: Code, message: string) =>
    problems.push({ file, ...at(offset), severity: 'error', code, message });
  let index = firstIndex;
  try {
    for (const doc of composer.compose(parser.parse(chunk.text), true, chunk.text.length)) {
      if (index - firstIndex >= LIMITS.docsPerFile || budget.docs <= 0) {
        report(
          doc.range[0],
          'YAML_TOO_MANY_DOCUMENTS',
          `this file has more YAML documents than the limit (${LIMITS.docsPerFile} per file, ${LIMITS.docsTotal} in all); split the declarations or remove empty documents`,
        );
        break;
      }
      budget.docs--;
      const i = index++;
      if (doc.errors.length > 0) {
        for (const e of doc.errors) {
          if (e.code === 'DUPLICATE_KEY')
            report(e.pos[0], 'YAML_DUPLICATE_KEY', 'this key appears twice in the same mapping; remove one');
          else if (e.code === 'RESOURCE_EXHAUSTION' || /call stack/i.test(e.message))
            report(e.pos[0], 'YAML_TOO_DEEP', 'the YAML nests too deeply to read; declarations need only a few levels');
          else report(e.pos[0], 'YAML_SYNTAX', cleanYamlMessage(e.message));
        }
        continue;
      }
      for (const w of doc.warnings)
        problems.push({
          file,
          ...at(w.pos[0]),
          severity: 'warning',
          code: 'YAML_SYNTAX',
          message: cleanYamlMessage(w.message),
        });
      if (doc.contents === null) continue; // an empty document, such as a trailing ---
      let data: unknown;
      try {
        data = doc.toJS({ maxAliasCount: LIMITS.aliasCount });
      } catch (e) {
        if (e instanceof RangeError) throw e;
        const message = String((e as Error).message);
        if (/alias count/i.test(message)) {
          report(
            doc.range[0],
            'YAML_ALIAS_LIMIT',
            `aliases in this document expand to too many nodes (more than ${LIMITS.aliasCount}); write the values out instead of nesting aliases`,
          );
        } else {
          let where = doc.range[0];
          visit(doc, {
            Alias(_, node) {
              if (node.resolve(doc) === undefined && node.range) {
                where = node.range[0];
                return visit.BREAK;
              }
              return undefined;
            },
          });
          report(where, 'YAML_SYNTAX', cleanYamlMessage(message));
        }
        continue;
      }
      if (data === null && !HAS_CONTENT.test(chunk.text)) continue;
      // Positions into this document are offsets into chunk.text; a chunk holds one document unless
      // the file has directives, in which case the whole file is one chunk starting at line 0.
      out.push(new ParsedDoc(file, i, data, chunk.text, chunk.firstLine, { doc, lines }));
    }
  } catch (e) {
    if (!(e instanceof RangeError)) throw e;
    problems.push({
      file,
      line: chunk.firstLine + 1,
      col: 1,
      severity: 'error',
      code: 'YAML_TOO_DEEP',
      message: 'the YAML nests too deeply to read; declarations need only a few levels',
    });
    return [];
  }
  return out;
}

function cleanYamlMessage(message: string): string {
  // The yaml library appends "at line L, column C" and a source excerpt when prettyErrors is on; it is
  // off here, but trim anything after the first line to keep one line per problem.
  // The suffix first, then trimEnd: /\s+at line .../ alone is quadratic on a long run of spaces.
  const first = message.split('\n')[0]!;
  const at = /\sat line \d+, column \d+:?$/.exec(first);
  return at ? first.slice(0, at.index).trimEnd() : first;
}

function keyText(key: unknown): string | undefined {
  if (isScalar(key)) return String(key.value);
  const json = (key as { toJSON?: () => unknown } | null)?.toJSON?.();
  return json === undefined ? undefined : String(json);
}

/** The node at `path` in a parsed document (the deepest existing one), or the key of its last step. */
export function nodeAt(pd: ParsedDoc, path: Path, key = false): Node | undefined {
  let node: unknown = pd.positions.doc.contents;
  for (let i = 0; i < path.length; i++) {
    const step = path[i]!;
    if (isMap(node)) {
      const pair = node.items.find((p) => isPair(p) && keyText(p.key) === String(step));
      if (!pair) return node as Node;
      if ((key && i === path.length - 1) || pair.value === null) return pair.key as Node;
      node = pair.value;
    } else if (isSeq(node)) {
      const item = node.items[Number(step)];
      if (item === undefined || item === null) return node as Node;
      node = item;
    } else {
      return node as Node | undefined;
    }
  }
  return node as Node | undefined;
}

/** The position of the node at `path` (or of its key). */
export function positionOf(pd: ParsedDoc, path: Path, key = false): Position {
  const node = nodeAt(pd, path, key);
  const offset = node?.range?.[0] ?? pd.positions.doc.range[0];
  return { file: pd.file, ...pd.linePos(offset) };
}

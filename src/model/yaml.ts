/**
 * Parsing declaration files: UTF-8 only, multi-document YAML 1.2 with source positions, duplicate keys
 * rejected, alias expansion and document counts bounded, deep nesting caught. Never throws on input.
 */
import { Composer, isMap, isPair, isScalar, isSeq, LineCounter, Parser } from 'yaml';
import type { Document, Node } from 'yaml';
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

export interface ParsedDoc {
  readonly file: string;
  /** 0-based index of the document in its file. */
  readonly index: number;
  readonly doc: Document.Parsed;
  readonly lines: LineCounter;
  /** The document as plain data. */
  readonly data: unknown;
}

export type Path = readonly (string | number)[];

const decoder = new TextDecoder('utf-8', { fatal: true });

export function problemAt(file: string, lines: LineCounter | undefined, offset: number, severity: Problem['severity'], code: Code, message: string): Problem {
  const pos = lines ? lines.linePos(offset) : { line: 1, col: 1 };
  return { file, line: pos.line, col: pos.col, severity, code, message };
}

/** Decodes strict UTF-8 (without a BOM), or reports where the first bad byte is. */
export function decodeUtf8(file: string, buf: Buffer, problems: Problem[]): string | undefined {
  try {
    const text = decoder.decode(buf);
    return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  } catch {
    const lossy = buf.toString('utf8');
    const bad = lossy.indexOf('\ufffd');
    const before = lossy.slice(0, Math.max(0, bad));
    const line = before.split('\n').length;
    const col = bad - (before.lastIndexOf('\n') + 1) + 1;
    problems.push({ file, line, col, severity: 'error', code: 'FILE_NOT_UTF8', message: 'the file is not valid UTF-8 (first bad byte here); save it as UTF-8' });
    return undefined;
  }
}

/**
 * Parses every document of one file. Problems go to `problems`; documents with errors are left out.
 * `budget.docs` is the number of documents the repository may still hold; it is decreased.
 */
export function parseDocuments(file: string, text: string, problems: Problem[], budget: { docs: number }): ParsedDoc[] {
  const lines = new LineCounter();
  const parser = new Parser(lines.addNewLine);
  const composer = new Composer({ uniqueKeys: true, strict: true, version: '1.2', schema: 'core', merge: false });
  const out: ParsedDoc[] = [];
  let index = 0;
  try {
    for (const doc of composer.compose(parser.parse(text), true, text.length)) {
      if (index >= LIMITS.docsPerFile || budget.docs <= 0) {
        const which = index >= LIMITS.docsPerFile ? `this file has more than ${LIMITS.docsPerFile} YAML documents` : `the repository has more than ${LIMITS.docsTotal} YAML documents`;
        problems.push(problemAt(file, lines, doc.range[0], 'error', 'YAML_TOO_MANY_DOCUMENTS', `${which}; split the declarations or remove empty documents`));
        break;
      }
      budget.docs--;
      const i = index++;
      if (doc.errors.length > 0) {
        for (const e of doc.errors) {
          const dup = e.code === 'DUPLICATE_KEY';
          problems.push(problemAt(file, lines, e.pos[0], 'error', dup ? 'YAML_DUPLICATE_KEY' : 'YAML_SYNTAX', dup ? 'this key appears twice in the same mapping; remove one' : cleanYamlMessage(e.message)));
        }
        continue;
      }
      for (const w of doc.warnings) problems.push(problemAt(file, lines, w.pos[0], 'warning', 'YAML_SYNTAX', cleanYamlMessage(w.message)));
      if (doc.contents === null) continue; // an empty document, such as a trailing ---
      let data: unknown;
      try {
        data = doc.toJS({ maxAliasCount: LIMITS.aliasCount });
      } catch (e) {
        if (e instanceof RangeError) throw e;
        problems.push(problemAt(file, lines, doc.range[0], 'error', 'YAML_ALIAS_LIMIT', `aliases in this document expand to too many nodes (more than ${LIMITS.aliasCount}); write the values out instead of nesting aliases`));
        continue;
      }
      out.push({ file, index: i, doc, lines, data });
    }
  } catch (e) {
    if (!(e instanceof RangeError)) throw e;
    problems.push({ file, line: 1, col: 1, severity: 'error', code: 'YAML_TOO_DEEP', message: 'the YAML nests too deeply to read; declarations need only a few levels' });
    return [];
  }
  return out;
}

function cleanYamlMessage(message: string): string {
  // The yaml library appends "at line L, column C" and a source excerpt when prettyErrors is on; it is
  // off here, but trim anything after the first line to keep one line per problem.
  return message.split('\n')[0]!.replace(/\s+at line \d+, column \d+:?$/, '');
}

/** The node at `path` in a parsed document (the deepest existing one), or the key of its last step. */
export function nodeAt(pd: ParsedDoc, path: Path, key = false): Node | undefined {
  let node: unknown = pd.doc.contents;
  for (let i = 0; i < path.length; i++) {
    const step = path[i]!;
    if (isMap(node)) {
      const pair = node.items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value) === String(step));
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
  const offset = node?.range?.[0] ?? pd.doc.range[0];
  const { line, col } = pd.lines.linePos(offset);
  return { file: pd.file, line, col };
}

/**
 * The tree a store parses a file into: mappings keep their order (the MAC depends on it); leaves keep
 * their store type.
 */
export type Leaf =
  | { k: 'str'; v: string }
  | { k: 'int'; v: bigint }
  | { k: 'float'; v: number }
  | { k: 'bool'; v: boolean }
  | { k: 'null' };
export interface MapNode {
  k: 'map';
  entries: [string, Node][];
}
export interface SeqNode {
  k: 'seq';
  items: Node[];
}
export type Node = MapNode | SeqNode | Leaf;

/** How deep a store nests at most. */
export const MAX_DEPTH = 100;

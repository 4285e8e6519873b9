// The server's tree as the page knows it: FileMetadata by path, changed by the journal's
// operations. Pure: no DOM, no network.

export const parentOf = (path) => {
  const slash = path.lastIndexOf("/");
  return slash < 0 ? "" : path.slice(0, slash);
};

export const baseName = (path) => path.slice(path.lastIndexOf("/") + 1);

export const joinPath = (dir, name) => (dir ? `${dir}/${name}` : name);

const CONFLICT = /^(.*)\.sync-conflict-(\d{8}-\d{6})-([^/]*?)(\.[^./]*)?$/;

// The original of a conflict copy (NAME.sync-conflict-YYYYMMDD-HHMMSS-CLIENT.EXT), or null.
export function conflictOriginal(path) {
  const match = CONFLICT.exec(path);
  if (!match || !match[1] || match[1].endsWith("/")) return null;
  return match[1] + (match[4] || "");
}

function directory(path) {
  return { path, size: 0, modified: "", hash: "", is_directory: true };
}

export class Tree {
  constructor() {
    this.entries = new Map();
    this.byParent = new Map(); // folder -> Set of the paths directly in it
    this.version = 0;
  }

  reset(list) {
    this.entries = new Map();
    this.byParent = new Map();
    for (const metadata of list) this.set(metadata);
    this.version++;
  }

  set(metadata) {
    this.entries.set(metadata.path, metadata);
    const parent = parentOf(metadata.path);
    let names = this.byParent.get(parent);
    if (!names) this.byParent.set(parent, (names = new Set()));
    names.add(metadata.path);
  }

  delete(path) {
    this.entries.delete(path);
    const names = this.byParent.get(parentOf(path));
    if (names) names.delete(path);
  }

  get(path) { return this.entries.get(path); }

  // Applies one SyncOperation; returns the paths it created or changed (to highlight).
  apply(operation) {
    this.version++;
    const [kind] = Object.keys(operation);
    const body = operation[kind];
    if (kind === "Create" || kind === "Update") {
      const metadata = body.metadata;
      this.ensureParents(metadata.path);
      this.set(metadata);
      return [metadata.path];
    }
    if (kind === "Delete") {
      this.removeBelow(body.path);
      return [];
    }
    if (kind === "Move") {
      const moved = this.below(body.from);
      this.removeBelow(body.from);
      this.ensureParents(body.to);
      for (const metadata of moved) {
        const path = body.to + metadata.path.slice(body.from.length);
        this.set({ ...metadata, path });
      }
      return moved.length ? [body.to] : [];
    }
    return [];
  }

  ensureParents(path) {
    for (let parent = parentOf(path); parent && !this.entries.has(parent); parent = parentOf(parent)) {
      this.set(directory(parent));
    }
  }

  // `path` and everything under it.
  below(path) {
    const found = [];
    const visit = (at) => {
      const metadata = this.entries.get(at);
      if (metadata) found.push(metadata);
      for (const child of this.byParent.get(at) || []) visit(child);
    };
    visit(path);
    return found;
  }

  removeBelow(path) {
    for (const metadata of this.below(path)) {
      this.delete(metadata.path);
      this.byParent.delete(metadata.path);
    }
  }

  isDirectory(path) {
    if (path === "") return true;
    const metadata = this.entries.get(path);
    return Boolean(metadata && metadata.is_directory);
  }

  children(dir) {
    return Array.from(this.byParent.get(dir) || [], (path) => this.entries.get(path));
  }
}

const COMPARE = {
  name: (a, b) => compareText(baseName(a.path), baseName(b.path)),
  size: (a, b) => a.size - b.size,
  modified: (a, b) => compareText(a.modified, b.modified),
  hash: (a, b) => compareText(a.hash, b.hash),
};

const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
function compareText(a, b) { return collator.compare(a, b); }

// Folders first, then by `key`, ties by name.
export function sortEntries(entries, key, ascending) {
  const compare = COMPARE[key] || COMPARE.name;
  const sign = ascending ? 1 : -1;
  return entries.sort((a, b) => {
    if (a.is_directory !== b.is_directory) return a.is_directory ? -1 : 1;
    return sign * compare(a, b) || COMPARE.name(a, b);
  });
}

export function filterEntries(entries, text) {
  const wanted = text.trim().toLocaleLowerCase();
  if (!wanted) return entries;
  return entries.filter((metadata) => baseName(metadata.path).toLocaleLowerCase().includes(wanted));
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

export function formatSize(bytes) {
  if (bytes === null || bytes === undefined) return "";
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${UNITS[unit]}`;
}

export function formatTime(text) {
  if (!text) return "";
  const date = new Date(text);
  if (Number.isNaN(date.getTime())) return String(text);
  return date.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

// A journal change as a short line: its kind and the paths it names.
export function describe(operation) {
  const [kind] = Object.keys(operation);
  const body = operation[kind];
  if (kind === "Move") return { kind, path: `${body.from} → ${body.to}` };
  if (kind === "Delete") return { kind, path: body.path };
  const metadata = body.metadata || {};
  return { kind: metadata.is_directory && kind === "Create" ? "Create folder" : kind, path: metadata.path };
}

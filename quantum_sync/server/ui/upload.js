// Uploads: files from the file inputs or a drop (folders walked), each sent through
// /api/upload with a progress bar of its own and one for all of them.

import { $, el } from "./dom.js";
import { formatSize, joinPath } from "./tree.js";

const PARALLEL = 3;

// [{file, path}] from an <input type=file> (a folder input gives webkitRelativePath).
export function filesFromInput(input) {
  return Array.from(input.files, (file) => ({ file, path: file.webkitRelativePath || file.name }));
}

function readAll(reader) {
  return new Promise((resolve, reject) => {
    const found = [];
    const next = () => reader.readEntries((batch) => {
      if (!batch.length) {
        resolve(found);
        return;
      }
      found.push(...batch);
      next();
    }, reject);
    next();
  });
}

async function walk(entry, prefix, found) {
  const path = joinPath(prefix, entry.name);
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    found.push({ file, path });
  } else if (entry.isDirectory) {
    for (const child of await readAll(entry.createReader())) await walk(child, path, found);
  }
}

// [{file, path}] from a drop, folders included (their relative paths kept).
export async function filesFromDrop(dataTransfer) {
  const entries = Array.from(dataTransfer.items || [])
    .map((item) => (item.webkitGetAsEntry ? item.webkitGetAsEntry() : null))
    .filter(Boolean);
  if (!entries.length) return Array.from(dataTransfer.files, (file) => ({ file, path: file.name }));
  const found = [];
  for (const entry of entries) await walk(entry, "", found);
  return found;
}

export class Uploads {
  constructor(api, showError) {
    this.api = api;
    this.showError = showError;
    this.total = 0;
    this.sent = 0;
    this.active = 0;
  }

  // Sends every {file, path} into folder `dir`; resolves when all are done.
  async add(items, dir) {
    if (!items.length) return;
    $("uploads").hidden = false;
    const jobs = items.map(({ file, path }) => this.job(file, joinPath(dir, path)));
    this.total += items.reduce((sum, item) => sum + item.file.size, 0);
    this.active += jobs.length;
    this.updateOverall();
    const queue = jobs.slice();
    const worker = async () => {
      while (queue.length) await queue.shift()();
    };
    await Promise.all(Array.from({ length: Math.min(PARALLEL, jobs.length) }, worker));
  }

  job(file, path) {
    const bar = el("progress", { attrs: { max: String(Math.max(file.size, 1)), value: "0" } });
    const state = el("span", { text: formatSize(file.size) });
    const row = el("li", { attrs: { "data-path": path } }, [el("span", { text: path }), bar, state]);
    $("upload-items").append(row);
    return async () => {
      let counted = 0;
      const progress = (loaded) => {
        bar.value = loaded;
        this.sent += loaded - counted;
        counted = loaded;
        this.updateOverall();
      };
      try {
        await this.api.upload(path, file, progress);
        row.className = "done";
        state.textContent = "done";
      } catch (error) {
        row.className = "failed";
        state.textContent = error.message;
        this.showError(`${path}: ${error.message}`);
        progress(file.size);
      } finally {
        this.active--;
        this.updateOverall();
      }
    };
  }

  updateOverall() {
    const overall = $("upload-overall");
    overall.max = Math.max(this.total, 1);
    overall.value = this.sent;
    $("upload-overall-text").textContent = this.active
      ? `${formatSize(this.sent)} of ${formatSize(this.total)}, ${this.active} left`
      : `${formatSize(this.total)} done`;
    if (!this.active) {
      this.total = 0;
      this.sent = 0;
    }
  }
}

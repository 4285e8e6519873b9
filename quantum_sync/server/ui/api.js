// The server's REST API as the page uses it. Every failure becomes an ApiError carrying
// the server's own code and message, so the page can show exactly what the server said.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function randomId() {
  const bytes = new Uint8Array(6);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export const query = (params) => new URLSearchParams(params).toString();

function errorOf(status, statusText, body) {
  const error = body && body.error;
  if (error && typeof error.message === "string") {
    return new ApiError(status, error.code || `HTTP_${status}`, error.message);
  }
  return new ApiError(status, `HTTP_${status}`, `${status} ${statusText || "error"}`);
}

export class Api {
  constructor() {
    this.token = null;
    this.clientId = `web-ui-${randomId()}`;
  }

  headers(extra = {}) {
    const headers = { "X-Client-Id": this.clientId, ...extra };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    return headers;
  }

  async request(method, url, { json, headers } = {}) {
    let response;
    try {
      response = await fetch(url, {
        method,
        cache: "no-store",
        headers: this.headers(json === undefined ? headers : { "Content-Type": "application/json", ...headers }),
        body: json === undefined ? undefined : JSON.stringify(json),
      });
    } catch (e) {
      throw new ApiError(0, "NETWORK", "the server cannot be reached");
    }
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (e) {
      body = null;
    }
    if (!response.ok) throw errorOf(response.status, response.statusText, body);
    return body;
  }

  list() { return this.request("GET", "/api/list"); }
  metrics() { return this.request("GET", "/ws/metrics"); }
  clients() { return this.request("GET", "/ws/status"); }
  // The journal after `since`; with `journal`, a journal other than that one (a server
  // started anew) is answered CURSOR_EXPIRED instead of changes that are not the page's.
  changes(since, limit = 1000, journal = null) {
    const params = journal ? { since, limit, journal_id: journal } : { since, limit };
    return this.request("GET", `/api/changes?${query(params)}`);
  }
  versions(path) { return this.request("GET", `/api/versions?${query({ path })}`); }

  restore(path, id) {
    return this.request("POST", "/api/restore", { json: { path, id } });
  }

  async login(username, password) {
    const body = await this.request("POST", "/api/v1/auth/login", { json: { username, password } });
    return body.data;
  }

  // Applies operations through /api/sync; the first one not applied becomes an ApiError
  // with the server's message.
  async sync(operations) {
    const body = await this.request("POST", "/api/sync", { json: { operations, client_id: this.clientId } });
    for (const result of body.results) {
      if (result.status !== "applied") {
        throw new ApiError(result.status === "conflict" ? 409 : 400, result.code || "CONFLICT", result.message);
      }
    }
    return body;
  }

  // An upload by XMLHttpRequest (fetch reports no upload progress): resolves with the
  // stored FileMetadata; onProgress(bytesSent) as the body goes out.
  upload(path, file, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", `/api/upload?${query({ path })}`);
      for (const [name, value] of Object.entries(this.headers({ "Content-Type": "application/octet-stream" }))) {
        xhr.setRequestHeader(name, value);
      }
      xhr.upload.onprogress = (event) => onProgress(event.loaded);
      xhr.onload = () => {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
        if (xhr.status >= 200 && xhr.status < 300) {
          onProgress(file.size);
          resolve(body);
        } else {
          reject(errorOf(xhr.status, xhr.statusText, body));
        }
      };
      xhr.onerror = () => reject(new ApiError(0, "NETWORK", "the upload was cut off"));
      xhr.send(file);
    });
  }

  downloadUrl(path) { return `/api/download?${query({ path })}`; }

  // A download with the token in a header (never in the URL): the body as a Blob.
  async downloadBlob(path) {
    let response;
    try {
      response = await fetch(this.downloadUrl(path), { headers: this.headers() });
    } catch (e) {
      throw new ApiError(0, "NETWORK", "the server cannot be reached");
    }
    if (!response.ok) {
      let body = null;
      try { body = await response.json(); } catch (e) { body = null; }
      throw errorOf(response.status, response.statusText, body);
    }
    return response.blob();
  }
}

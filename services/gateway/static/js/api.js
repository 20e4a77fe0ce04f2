// The REST client: bearer token, JSON errors ({detail}), uploads with progress, SSE over fetch.
const TOKEN_KEY = 'docent.token';

export class ApiError extends Error {
  constructor(status, detail, reason = '') {
    super(detail);
    this.status = status;
    this.reason = reason;
  }
}

let onUnauthorized = () => {};
export const setUnauthorizedHandler = (handler) => { onUnauthorized = handler; };
export const getToken = () => localStorage.getItem(TOKEN_KEY);
export const setToken = (token) => (token ? localStorage.setItem(TOKEN_KEY, token) : localStorage.removeItem(TOKEN_KEY));

function describe(body, status) {
  const detail = body && body.detail;
  if (Array.isArray(detail)) {
    // FastAPI validation errors: "field: message"
    return detail.map((d) => `${(d.loc || []).slice(-1)[0] || 'request'}: ${d.msg}`).join('; ');
  }
  return detail || `Request failed (${status})`;
}

async function fail(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  if (response.status === 401 && getToken()) onUnauthorized();
  throw new ApiError(response.status, describe(body, response.status), body && body.reason);
}

export async function request(path, { method = 'GET', json, headers = {}, signal } = {}) {
  const init = { method, headers: { Accept: 'application/json', ...headers }, signal };
  const token = getToken();
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (json !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(json);
  }
  const response = await fetch(path, init);
  if (!response.ok) await fail(response);
  if (response.status === 204) return null;
  return response.json();
}

/** POST a file as multipart `file`; onProgress(fraction) while the bytes go up. Resolves the document. */
export function uploadFile(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', '/api/upload/');
    xhr.setRequestHeader('Authorization', `Bearer ${getToken()}`);
    xhr.responseType = 'json';
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) { resolve(xhr.response); return; }
      if (xhr.status === 401) onUnauthorized();
      const body = xhr.response;
      reject(new ApiError(xhr.status, describe(body, xhr.status), body && body.reason));
    };
    xhr.onerror = () => reject(new ApiError(0, 'Network error while uploading'));
    const form = new FormData();
    form.append('file', file, file.name);
    xhr.send(form);
  });
}

/** Server-sent events from a fetch response: yields {event, data} with data parsed as JSON. */
export async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, '');
        let event = 'message';
        const data = [];
        for (const line of block.split(/\r?\n/)) {
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'event') event = text;
          else if (field === 'data') data.push(text);
        }
        if (data.length) yield { event, data: JSON.parse(data.join('\n')) };
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/** Open an SSE endpoint (GET or POST with JSON) with the bearer token; errors before the stream throw. */
export async function openEvents(path, { json, signal } = {}) {
  const init = { method: json === undefined ? 'GET' : 'POST', headers: { Accept: 'text/event-stream' }, signal };
  init.headers.Authorization = `Bearer ${getToken()}`;
  if (json !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(json);
  }
  const response = await fetch(path, init);
  if (!response.ok) await fail(response);
  return readEvents(response);
}

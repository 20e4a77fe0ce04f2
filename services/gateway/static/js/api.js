// The REST client: bearer token, JSON errors ({detail}), uploads with progress, SSE over fetch.
const TOKEN_KEY = 'docent.token';

export class ApiError extends Error {
  /** retryAfter: seconds from the Retry-After header (429, 503), or null. */
  constructor(status, detail, reason = '', retryAfter = null) {
    super(detail);
    this.status = status;
    this.reason = reason;
    this.retryAfter = retryAfter;
  }
}

/** Retry-After is seconds or an HTTP date; the wait in whole seconds, or null. */
export function parseRetryAfter(value) {
  if (!value) return null;
  const trimmed = value.trim();
  if (/^\d+(\.\d+)?$/.test(trimmed)) return Math.max(1, Math.ceil(Number(trimmed)));
  const at = Date.parse(trimmed);
  return Number.isNaN(at) ? null : Math.max(1, Math.ceil((at - Date.now()) / 1000));
}

/** "in 12 s (at 14:05:31)", "in 2 min (at 14:07)": when the wait ends. */
export function retryWhen(seconds) {
  const at = new Date(Date.now() + seconds * 1000);
  const clock = seconds < 60
    ? at.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' })
    : at.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  const wait = seconds < 60 ? `${seconds} s` : `${Math.ceil(seconds / 60)} min`;
  return `in ${wait} (at ${clock})`;
}

// the over-quota answers (429), said for people; the server's detail stays for anything else
const LIMITS = {
  UPLOAD_RATE_LIMITED: 'You have reached your limit of uploads per minute.',
  CHAT_RATE_LIMITED: 'You have reached your limit of questions per minute.',
  DOCUMENT_QUOTA_EXCEEDED: 'Your document quota is used up: delete documents to upload more.',
  STORAGE_QUOTA_EXCEEDED: 'This file does not fit in your storage quota: delete documents to make room.',
};

// collections' refusals, said for people (the server's detail is for developers)
export const REASONS = {
  USER_NOT_FOUND: 'No Docent account uses this email. Ask them to sign up, then share again.',
  PERSONAL_COLLECTION: 'Your personal collection is yours alone: it cannot be shared, renamed or deleted.',
  LAST_OWNER: 'A collection needs an owner: make someone else an owner first.',
  COLLECTION_NOT_EMPTY: 'Only an empty collection can be deleted: delete its documents first.',
  COLLECTION_ROLE_REQUIRED: 'Your role in this collection does not allow this: ask an owner for editor access.',
  COLLECTION_NOT_FOUND: 'This collection no longer exists or is no longer shared with you.',
  MEMBER_NOT_FOUND: 'This person is no longer a member of the collection.',
};

function readable(status, detail, reason, retryAfter) {
  if (status !== 429) return REASONS[reason] || detail;
  if (!retryAfter) return LIMITS[reason] || detail;
  let base = LIMITS[reason] || detail.replace(/[;,]?\s*try again in \d+\s*s\.?$/i, '').replace(/^./, (c) => c.toUpperCase());
  if (!/[.!?:]$/.test(base)) base += '.';
  return `${base} Try again ${retryWhen(retryAfter)}.`;
}

function apiError(status, body, retryHeader) {
  const retryAfter = parseRetryAfter(retryHeader);
  const reason = (body && body.reason) || '';
  return new ApiError(status, readable(status, describe(body, status), reason, retryAfter), reason, retryAfter);
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
  throw apiError(response.status, body, response.headers.get('Retry-After'));
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

/** POST a file as multipart `file` (into collectionId, else the personal collection); onProgress(fraction)
 *  while the bytes go up. Resolves the document. */
export function uploadFile(file, onProgress, collectionId = '') {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', collectionId ? `/api/upload/?collection_id=${encodeURIComponent(collectionId)}` : '/api/upload/');
    xhr.setRequestHeader('Authorization', `Bearer ${getToken()}`);
    xhr.responseType = 'json';
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) { resolve(xhr.response); return; }
      if (xhr.status === 401) onUnauthorized();
      reject(apiError(xhr.status, xhr.response, xhr.getResponseHeader('Retry-After')));
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

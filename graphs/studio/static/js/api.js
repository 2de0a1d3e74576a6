// Every call the studio makes goes through the gateway's public API with the user's key.
// The key lives in sessionStorage (this tab only): never in a URL, a cookie or localStorage.
const KEY = 'photostudio.apiKey';
// The gateway's root: the studio is served at <root>/studio/ (the root may have a prefix).
export const ROOT = new URL('../', new URL('.', location.href));

export const getKey = () => sessionStorage.getItem(KEY) || '';
export const setKey = (key) => sessionStorage.setItem(KEY, key.trim());
export const clearKey = () => sessionStorage.removeItem(KEY);

export class ApiError extends Error {
  constructor(status, error, retryAfter) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.type = error.type || null;
    this.param = error.param || null;
    this.code = error.code || null;
    this.retryAfter = retryAfter ? Number.parseInt(retryAfter, 10) || null : null;
  }
}

export const apiUrl = (path) => new URL(path.replace(/^\//, ''), ROOT).toString();

function request(path, { method = 'GET', json, form, signal, headers = {} } = {}) {
  const h = { ...headers };
  const key = getKey();
  if (key) h.Authorization = `Bearer ${key}`;
  let body;
  if (json !== undefined) {
    h['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  } else if (form) {
    body = form;
  }
  return fetch(apiUrl(path), { method, headers: h, body, signal });
}

async function toError(res) {
  let error = { message: `the gateway answered HTTP ${res.status}` };
  try {
    const body = await res.json();
    if (body && body.error) error = body.error;
  } catch { /* not JSON (a proxy's page): keep the status */ }
  return new ApiError(res.status, error, res.headers.get('Retry-After'));
}

export async function api(path, options = {}) {
  const res = await request(path, options);
  if (!res.ok) throw await toError(res);
  const type = res.headers.get('content-type') || '';
  return type.includes('json') ? res.json() : res;
}

// Server-Sent Events over fetch (EventSource cannot send the Authorization header).
export async function* sse(path, options = {}) {
  const res = await request(path, { ...options, headers: { Accept: 'text/event-stream', ...(options.headers || {}) } });
  if (!res.ok) throw await toError(res);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n/g, '\n');
    let cut;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const chunk = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = 'message';
      const data = [];
      for (const line of chunk.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (!data.length) continue; // a ping (comment)
      let parsed = data.join('\n');
      try { parsed = JSON.parse(parsed); } catch { /* plain text */ }
      yield { event, data: parsed };
    }
  }
}

// What this gateway serves: pages whose API is missing show "not available".
let caps = null;
// `readiness` (what /readyz checks) comes as data: a gateway still warming up is a state
// shown in the banner, not a failed request.
export async function capabilities(force = false) {
  if (!caps || force) caps = await api('/v1/capabilities?readiness=true');
  return caps;
}
export function hasEndpoint(pattern) {
  if (!caps) return false;
  const re = new RegExp(`^${pattern.replace(/\{[^}]+\}/g, '\\{[^}]+\\}')}$`);
  return caps.endpoints.some((e) => re.test(e));
}

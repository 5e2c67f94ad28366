// The daemon's API as the browser calls it: one function per route of the paracloud-api crate
// that the dashboard uses, and nothing else in the page writes a path. The session is the
// HttpOnly cookie `POST /v1/session` sets; a 401 anywhere sends the page back to its login.

const enc = encodeURIComponent;

export class ApiError extends Error {
  constructor(status, body) {
    const message = body && typeof body === 'object' && body.error ? body.error
      : typeof body === 'string' && body ? body : `the daemon answered ${status}`;
    super(message);
    this.status = status;
    this.diagnostics = (body && body.diagnostics) || [];
  }
}

async function call(method, path, body, signal) {
  const init = { method, credentials: 'same-origin', signal, headers: {} };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    // A read cut by a change of the machine's network (an instance's interface coming or going
    // makes Chromium drop connections under way) is sent once more; a command is not.
    if (method !== 'GET' || e.name === 'AbortError') throw e;
    await new Promise((resolve) => setTimeout(resolve, 300));
    res = await fetch(path, init);
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (res.status === 401) window.dispatchEvent(new CustomEvent('paracloud:unauthorized'));
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

// A request whose answer is read as it comes (a stream): the answer, once it says success; a
// refusal is an ApiError, as `call` makes it.
async function stream(path, init) {
  const res = await fetch(path, { ...init, credentials: 'same-origin' });
  if (!res.ok) {
    const text = await res.text();
    let data = text;
    try { data = JSON.parse(text); } catch { /* plain text */ }
    if (res.status === 401) window.dispatchEvent(new CustomEvent('paracloud:unauthorized'));
    throw new ApiError(res.status, data);
  }
  return res;
}

export const whoami = () => call('GET', '/v1/whoami');
export const login = (token) => call('POST', '/v1/session', { token });
export const logout = () => call('DELETE', '/v1/session');
export const apps = () => call('GET', '/v1/apps');
export const app = (name) => call('GET', `/v1/apps/${enc(name)}`);
export const events = (name, after, limit) =>
  call('GET', `/v1/events?app=${enc(name)}&after=${after}&limit=${limit}`);
export const scale = (name, service, replicas) =>
  call('PUT', `/v1/apps/${enc(name)}/services/${enc(service)}/replicas`, { replicas });
export const setCpu = (name, service, cpu) =>
  call('PUT', `/v1/apps/${enc(name)}/services/${enc(service)}/cpu`, { cpu });
export const setTraffic = (name, service, weights) =>
  call('PUT', `/v1/apps/${enc(name)}/services/${enc(service)}/traffic`, { weights });
export const migrate = (name, instance) =>
  call('POST', `/v1/apps/${enc(name)}/instances/${enc(instance)}/migrate`, {});
export const images = () => call('GET', '/v1/images');
export const restart = (name, service) =>
  call('POST', `/v1/apps/${enc(name)}/services/${enc(service)}/restart`);
export const manifest = (name) => call('GET', `/v1/apps/${enc(name)}/manifest`);
export const up = (source, origin, baseDir, dryRun) =>
  call('POST', '/v1/apps', { source, origin, base_dir: baseDir, dry_run: dryRun });
export const capsules = (name) => call('GET', `/v1/capsules?app=${enc(name)}`);
export const batches = (name) => call('GET', `/v1/apps/${enc(name)}/batches`);
export const batch = (name, id) => call('GET', `/v1/apps/${enc(name)}/batches/${enc(id)}`);
export const cancelBatch = (name, id) => call('DELETE', `/v1/apps/${enc(name)}/batches/${enc(id)}`);
export const capsuleHistory = (name, limit) =>
  call('GET', `/v1/capsules/history?app=${enc(name)}&limit=${limit}`);

export const capsuleFile = (run, instance, name) =>
  `/v1/capsules/runs/${run}/files/${enc(instance)}/${enc(name)}`;

// `POST /v1/capsules/run`: the run's events (JSON lines) handed to `onEvent` as they come.
export async function runCapsule(request, onEvent, signal) {
  const res = await stream('/v1/capsules/run', {
    method: 'POST', signal,
    headers: { 'content-type': 'application/json' }, body: JSON.stringify(request),
  });
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let pending = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pending += decoder.decode(value, { stream: true });
    const lines = pending.split('\n');
    pending = lines.pop();
    for (const line of lines) if (line.trim()) onEvent(JSON.parse(line));
  }
  if (pending.trim()) onEvent(JSON.parse(pending));
}

// `GET /v1/capsules/debug/terminal`: `paracloud debug`'s session as a WebSocket (first a text
// message `{"run": ID}`, then the terminal's bytes both ways).
export function debugTerminal(name, instance, rows, cols) {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const socket = new WebSocket(`${scheme}://${location.host}/v1/capsules/debug/terminal?app=${enc(name)}&instance=${enc(instance)}&rows=${rows}&cols=${cols}`);
  socket.binaryType = 'arraybuffer';
  return socket;
}

// `GET /v1/apps/{app}/live`: server-sent events (`history`, then `second` and `events`).
export const live = (name) => new EventSource(`/v1/apps/${enc(name)}/live`);

// `GET /v1/apps/{app}/logs`: the last `tail` lines of one instance, then, following, each line
// as it comes; `onText` gets the text as it arrives. Ends when `signal` aborts.
export async function logs(name, target, tail, follow, onText, signal) {
  const path = `/v1/apps/${enc(name)}/logs?target=${enc(target)}&tail=${tail}&follow=${follow}`;
  const res = await stream(path, { signal });
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    onText(decoder.decode(value, { stream: true }));
  }
}

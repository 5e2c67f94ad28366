// The dashboard: a login, the applications, and per application its services and instances,
// live charts (server-sent events), controls, events and the manifest. Views are routed by the
// URL's fragment: #/ (applications), #/apps/NAME, #/apps/NAME/instances/INSTANCE.

import * as api from './api.js';
import { Chart, clock, format } from './chart.js';

const $ = (selector, root = document) => root.querySelector(selector);
const main = $('#main');
const tip = $('#tip');

// Builds an element: h('div', { class: 'x', onclick: f }, child, 'text', ...).
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function notice(text, kind = 'error') {
  const el = $('#notice');
  el.textContent = text;
  el.className = text ? kind : '';
  el.hidden = !text;
}

// A notice that outlives the change of view it announces (a migration's, shown on the
// successor's page).
let carried = null;

// What the current view holds open (the live stream, a log tail), closed when it changes.
let closeView = () => {};

// --- Login -----------------------------------------------------------------------------------

let who = null;

async function start() {
  window.addEventListener('paracloud:unauthorized', () => { if (who) { who = null; showLogin(); } });
  window.addEventListener('hashchange', route);
  $('#logout').addEventListener('click', async () => {
    try { await api.logout(); } catch { /* the cookie is gone either way */ }
    who = null;
    showLogin();
  });
  try {
    who = await api.whoami();
  } catch (e) {
    // 404: a daemon without remote access answers its own machine's users alone.
    if (e.status === 404) who = { name: 'local', role: 'admin' };
    else if (e.status === 401) return showLogin();
    else return fatal(e);
  }
  showWho();
  route();
}

function showWho() {
  $('#who').textContent = who ? `${who.name} (${who.role})` : '';
  $('#logout').hidden = !who || who.name === 'local';
}

function showLogin() {
  closeView();
  closeView = () => {};
  showWho();
  $('#crumbs').replaceChildren();
  const input = h('input', { id: 'token', type: 'password', autocomplete: 'current-password',
    placeholder: 'pct_…', required: true, size: 48 });
  const error = h('p', { id: 'login-error', class: 'error', hidden: true });
  const form = h('form', { id: 'login', class: 'card login', onsubmit: async (e) => {
    e.preventDefault();
    error.hidden = true;
    try {
      who = await api.login(input.value.trim());
      input.value = '';
      showWho();
      route();
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    }
  } },
  h('h1', {}, 'Log in'),
  h('p', { class: 'muted' }, 'A token of this daemon, as ',
    h('code', {}, 'paracloud token create NAME --role viewer|operator|admin'), ' printed it.'),
  h('label', { for: 'token' }, 'Token'), input,
  h('button', { type: 'submit', id: 'login-button' }, 'Log in'), error);
  main.replaceChildren(form);
  input.focus();
}

function fatal(e) {
  main.replaceChildren(h('p', { class: 'error' }, e.message || String(e)));
}

// --- Routing ---------------------------------------------------------------------------------

function route() {
  if (!who) return showLogin();
  closeView();
  closeView = () => {};
  notice(...(carried || ['']));
  carried = null;
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  if (parts[0] === 'images') {
    imagesView();
  } else if (parts[0] === 'apps' && parts[1] && parts[2] === 'capsules') {
    capsulesView(parts[1]);
  } else if (parts[0] === 'apps' && parts[1] && parts[2] === 'batches') {
    batchesView(parts[1], parts[3]);
  } else if (parts[0] === 'apps' && parts[1] && parts[2] === 'instances' && parts[3]) {
    instanceView(parts[1], parts[3]);
  } else if (parts[0] === 'apps' && parts[1]) {
    appView(parts[1]);
  } else {
    appsView();
  }
}

function crumbs(...links) {
  $('#crumbs').replaceChildren(...links.flatMap(([text, href]) =>
    [h('span', { class: 'sep' }, '/'), href ? h('a', { href }, text) : h('span', {}, text)]));
}

const appHref = (app) => `#/apps/${encodeURIComponent(app)}`;
const instanceHref = (app, instance) =>
  `${appHref(app)}/instances/${encodeURIComponent(instance)}`;

// --- Applications ----------------------------------------------------------------------------

async function appsView() {
  crumbs(['Applications']);
  let apps;
  try { apps = await api.apps(); } catch (e) { return fatal(e); }
  if (!apps.length) {
    main.replaceChildren(h('p', { class: 'muted' }, 'No application yet: ', h('code', {}, 'paracloud up'), ' deploys one.'));
    return;
  }
  main.replaceChildren(h('section', { class: 'card' }, h('h1', {}, 'Applications'),
    h('table', { id: 'apps' },
      h('thead', {}, h('tr', {}, ['Application', 'Services', 'Instances ready', 'Network', 'Manifest'].map((t) => h('th', {}, t)))),
      h('tbody', {}, apps.map((a) => {
        const wanted = a.services.reduce((n, s) => n + s.replicas, 0);
        const ready = a.services.reduce((n, s) => n + s.ready, 0);
        return h('tr', { 'data-app': a.name },
          h('td', {}, h('a', { href: appHref(a.name) }, a.name), a.removing ? h('span', { class: 'badge bad' }, 'removing') : ''),
          h('td', {}, a.services.map((s) => s.name).join(', ')),
          h('td', {}, `${ready} / ${wanted}`),
          h('td', {}, a.subnet),
          h('td', { class: 'muted', title: a.origin }, shortPath(a.origin)));
      })))));
}

// --- One application -------------------------------------------------------------------------

const STATE_CLASS = { running: 'ok', starting: 'wait', unready: 'wait', stopping: 'wait',
  unhealthy: 'bad', exited: 'bad', failed: 'bad', 'oom-killed': 'bad' };

const SERIES_COLORS = ['#1d4ed8', '#c2410c', '#7c3aed', '#059669'];

async function appView(name) {
  crumbs(['Applications', '#/'], [name]);
  let view;
  try { view = await api.app(name); } catch (e) { return fatal(e); }

  const state = { view, seconds: [], events: [], slo: null, service: null, latest: null };
  state.service = (view.services.find((s) => s.published.length) || view.services[0] || {}).name;

  const servicesBody = h('tbody');
  const serviceSelect = h('select', { id: 'chart-service', onchange: () => { state.service = serviceSelect.value; drawCharts(); } });
  const canvases = {
    arrivals: h('canvas', { id: 'chart-arrivals' }),
    latency: h('canvas', { id: 'chart-latency' }),
    instances: h('canvas', { id: 'chart-instances' }),
    cpu: h('canvas', { id: 'chart-cpu' }),
  };
  const charts = {
    arrivals: new Chart(canvases.arrivals, { unit: 'requests/s', tip, series: [
      { name: 'arrivals', color: SERIES_COLORS[0], value: (s) => svc(s)?.arrivals },
      { name: 'errors', color: '#dc2626', value: (s) => svc(s)?.errors },
    ] }),
    latency: new Chart(canvases.latency, { unit: 'ms', digits: 1, tip, series: [
      { name: 'p50', color: '#059669', value: (s) => svc(s)?.p50_ms },
      { name: 'p95', color: SERIES_COLORS[0], value: (s) => svc(s)?.p95_ms },
      { name: 'p99', color: '#7c3aed', value: (s) => svc(s)?.p99_ms },
    ] }),
    instances: new Chart(canvases.instances, { unit: 'instances', whole: true, tip, series: [
      { name: 'instances', color: SERIES_COLORS[0], value: (s) => svc(s)?.instances },
      { name: 'ready', color: '#059669', value: (s) => svc(s)?.ready },
    ] }),
    cpu: new Chart(canvases.cpu, { unit: 'cores per instance', digits: 2, tip, series: [
      { name: 'cpu', color: SERIES_COLORS[1], value: (s) => svc(s)?.cpu_per_instance },
    ] }),
  };
  const svc = (second) => second.services[state.service];
  const eventsList = h('ol', { id: 'events', class: 'events' });
  const graph = h('div', { id: 'calls', class: 'calls' });
  const editor = manifestEditor(name);

  main.replaceChildren(
    h('section', { class: 'card' },
      h('div', { class: 'row' },
        h('h1', {}, name, h('span', { class: 'muted small', title: view.origin }, ` ${view.subnet} · ${shortPath(view.origin)}`)),
        h('span', {},
          h('a', { class: 'button secondary', id: 'batches-link', href: `${appHref(name)}/batches` }, 'Batches'), ' ',
          h('a', { class: 'button secondary', id: 'capsules-link', href: `${appHref(name)}/capsules` }, 'Capsules'))),
      h('table', { id: 'services' },
        h('thead', {}, h('tr', {}, ['Service', 'Instances', 'Ready', 'CPU limit', 'CPU used', 'Memory', 'Requests/s', 'p95', 'Errors/s', 'Controls'].map((t) => h('th', {}, t)))),
        servicesBody)),
    h('section', { class: 'card' },
      h('div', { class: 'row' }, h('h2', {}, 'Live'), h('label', { for: 'chart-service' }, 'Service '), serviceSelect,
        h('span', { id: 'live-state', class: 'muted small' }, 'connecting…')),
      h('div', { class: 'charts' },
        h('figure', {}, h('figcaption', {}, 'Arrivals and errors'), canvases.arrivals),
        h('figure', {}, h('figcaption', {}, 'Latency p50 / p95 / p99'), canvases.latency),
        h('figure', {}, h('figcaption', {}, 'Instances'), canvases.instances),
        h('figure', {}, h('figcaption', {}, 'CPU per instance'), canvases.cpu))),
    h('section', { class: 'card' }, h('h2', {}, 'Calls between services'),
      h('p', { class: 'muted small' }, 'Requests per second over the last ten seconds, as the data plane saw them.'), graph),
    h('div', { class: 'columns' },
      h('section', { class: 'card' }, h('h2', {}, 'Events'), eventsList),
      editor.element));

  // The rows are built anew when the application changes; what a person has typed into a
  // row's inputs, and where the cursor is, stays as it was.
  function renderServices() {
    serviceSelect.replaceChildren(...state.view.services.map((s) =>
      h('option', { value: s.name, selected: s.name === state.service }, s.name)));
    const typed = new Map();
    for (const input of servicesBody.querySelectorAll('input[id]')) {
      if (input.value !== input.defaultValue) typed.set(input.id, input.value);
    }
    const focused = servicesBody.contains(document.activeElement) ? document.activeElement.id : null;
    servicesBody.replaceChildren(...state.view.services.map((s) => serviceRow(name, s, state, reload)));
    for (const [id, value] of typed) {
      const input = document.getElementById(id);
      if (input) input.value = value;
    }
    if (focused) document.getElementById(focused)?.focus();
    updateFigures();
  }

  function updateFigures() {
    const latest = state.latest;
    for (const s of state.view.services) {
      const row = servicesBody.querySelector(`tr[data-service="${CSS.escape(s.name)}"]`);
      if (!row) continue;
      const live = latest && latest.services[s.name];
      const cell = (field, text) => { row.querySelector(`[data-field="${field}"]`).textContent = text; };
      cell('cpu-used', live ? `${format(live.cpu_per_instance, 2)} / instance` : '–');
      cell('memory', live ? bytes(live.memory_bytes) : '–');
      cell('rps', live ? String(live.arrivals) : '–');
      cell('p95', live && live.arrivals ? `${format(live.p95_ms, 1)} ms` : '–');
      cell('errors', live ? String(live.errors) : '–');
      for (const chip of row.querySelectorAll('[data-instance]')) {
        const one = live && live.by_instance[chip.dataset.instance];
        chip.title = one ? `cpu ${format(one.cpu, 2)} · memory ${bytes(one.memory_bytes)} · ${one.completions} answered/s` : '';
      }
    }
  }

  function drawCalls() {
    callGraph(graph, state.view.services.map((s) => s.name), state.seconds.slice(-10));
  }

  function drawCharts() {
    const markers = state.events
      .filter((e) => e.subject === state.service && isDecision(e.message))
      .map((e) => ({ at: e.at, text: `${e.subject}: ${e.message}`, color: e.message.startsWith('autoscaler') ? '#c2410c' : '#475569' }));
    const slo = state.slo ? [{ value: state.slo.ms, label: `SLO p${Math.round(state.slo.percentile * 100)} ${state.slo.ms} ms`, color: '#dc2626' }] : [];
    charts.arrivals.set(state.seconds, markers);
    charts.latency.set(state.seconds, markers, slo);
    charts.instances.set(state.seconds, markers);
    charts.cpu.set(state.seconds, markers);
  }

  function renderEvents() {
    eventsList.replaceChildren(...state.events.slice(-80).reverse().map((e) =>
      h('li', { class: isDecision(e.message) ? 'decision' : '' },
        h('time', {}, clock(e.at)), ' ', h('b', {}, e.subject), ' ', e.message)));
  }

  // The view's application again: after a control, or when the live figures or the events say
  // its instances changed. Asked for while a read is under way, it reads once more after it, so
  // that what a control changed is always shown.
  let reloading = null;
  let again = false;
  async function reload() {
    if (reloading) { again = true; return reloading; }
    reloading = (async () => {
      do {
        again = false;
        try {
          const view = await api.app(name);
          if (JSON.stringify(view) !== JSON.stringify(state.view)) {
            state.view = view;
            renderServices();
          }
        } catch (e) {
          notice(e.message);
        }
      } while (again);
    })();
    try { await reloading; } finally { reloading = null; }
  }

  renderServices();
  const source = api.live(name);
  const liveState = $('#live-state');
  source.addEventListener('history', (e) => {
    const history = JSON.parse(e.data);
    state.seconds = history.seconds;
    state.events = history.events;
    state.slo = history.slo_ms ? { ms: history.slo_ms, percentile: history.slo_percentile } : null;
    state.latest = state.seconds[state.seconds.length - 1] || null;
    liveState.textContent = 'live';
    updateFigures();
    renderEvents();
    drawCharts();
    drawCalls();
  });
  source.addEventListener('second', (e) => {
    const second = JSON.parse(e.data);
    state.seconds.push(second);
    if (state.seconds.length > 600) state.seconds.shift();
    state.latest = second;
    updateFigures();
    drawCharts();
    drawCalls();
    const changed = state.view.services.some((s) => {
      const live = second.services[s.name];
      return live && (live.ready !== s.ready || live.instances !== s.instances.filter((i) => i.state !== 'exited').length);
    });
    if (changed) reload();
  });
  source.addEventListener('events', (e) => {
    state.events.push(...JSON.parse(e.data));
    if (state.events.length > 400) state.events.splice(0, state.events.length - 400);
    renderEvents();
    drawCharts();
    reload();
  });
  source.onerror = () => { liveState.textContent = 'reconnecting…'; };
  source.onopen = () => { liveState.textContent = 'live'; };
  const resize = () => drawCharts();
  window.addEventListener('resize', resize);
  closeView = () => { source.close(); window.removeEventListener('resize', resize); editor.close(); };
}

function isDecision(message) {
  return message.startsWith('autoscaler ') || message.startsWith('scaled to') || message.startsWith('cpu per instance');
}

function serviceRow(app, s, state, reload) {
  const input = h('input', { type: 'number', min: 0, value: s.replicas, class: 'replicas', 'aria-label': `instances of ${s.name}`, id: `scale-${s.name}` });
  const cpuInput = h('input', { type: 'number', min: 0.01, step: 0.05, value: s.cpu ?? '', placeholder: 'cores', class: 'replicas', 'aria-label': `CPU per instance of ${s.name}`, id: `cpu-${s.name}` });
  const act = async (what, run) => {
    notice('');
    try {
      await run();
      notice(`${s.name}: ${what}`, 'ok');
      await reload();
    } catch (e) {
      notice(`${s.name}: ${e.message}`);
    }
  };
  const live = s.instances.filter((i) => i.state !== 'exited' || s.instances.length <= s.replicas);
  return h('tr', { 'data-service': s.name },
    h('td', {}, h('b', {}, s.name), s.published.length ? h('div', { class: 'muted small' }, s.published.join(', ')) : ''),
    h('td', { class: 'instances' }, live.length ? live.map((i) =>
      h('a', { class: `chip ${STATE_CLASS[i.state] || ''}`, href: instanceHref(app, i.instance), 'data-instance': i.instance, 'data-state': i.state },
        i.instance, ' ', h('span', { class: 'state' }, i.state), i.restarts ? h('span', { class: 'restarts' }, ` ↻${i.restarts}`) : ''))
      : h('span', { class: 'muted' }, 'none'),
    s.waiting.length ? h('div', { class: 'muted small' }, s.waiting.join('; ')) : ''),
    h('td', { 'data-field': 'ready' }, `${s.ready} / ${s.replicas}`),
    h('td', {}, s.cpu === null || s.cpu === undefined ? 'unlimited' : `${s.cpu} core${s.cpu === 1 ? '' : 's'}`),
    h('td', { 'data-field': 'cpu-used' }, '–'),
    h('td', { 'data-field': 'memory' }, '–'),
    h('td', { 'data-field': 'rps' }, '–'),
    h('td', { 'data-field': 'p95' }, '–'),
    h('td', { 'data-field': 'errors' }, '–'),
    h('td', { class: 'controls' },
      input,
      h('button', { type: 'button', id: `scale-button-${s.name}`, onclick: () => {
        const replicas = Number(input.value);
        if (!Number.isInteger(replicas) || replicas < 0) return notice(`${s.name}: the number of instances is a whole number, 0 or more`);
        act(`scaled to ${replicas}`, () => api.scale(app, s.name, replicas));
      } }, 'Scale'),
      h('button', { type: 'button', class: 'secondary', id: `restart-${s.name}`, onclick: () =>
        act('restarting, one instance at a time', () => api.restart(app, s.name)) }, 'Restart'),
      trafficControl(app, s, act),
      h('div', { class: 'cpu-control' },
        cpuInput,
        h('button', { type: 'button', class: 'secondary', id: `cpu-button-${s.name}`, onclick: () => {
          const cpu = Number(cpuInput.value);
          if (!(cpu > 0)) return notice(`${s.name}: CPU per instance is a number of cores above 0, such as 0.5`);
          act(`CPU per instance set to ${cpu}`, () => api.setCpu(app, s.name, cpu));
        } }, 'Set CPU'))));
}

// A manifest's file as its last two path parts (`shop/paracloud.toml`); the whole on hover.
function shortPath(path) {
  return path.split('/').filter(Boolean).slice(-2).join('/');
}

// The traffic split of a service with revisions beside it: each revision's share, set as
// `paracloud traffic SERVICE REVISION=PERCENT` sets it (the service keeps what is left).
function trafficControl(app, s, act) {
  const revisions = (s.traffic || []).filter((t) => t.revision);
  if (!revisions.length) return '';
  const own = s.traffic.find((t) => !t.revision);
  const inputs = revisions.map((t) => h('input', { type: 'number', min: 0, max: 100, value: t.weight, class: 'replicas',
    id: `traffic-${s.name}-${t.revision}`, 'data-revision': t.revision, 'aria-label': `share of ${t.revision} in percent` }));
  return h('div', { class: 'traffic-control', 'data-traffic': s.traffic.map((t) => `${t.revision || s.name}=${t.weight}`).join(',') },
    h('span', { class: 'muted small' }, `${s.name} ${own ? own.weight : 0}% · `),
    revisions.map((t, i) => [h('label', { class: 'small', for: inputs[i].id }, `${t.revision} `), inputs[i], h('span', { class: 'small' }, '% ')]),
    h('button', { type: 'button', class: 'secondary', id: `traffic-button-${s.name}`, onclick: () => {
      const weights = {};
      for (const input of inputs) {
        const share = Number(input.value);
        if (!Number.isInteger(share) || share < 0 || share > 100) return notice(`${s.name}: a share is a whole percent from 0 to 100`);
        weights[input.dataset.revision] = share;
      }
      act(`traffic set to ${Object.entries(weights).map(([r, w]) => `${r} ${w}%`).join(', ')}`, () => api.setTraffic(app, s.name, weights));
    } }, 'Set shares'));
}

function bytes(n) {
  if (!n) return '0';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// --- The manifest ----------------------------------------------------------------------------

// The manifest's text, checked as it is typed (`up`'s dry run: every check, nothing written),
// its problems listed at their line and column, and deployed on demand.
function manifestEditor(app) {
  const text = h('textarea', { id: 'manifest', spellcheck: 'false', wrap: 'off', rows: 24 });
  const gutter = h('pre', { class: 'gutter', 'aria-hidden': 'true' });
  const problems = h('ul', { id: 'diagnostics', class: 'diagnostics' });
  const status = h('span', { id: 'manifest-status', class: 'muted small' }, 'loading…');
  const deploy = h('button', { type: 'button', id: 'deploy', disabled: true }, 'Deploy');
  let loaded = null;
  let timer = null;
  let checking = null;
  let bad = new Set();

  const numbers = () => {
    const lines = text.value.split('\n').length;
    gutter.replaceChildren(...Array.from({ length: lines }, (_, i) =>
      h('span', { class: bad.has(i + 1) ? 'bad' : '' }, `${i + 1}\n`)));
    gutter.scrollTop = text.scrollTop;
  };

  const check = async () => {
    if (!loaded) return;
    const source = text.value;
    const mine = {};
    checking = mine;
    status.textContent = 'checking…';
    try {
      await api.up(source, loaded.origin, loaded.base_dir, true);
      if (checking !== mine) return;
      bad = new Set();
      problems.replaceChildren();
      status.textContent = source === loaded.source ? 'valid · as deployed' : 'valid · not deployed yet';
      deploy.disabled = source === loaded.source;
    } catch (e) {
      if (checking !== mine) return;
      const located = e.diagnostics || [];
      bad = new Set(located.map((d) => d.line));
      problems.replaceChildren(...(located.length ? located.map((d) =>
        h('li', { class: 'error', 'data-line': d.line, 'data-column': d.column, onclick: () => select(d.line, d.column) },
          h('b', {}, `line ${d.line}, column ${d.column}`), d.field ? ` ${d.field}: ` : ': ', d.message,
          d.hint ? h('div', { class: 'hint' }, d.hint) : ''))
        : [h('li', { class: 'error' }, e.message)]));
      status.textContent = located.length ? `${located.length} problem${located.length > 1 ? 's' : ''}` : 'refused';
      deploy.disabled = true;
    }
    numbers();
  };

  const select = (line, column) => {
    const lines = text.value.split('\n');
    let at = 0;
    for (let i = 0; i < line - 1 && i < lines.length; i++) at += lines[i].length + 1;
    at += Math.max(0, column - 1);
    text.focus();
    text.setSelectionRange(at, at + 1);
  };

  text.addEventListener('input', () => {
    numbers();
    clearTimeout(timer);
    timer = setTimeout(check, 300);
  });
  text.addEventListener('scroll', () => { gutter.scrollTop = text.scrollTop; });
  deploy.addEventListener('click', async () => {
    deploy.disabled = true;
    status.textContent = 'deploying…';
    try {
      const answer = await api.up(text.value, loaded.origin, loaded.base_dir, false);
      loaded = { ...loaded, source: text.value };
      status.textContent = answer.changed.length ? `deployed: ${answer.changed.join(', ')} being replaced` : 'deployed';
      notice(`${app}: deployed`, 'ok');
    } catch (e) {
      status.textContent = 'refused';
      notice(`${app}: ${e.message}`);
      deploy.disabled = false;
    }
  });

  api.manifest(app).then((m) => {
    loaded = m;
    text.value = m.source;
    status.textContent = shortPath(m.origin);
    status.title = m.origin;
    numbers();
  }, (e) => { status.textContent = e.message; });

  const element = h('section', { class: 'card manifest' },
    h('div', { class: 'row' }, h('h2', {}, 'Manifest'), status, deploy),
    h('div', { class: 'editor' }, gutter, text), problems);
  return { element, close: () => clearTimeout(timer) };
}

// --- One instance ----------------------------------------------------------------------------

async function instanceView(app, instance) {
  crumbs(['Applications', '#/'], [app, appHref(app)], [instance]);
  let view;
  try { view = await api.app(app); } catch (e) { return fatal(e); }
  const service = view.services.find((s) => s.instances.some((i) => i.instance === instance));
  const one = service && service.instances.find((i) => i.instance === instance);
  if (!one) return fatal(new Error(`${app} has no instance ${instance} now: it may have been replaced`));

  const exit = one.exit ? exitText(one.exit) : '–';
  const facts = [
    ['State', h('span', { class: `chip ${STATE_CLASS[one.state] || ''}`, id: 'instance-state' }, one.state)],
    ['Process', one.pid ?? '–'], ['Address', one.address ?? '–'],
    ['Up for', one.uptime_seconds !== null && one.uptime_seconds !== undefined ? `${one.uptime_seconds} s` : '–'],
    ['Restarts', one.restarts], ['Revision', one.revision], ['Last exit', exit],
    ['Health', one.health_failure ? `failing ${one.health_failure.in_a_row}× in a row: ${one.health_failure.reason}` : 'passing, or no check'],
  ];
  const terminal = debugTerminal(app, instance);
  const search = h('input', { id: 'log-search', type: 'search', placeholder: 'Search the log' });
  const logs = h('pre', { id: 'logs', class: 'logs' });
  const eventsList = h('ol', { id: 'instance-events', class: 'events' });
  const migrate = h('button', { type: 'button', class: 'secondary', id: 'migrate', onclick: async () => {
    migrate.disabled = true;
    notice(`${instance}: moving, make before break…`, 'ok');
    try {
      const moved = await api.migrate(app, instance);
      carried = [`${moved.from} moved to ${moved.to} (${moved.via}) in ${moved.took_ms} ms`, 'ok'];
      location.hash = instanceHref(app, moved.to);
    } catch (e) {
      notice(`${instance}: ${e.message}`);
      migrate.disabled = false;
    }
  } }, 'Migrate');
  main.replaceChildren(
    h('section', { class: 'card' }, h('div', { class: 'row' }, h('h1', {}, instance, h('span', { class: 'muted small' }, ` ${service.name} of ${app}`)), migrate),
      h('dl', { class: 'facts' }, facts.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]))),
    h('div', { class: 'columns' },
      h('section', { class: 'card' }, h('div', { class: 'row' }, h('h2', {}, 'Output'), search), logs),
      h('section', { class: 'card' }, h('h2', {}, 'Events'), eventsList)),
    terminal.element);

  let all = '';
  const render = () => {
    const needle = search.value.toLowerCase();
    const lines = all.split('\n');
    logs.textContent = (needle ? lines.filter((l) => l.toLowerCase().includes(needle)) : lines).slice(-2000).join('\n');
    logs.scrollTop = logs.scrollHeight;
  };
  search.addEventListener('input', render);
  const abort = new AbortController();
  api.logs(app, instance, 200, true, (chunk) => { all += chunk; render(); }, abort.signal)
    .catch((e) => { if (e.name !== 'AbortError') logs.textContent = e.message; });

  const mine = (e) => e.subject === instance || e.message.includes(instance);
  const source = api.live(app);
  let events = [];
  const renderEvents = () => eventsList.replaceChildren(...events.filter(mine).slice(-100).reverse().map((e) =>
    h('li', {}, h('time', {}, clock(e.at)), ' ', h('b', {}, e.subject), ' ', e.message)));
  source.addEventListener('history', (e) => { events = JSON.parse(e.data).events; renderEvents(); });
  source.addEventListener('events', (e) => { events.push(...JSON.parse(e.data)); renderEvents(); });
  closeView = () => { abort.abort(); source.close(); terminal.close(); };
}

// The debug capsule on a terminal in the page: `paracloud debug`'s session over a WebSocket,
// drawn by xterm.js (a terminal emulator: full-screen programs such as `top` draw as they do in
// a terminal). Its script and style are loaded the first time a terminal opens.
let xterm = null;
function loadXterm() {
  if (!xterm) {
    xterm = new Promise((resolve, reject) => {
      const style = h('link', { rel: 'stylesheet', href: '/assets/xterm.css' });
      const script = h('script', { src: '/assets/xterm.js' });
      script.addEventListener('load', () => resolve(window.Terminal));
      script.addEventListener('error', () => { xterm = null; reject(new Error('the terminal could not load')); });
      document.head.append(style, script);
    });
  }
  return xterm;
}

const TERMINAL_ROWS = 30;
const TERMINAL_COLS = 120;

function debugTerminal(app, instance) {
  const screen = h('div', { id: 'terminal', class: 'terminal' });
  const status = h('span', { id: 'terminal-status', class: 'muted small' }, 'closed');
  const interrupt = h('button', { type: 'button', class: 'secondary', id: 'terminal-interrupt', disabled: true }, 'Ctrl-C');
  const open = h('button', { type: 'button', id: 'terminal-open' }, 'Open a debug shell');
  const encoder = new TextEncoder();
  let socket = null;
  let term = null;
  const close = () => { if (socket) socket.close(); };
  open.addEventListener('click', async () => {
    close();
    open.disabled = true;
    status.textContent = 'connecting…';
    let Terminal;
    try { Terminal = await loadXterm(); } catch (e) {
      status.textContent = e.message;
      open.disabled = false;
      return;
    }
    if (term) term.dispose();
    screen.textContent = '';
    delete screen.dataset.run;
    delete screen.dataset.ended;
    term = new Terminal({
      rows: TERMINAL_ROWS, cols: TERMINAL_COLS, cursorBlink: true, scrollback: 5000,
      theme: { background: '#0b1220', foreground: '#e2e8f0', cursor: '#e2e8f0' },
      fontFamily: '"DejaVu Sans Mono", ui-monospace, monospace', fontSize: 13,
    });
    term.open(screen);
    socket = api.debugTerminal(app, instance, TERMINAL_ROWS, TERMINAL_COLS);
    term.onData((data) => { if (socket && socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data)); });
    socket.addEventListener('message', (e) => {
      if (typeof e.data === 'string') {
        const hello = JSON.parse(e.data);
        status.textContent = `open · capsule run ${hello.run}`;
        screen.dataset.run = hello.run;
        interrupt.disabled = false;
        term.focus();
      } else {
        term.write(new Uint8Array(e.data));
      }
    });
    socket.addEventListener('close', () => {
      status.textContent = 'ended';
      screen.dataset.ended = 'true';
      interrupt.disabled = true;
      open.disabled = false;
    });
    socket.addEventListener('error', () => { status.textContent = 'refused: see the capsule history for why'; });
  });
  interrupt.addEventListener('click', () => { if (socket) socket.send(encoder.encode('\x03')); });
  const element = h('section', { class: 'card' },
    h('div', { class: 'row' }, h('h2', {}, 'Debug terminal'), open, interrupt, status),
    h('p', { class: 'muted small' }, 'The debug capsule attached to this instance, as ', h('code', {}, `paracloud debug ${instance}`), ' opens it.'),
    screen);
  return { element, close: () => { close(); if (term) term.dispose(); } };
}

// --- Capsules --------------------------------------------------------------------------------

// Runs a capsule on the instances a selector matches, its output streamed as it comes, and the
// application's recorded runs.
async function capsulesView(app) {
  crumbs(['Applications', '#/'], [app, appHref(app)], ['Capsules']);
  let catalog;
  try { catalog = await api.capsules(app); } catch (e) { return fatal(e); }
  const capsule = h('select', { id: 'capsule' }, catalog.map((c) =>
    h('option', { value: c.name, title: c.description }, `${c.name} (${c.access})`)));
  const selector = h('input', { id: 'capsule-selector', value: `app=${app}`, size: 32 });
  const args = h('input', { id: 'capsule-args', placeholder: 'arguments, space-separated', size: 32 });
  const output = h('pre', { id: 'capsule-output', class: 'logs' });
  const status = h('span', { id: 'capsule-status', class: 'muted small' });
  const about = h('p', { class: 'muted small', id: 'capsule-about' });
  const history = h('tbody');
  const describe = () => {
    const c = catalog.find((x) => x.name === capsule.value);
    about.textContent = c ? `${c.description}${c.usage ? ` · arguments: ${c.usage}` : ''}${c.missing.length ? ` · needs ${c.missing.join(', ')} on this machine` : ''}` : '';
  };
  capsule.addEventListener('change', describe);
  const abort = new AbortController();
  let current = null;
  const run = h('button', { type: 'submit', id: 'capsule-run' }, 'Run');
  const form = h('form', { class: 'row', onsubmit: async (e) => {
    e.preventDefault();
    output.textContent = '';
    run.disabled = true;
    status.textContent = 'running…';
    const write = (text) => { output.textContent += text; output.scrollTop = output.scrollHeight; };
    try {
      await api.runCapsule({ capsule: capsule.value, selector: selector.value.trim(),
        args: args.value.trim() ? args.value.trim().split(/\s+/) : [] }, (event) => {
        if (event.kind === 'started') { current = event.run; write(`run ${event.run} on ${event.targets.join(', ')}\n`); }
        else if (event.kind === 'output') write(event.text.split('\n').map((l, i, all) => (i === all.length - 1 && !l) ? '' : `${event.instance} | ${l}\n`).join(''));
        else if (event.kind === 'exited') {
          write(`${event.instance}: ${event.error ? event.error : `exit code ${event.exit_code}`}${event.timed_out ? ' (deadline passed)' : ''}, ${event.duration_ms} ms\n`);
          for (const f of event.files) {
            output.append(h('a', { href: api.capsuleFile(current, event.instance, f.name), download: f.name }, `${event.instance}: ${f.name} (${bytes(f.size)})`), '\n');
          }
        } else if (event.kind === 'finished') {
          status.textContent = `${event.status} in ${event.duration_ms} ms`;
          output.dataset.status = event.status;
        }
      }, abort.signal);
    } catch (err) {
      if (err.name !== 'AbortError') { status.textContent = 'refused'; write(`${err.message}\n`); output.dataset.status = 'refused'; }
    }
    run.disabled = false;
    loadHistory();
  } }, h('label', { for: 'capsule' }, 'Capsule'), capsule, h('label', { for: 'capsule-selector' }, 'on'), selector, args, run, status);

  const loadHistory = async () => {
    try {
      const runs = await api.capsuleHistory(app, 30);
      history.replaceChildren(...runs.map((r) => h('tr', { 'data-run': r.id },
        h('td', {}, r.id), h('td', {}, clock(r.started)), h('td', {}, r.capsule), h('td', {}, r.selector),
        h('td', {}, r.args.join(' ')), h('td', {}, r.who), h('td', { class: r.status === 'ok' ? '' : 'error' }, r.status),
        h('td', {}, r.duration_ms === null ? '–' : `${r.duration_ms} ms`),
        h('td', {}, r.targets.map((t) => `${t.instance}${t.exit_code === null ? '' : ` (${t.exit_code})`}`).join(', ')),
        h('td', { class: 'muted' }, r.detail))));
    } catch (e) { notice(e.message); }
  };

  main.replaceChildren(
    h('section', { class: 'card' }, h('h1', {}, 'Run a capsule'), form, about, output),
    h('section', { class: 'card' }, h('h2', {}, 'History'),
      h('table', { id: 'capsule-history' },
        h('thead', {}, h('tr', {}, ['Run', 'Started', 'Capsule', 'Selector', 'Arguments', 'By', 'Status', 'Took', 'Instances', 'Detail'].map((t) => h('th', {}, t)))),
        history)));
  describe();
  loadHistory();
  closeView = () => abort.abort();
}

// --- Task farms' batches ---------------------------------------------------------------------

const BATCH_CLASS = { running: 'wait', done: 'ok', cancelled: 'bad', 'budget spent': 'bad' };
const seconds = (ms) => `${(ms / 1000).toFixed(1)} s`;
const instanceMinutes = (ms) => `${(ms / 60000).toFixed(2)} instance-min`;
const goalText = (b) => b.deadline_ms !== null
  ? `deadline ${Math.ceil((b.deadline_ms - b.submitted_ms) / 1000)} s after submit`
  : `budget ${instanceMinutes(b.budget_instance_ms)}`;
const batchHref = (app, id) => `${appHref(app)}/batches/${encodeURIComponent(id)}`;

// The application's batches (`paracloud tasks ls`), or one batch with its tasks (`paracloud
// tasks status`), refreshed every second while shown; a running batch can be cancelled.
async function batchesView(app, id) {
  crumbs(['Applications', '#/'], [app, appHref(app)], ['Batches', id ? `${appHref(app)}/batches` : null], ...(id ? [[id]] : []));
  const body = h('div');
  const load = async () => {
    try {
      if (id) body.replaceChildren(...batchDetail(app, await api.batch(app, id), load));
      else body.replaceChildren(batchList(app, await api.batches(app)));
    } catch (e) { body.replaceChildren(h('p', { class: 'error' }, e.message)); }
  };
  main.replaceChildren(body);
  await load();
  const timer = setInterval(load, 1000);
  closeView = () => clearInterval(timer);
}

function batchList(app, batches) {
  if (!batches.length) {
    return h('section', { class: 'card' }, h('h1', {}, 'Batches'),
      h('p', { class: 'muted' }, 'No batch yet: ', h('code', {}, 'paracloud tasks submit FARM -f tasks.txt --deadline 10m'), ' submits one to a task farm (catalog = "taskfarm").'));
  }
  return h('section', { class: 'card' }, h('h1', {}, 'Batches'),
    h('table', { id: 'batches' },
      h('thead', {}, h('tr', {}, ['Batch', 'Farm', 'State', 'Done', 'Failed', 'Workers', 'Goal', 'Cost'].map((t) => h('th', {}, t)))),
      h('tbody', {}, batches.slice().reverse().map((b) => h('tr', { 'data-batch': b.id, 'data-state': b.state },
        h('td', {}, h('a', { href: batchHref(app, b.id) }, b.id)),
        h('td', {}, b.service),
        h('td', {}, h('span', { class: `badge ${BATCH_CLASS[b.state] || ''}` }, b.state)),
        h('td', {}, `${b.succeeded} / ${b.succeeded + b.failed + b.running + b.pending + b.not_run}`),
        h('td', {}, b.failed),
        h('td', {}, b.workers),
        h('td', {}, goalText(b)),
        h('td', {}, instanceMinutes(b.spent_instance_ms)))))));
}

function batchDetail(app, detail, reload) {
  const b = detail.batch;
  const cancel = h('button', { id: 'batch-cancel', class: 'secondary', onclick: async () => {
    cancel.disabled = true;
    try { await api.cancelBatch(app, b.id); notice(`batch ${b.id} cancelled`, 'ok'); } catch (e) { notice(e.message); }
    reload();
  } }, 'Cancel');
  const took = b.ended_ms !== null ? seconds(b.ended_ms - b.submitted_ms) : '–';
  const summary = h('dl', { id: 'batch-summary', class: 'facts', 'data-state': b.state },
    ...[['State', b.state], ['Goal', goalText(b)], ['Tasks', `${b.succeeded} succeeded, ${b.failed} failed, ${b.running} running, ${b.pending} waiting, ${b.not_run} not run`],
      ['Workers', `${b.workers} now, ${b.peak_workers} at most`], ['Plan', b.plan], ['Cost', instanceMinutes(b.spent_instance_ms)], ['Took', took]]
      .flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  const tasks = h('table', { id: 'tasks' },
    h('thead', {}, h('tr', {}, ['Task', 'State', 'Runs', 'Worker', 'Time', 'Exit', 'Command', 'Output'].map((t) => h('th', {}, t)))),
    h('tbody', {}, detail.tasks.map((t) => {
      const last = t.attempts[t.attempts.length - 1];
      const exit = !last ? '–' : last.code !== null ? String(last.code) : (last.error || '–');
      const output = [t.stdout, t.stderr].filter(Boolean).join('').trim();
      return h('tr', { 'data-task': t.index, 'data-state': t.state },
        h('td', {}, t.index), h('td', {}, t.state), h('td', {}, t.attempts.length),
        h('td', {}, last ? last.worker : '–'),
        h('td', {}, last && last.ended_ms !== null ? seconds(last.ended_ms - last.started_ms) : '–'),
        h('td', { class: last && last.ended_ms !== null && last.code !== 0 ? 'error' : '' }, exit),
        h('td', {}, h('code', {}, t.command)),
        h('td', { class: 'muted small', title: output }, output.split('\n').pop() || ''));
    })));
  return [
    h('section', { class: 'card' },
      h('div', { class: 'row' }, h('h1', {}, `Batch ${b.id} on ${b.service}`), b.state === 'running' ? cancel : ''),
      summary),
    h('section', { class: 'card' }, h('h2', {}, 'Tasks'), tasks),
  ];
}

// --- Images ----------------------------------------------------------------------------------

async function imagesView() {
  crumbs(['Images']);
  let images;
  try { images = await api.images(); } catch (e) { return fatal(e); }
  main.replaceChildren(h('section', { class: 'card' }, h('h1', {}, 'Images'),
    images.length ? h('table', { id: 'images' },
      h('thead', {}, h('tr', {}, ['Image', 'Digest', 'Layers', 'Size', 'Created'].map((t) => h('th', {}, t)))),
      h('tbody', {}, images.map((i) => h('tr', {},
        h('td', {}, i.reference), h('td', { class: 'muted', title: i.digest }, i.digest.slice(0, 19)),
        h('td', {}, i.layers), h('td', {}, bytes(i.size)), h('td', { class: 'muted' }, i.created ?? '–')))))
      : h('p', { class: 'muted' }, 'The store holds no image: ', h('code', {}, 'paracloud image build'), ', ', h('code', {}, 'image pull'), ' or ', h('code', {}, 'image import'), ' add some.')));
}

// --- The call graph --------------------------------------------------------------------------

// Services in columns by their distance from outside (`external`), each call an arrow with its
// requests per second averaged over `seconds`.
function callGraph(root, services, seconds) {
  const rates = new Map();
  for (const second of seconds) {
    for (const c of second.calls || []) {
      const key = `${c.from}\u0000${c.to}`;
      rates.set(key, (rates.get(key) || 0) + c.count / Math.max(1, seconds.length));
    }
  }
  const edges = [...rates].map(([key, rate]) => { const [from, to] = key.split('\u0000'); return { from, to, rate }; });
  const depth = new Map([['external', 0]]);
  for (let round = 0; round < services.length + 1; round++) {
    for (const e of edges) if (depth.has(e.from) && !depth.has(e.to)) depth.set(e.to, depth.get(e.from) + 1);
  }
  const deepest = Math.max(0, ...depth.values());
  for (const s of services) if (!depth.has(s)) depth.set(s, deepest + 1);
  const columns = [];
  for (const [node, d] of depth) (columns[d] ||= []).push(node);
  const W = 150; const H = 34; const GAP_X = 90; const GAP_Y = 22;
  const pos = new Map();
  columns.forEach((nodes, c) => (nodes || []).sort().forEach((node, r) =>
    pos.set(node, { x: 10 + c * (W + GAP_X), y: 10 + r * (H + GAP_Y) })));
  const width = 20 + columns.length * (W + GAP_X) - GAP_X;
  const height = 20 + Math.max(...columns.map((n) => (n || []).length)) * (H + GAP_Y) - GAP_Y;
  const NS = 'http://www.w3.org/2000/svg';
  const el = (tag, attrs, text) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const svg = el('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img' });
  const defs = el('defs', {});
  const marker = el('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' });
  marker.append(el('path', { d: 'M 0 0 L 10 5 L 0 10 z', fill: '#64748b' }));
  defs.append(marker);
  svg.append(defs);
  for (const e of edges) {
    const a = pos.get(e.from); const b = pos.get(e.to);
    if (!a || !b) continue;
    const x1 = a.x + W; const y1 = a.y + H / 2; const x2 = b.x; const y2 = b.y + H / 2;
    svg.append(el('line', { x1, y1, x2, y2, stroke: '#64748b', 'stroke-width': 1.5, 'marker-end': 'url(#arrow)', 'data-call': `${e.from}->${e.to}` }));
    svg.append(el('text', { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 5, 'text-anchor': 'middle', 'font-size': 11, fill: '#334155' }, `${format(e.rate, 1)}/s`));
  }
  for (const [node, p] of pos) {
    const outside = node === 'external';
    svg.append(el('rect', { x: p.x, y: p.y, width: W, height: H, rx: 6, fill: outside ? '#f1f5f9' : '#eff6ff', stroke: outside ? '#94a3b8' : '#1f4e8c' }));
    svg.append(el('text', { x: p.x + W / 2, y: p.y + H / 2 + 4, 'text-anchor': 'middle', 'font-size': 13, fill: '#0f172a' }, outside ? 'outside' : node));
  }
  root.dataset.edges = JSON.stringify(edges.map((e) => `${e.from}->${e.to}`).sort());
  root.replaceChildren(svg);
}

// How a process ended, as `ps` and `describe` tell it.
function exitText(x) {
  const parts = [];
  if (x.error) parts.push(x.error);
  if (x.oom_killed) parts.push('killed for lack of memory');
  if (x.code !== null && x.code !== undefined) parts.push(`exit code ${x.code}`);
  if (x.signal !== null && x.signal !== undefined) parts.push(`signal ${x.signal}`);
  if (x.requested) parts.push(`stopped by the platform (${typeof x.requested === 'string' ? x.requested : JSON.stringify(x.requested)})`);
  parts.push(`after ${format(x.ran_ms / 1000, 1)} s`);
  return parts.join(', ');
}

// Once the page has shown its first view (the login or the view the address names), it says so:
// `data-ready` on the body, which the browser tests wait for.
start().finally(() => { document.body.dataset.ready = 'true'; });

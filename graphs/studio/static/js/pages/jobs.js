// Jobs & monitoring: running/queued/recent jobs with progress, recent errors, per-deployment
// health and replicas' readiness, and requests/s and latency charts from GET /v1/metrics.
import { api, capabilities, hasEndpoint } from '../api.js';
import { clearError, fmtTime, h, lineChart, showError } from '../ui.js';

// Readings of GET /v1/metrics kept while the tab is open (cumulative counters: rates come
// from the difference of two readings).
const readings = [];
const MAX_READINGS = 120;

function totals(m) {
  let requests = 0; let sum = 0; let count = 0; let errors = 0;
  for (const r of m.routes) {
    requests += r.requests; sum += r.latency_sum_s; count += r.latency_count;
    errors += Object.entries(r.statuses).filter(([st]) => Number(st) >= 500).reduce((a, [, n]) => a + n, 0);
  }
  return { time: m.time, requests, sum, count, errors };
}

function series() {
  const rps = []; const latency = [];
  for (let i = 1; i < readings.length; i += 1) {
    const a = readings[i - 1]; const b = readings[i];
    const dt = b.time - a.time;
    if (dt <= 0 || b.requests < a.requests) continue; // a replica restarted: counters reset
    rps.push([b.time, (b.requests - a.requests) / dt]);
    const dn = b.count - a.count;
    latency.push([b.time, dn > 0 ? ((b.sum - a.sum) / dn) * 1000 : 0]);
  }
  return { rps, latency };
}

export async function render(root) {
  const body = h('tbody');
  const errors = h('ul', { id: 'job-errors' });
  const health = h('tbody');
  const charts = h('div', { class: 'cols', id: 'charts' });
  const routesBody = h('tbody', { id: 'route-metrics' });
  const panel = h('section', { class: 'panel', 'aria-labelledby': 'page-title' },
    h('h1', { id: 'page-title' }, 'Jobs & monitoring'),
    h('h2', {}, 'Jobs'),
    h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'Jobs table' }, h('table', {}, h('caption', { class: 'muted' }, 'The 50 newest jobs of your project (refreshes every 3 s)'),
      h('thead', {}, h('tr', {}, ['Job', 'Kind', 'Status', 'Progress', 'Step', 'Created', ''].map((t) => h('th', { scope: 'col' }, t || h('span', { class: 'muted' }, 'Actions'))))), body)),
    h('h2', {}, 'Recent errors'), errors,
    h('h2', {}, 'Deployments'),
    h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'Deployments table' }, h('table', {}, h('thead', {}, h('tr', {}, ['Deployment', 'Health', 'Replicas', 'Model', 'Device'].map((t) => h('th', { scope: 'col' }, t)))), health)),
    h('h2', {}, 'Requests and latency'),
    hasEndpoint('/v1/metrics') ? h('p', { class: 'muted' }, 'From the gateway\'s HTTP metrics (GET /v1/metrics, what Prometheus scrapes), read every 5 s: Ray exports them every few seconds, so the first points take a little while.')
      : h('p', { class: 'muted' }, 'Not available on this gateway: it does not serve GET /v1/metrics.'),
    charts,
    h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'Requests per route' }, h('table', {},
      h('caption', { class: 'muted' }, 'Per route since the ingress replicas started'),
      h('thead', {}, h('tr', {}, ['Route', 'Requests', '5xx', 'Mean latency'].map((t) => h('th', { scope: 'col' }, t)))), routesBody)));
  root.append(panel);

  async function refresh() {
    try {
      const jobs = (await api('/v1/jobs?limit=50')).data;
      body.replaceChildren(...jobs.map((j) => h('tr', { dataset: { job: j.id } },
        h('td', {}, j.id), h('td', {}, j.kind), h('td', { class: j.status === 'failed' ? 'error' : '' }, j.status),
        h('td', {}, h('progress', { max: 1, value: j.progress, 'aria-label': `Progress of ${j.id}` })),
        h('td', {}, j.step || ''), h('td', {}, fmtTime(j.created_at)),
        h('td', {}, ['queued', 'running'].includes(j.status)
          ? h('button', { type: 'button', onclick: async () => { try { await api(`/v1/jobs/${j.id}`, { method: 'DELETE' }); refresh(); } catch (err) { showError(panel, err); } } }, 'Cancel') : ''))));
      const failed = jobs.filter((j) => j.status === 'failed').slice(0, 10);
      errors.replaceChildren(...(failed.length ? failed.map((j) => h('li', {}, `${fmtTime(j.finished_at || j.created_at)} ${j.kind} ${j.id}: `, h('span', { class: 'error' }, j.error || 'failed')))
        : [h('li', { class: 'muted' }, 'No failed jobs among the newest 50.')]));
      clearError(panel);
    } catch (err) { showError(panel, err); }
  }

  async function loadMetrics() {
    if (!hasEndpoint('/v1/metrics')) return;
    try {
      const m = await api('/v1/metrics');
      readings.push(totals(m));
      if (readings.length > MAX_READINGS) readings.shift();
      const { rps, latency } = series();
      charts.replaceChildren(lineChart('chart-rps', 'Requests per second', rps, 'req/s'),
        lineChart('chart-latency', 'Mean latency', latency, 'ms'));
      routesBody.replaceChildren(...m.routes.slice(0, 30).map((r) => h('tr', {},
        h('td', {}, `${r.method} ${r.route}`), h('td', {}, r.requests),
        h('td', {}, Object.entries(r.statuses).filter(([st]) => Number(st) >= 500).reduce((a, [, n]) => a + n, 0)),
        h('td', {}, r.latency_count ? `${((r.latency_sum_s / r.latency_count) * 1000).toFixed(1)} ms` : '—'))));
    } catch (err) { showError(panel, err); }
  }

  async function loadHealth() {
    // readiness as data (GET /v1/capabilities?readiness=true): never a failed request
    const caps = await capabilities(true);
    const statuses = caps.readiness ? caps.readiness.deployments : {};
    // Serve's deployment names (Generator) and the capabilities' keys (generator): one row each
    const seen = new Set(Object.keys(statuses).map((n) => n.toLowerCase()));
    const names = [...Object.keys(statuses), ...Object.keys(caps.deployments).filter((n) => !seen.has(n.toLowerCase()))];
    health.replaceChildren(...names.map((name) => {
      const info = caps.deployments[name] || caps.deployments[name.toLowerCase()] || {};
      const st = statuses[name] || (Object.entries(statuses).find(([k]) => k.toLowerCase() === name.toLowerCase()) || [])[1] || '—';
      const reps = caps.readiness?.replicas?.[name] || {};
      return h('tr', {}, h('td', {}, name), h('td', { class: st === 'HEALTHY' ? 'ok' : '' }, st),
        h('td', {}, Object.entries(reps).map(([k, n]) => `${n} ${k.toLowerCase()}`).join(', ') || '—'), h('td', {}, info.name ? `${info.name}${info.tiny ? ' (tiny)' : ''}${info.fallback ? ' (fallback)' : ''}` : ''), h('td', {}, info.device || ''));
    }));
  }

  await Promise.all([refresh(), loadHealth(), loadMetrics()]);
  const timer = setInterval(refresh, 3000);
  const metricsTimer = setInterval(loadMetrics, 5000);
  return () => { clearInterval(timer); clearInterval(metricsTimer); };
}

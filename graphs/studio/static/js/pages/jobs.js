// Jobs & monitoring: running/queued/recent jobs with progress, recent errors, per-deployment
// health, and charts of job throughput and latency from the jobs the API lists.
import { api, capabilities, hasEndpoint } from '../api.js';
import { clearError, fmtTime, h, showError } from '../ui.js';

function chart(title, points, unit) {
  const w = 300; const hh = 100;
  const max = Math.max(1e-9, ...points.map((p) => p[1]));
  const xs = points.length > 1 ? points.length - 1 : 1;
  const line = points.map(([, v], i) => `${(i / xs) * w},${hh - (v / max) * (hh - 10)}`).join(' ');
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', `0 0 ${w} ${hh}`); svg.setAttribute('class', 'chart'); svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `${title}: ${points.length} points, max ${max.toFixed(2)} ${unit}`);
  svg.innerHTML = `<polyline points="${line}"></polyline><text x="4" y="12">${max.toFixed(2)} ${unit}</text>`;
  return h('figure', {}, svg, h('figcaption', {}, title));
}

export async function render(root) {
  const body = h('tbody');
  const errors = h('ul', { id: 'job-errors' });
  const health = h('tbody');
  const charts = h('div', { class: 'cols', id: 'charts' });
  const panel = h('section', { class: 'panel', 'aria-labelledby': 'page-title' },
    h('h1', { id: 'page-title' }, 'Jobs & monitoring'),
    h('h2', {}, 'Jobs'),
    h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'Jobs table' }, h('table', {}, h('caption', { class: 'muted' }, 'The 50 newest jobs of your project (refreshes every 3 s)'),
      h('thead', {}, h('tr', {}, ['Job', 'Kind', 'Status', 'Progress', 'Step', 'Created', ''].map((t) => h('th', { scope: 'col' }, t || h('span', { class: 'muted' }, 'Actions'))))), body)),
    h('h2', {}, 'Recent errors'), errors,
    h('h2', {}, 'Deployments'),
    h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'Deployments table' }, h('table', {}, h('thead', {}, h('tr', {}, ['Deployment', 'Health', 'Model', 'Device'].map((t) => h('th', { scope: 'col' }, t)))), health)),
    h('p', { class: 'muted' }, hasEndpoint('/v1/usage') ? '' : 'Replica counts and request metrics per route: see the Ray dashboard and /metrics (no public metrics API on this gateway yet).'),
    h('h2', {}, 'Throughput and latency'), charts);
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
      // per minute: jobs finished, and their mean duration (seconds)
      const done = jobs.filter((j) => j.finished_at && j.started_at);
      const byMinute = new Map();
      for (const j of done) {
        const minute = Math.floor(new Date(j.finished_at).getTime() / 60000);
        const secs = (new Date(j.finished_at) - new Date(j.started_at)) / 1000;
        const m = byMinute.get(minute) || { n: 0, total: 0 };
        m.n += 1; m.total += secs; byMinute.set(minute, m);
      }
      const minutes = [...byMinute.keys()].sort();
      charts.replaceChildren(
        chart('Jobs finished per minute', minutes.map((k) => [k, byMinute.get(k).n]), 'jobs/min'),
        chart('Mean job latency per minute', minutes.map((k) => [k, byMinute.get(k).total / byMinute.get(k).n]), 's'));
      clearError(panel);
    } catch (err) { showError(panel, err); }
  }

  async function loadHealth() {
    let statuses = {};
    try { statuses = (await api('/readyz')).deployments; } catch (err) { statuses = { error: err.message }; }
    const caps = await capabilities(true);
    const names = new Set([...Object.keys(statuses), ...Object.keys(caps.deployments)]);
    health.replaceChildren(...[...names].map((name) => {
      const info = caps.deployments[name] || caps.deployments[name.toLowerCase()] || {};
      const st = statuses[name] || (Object.entries(statuses).find(([k]) => k.toLowerCase() === name.toLowerCase()) || [])[1] || '—';
      return h('tr', {}, h('td', {}, name), h('td', { class: st === 'HEALTHY' ? 'ok' : '' }, st), h('td', {}, info.name ? `${info.name}${info.tiny ? ' (tiny)' : ''}${info.fallback ? ' (fallback)' : ''}` : ''), h('td', {}, info.device || ''));
    }));
  }

  await Promise.all([refresh(), loadHealth()]);
  const timer = setInterval(refresh, 3000);
  return () => clearInterval(timer);
}

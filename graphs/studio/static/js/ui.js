// Small DOM helpers shared by the pages (no framework: plain ES modules, no build step).
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') el.addEventListener(name.slice(2), value);
    else if (name === 'dataset') Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(name, '');
    else el.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

let uid = 0;
// A labelled control: <div class=field><label for=id>text</label><control id=id></div>
export function field(labelText, control, hint) {
  if (!control.id) control.id = `f${++uid}`;
  const kids = [h('label', { for: control.id }, labelText), control];
  if (hint) {
    const hintEl = h('div', { class: 'muted', id: `${control.id}-hint` }, hint);
    control.setAttribute('aria-describedby', hintEl.id);
    kids.push(hintEl);
  }
  return h('div', { class: 'field' }, kids);
}

export function select(name, options, value) {
  return h('select', { name, dataset: { param: name } },
    options.map((o) => {
      const [v, text] = Array.isArray(o) ? o : [o, o];
      return h('option', { value: v, selected: String(v) === String(value) }, text);
    }));
}

export function unavailable(title, what) {
  return h('section', { class: 'panel', 'aria-labelledby': 'page-title' },
    h('h1', { id: 'page-title' }, title),
    h('div', { class: 'unavailable', role: 'note' },
      h('p', {}, h('strong', {}, 'Not available on this gateway.')),
      h('p', { class: 'muted' }, `${what} This gateway's /v1/capabilities does not list the API this page needs; it appears here when the gateway serves it.`)));
}

// An API error shown where it happened: message, the offending field (`param`) highlighted,
// and for 429/503 a countdown to Retry-After (the buttons in `disable` wait for it).
export function showError(container, err, { form, disable = [] } = {}) {
  clearError(container, form);
  if (err && err.name === 'AbortError') return;
  const message = err && err.message ? err.message : String(err);
  const box = h('div', { class: 'alert error', role: 'alert' }, h('span', { class: 'message' }, message));
  if (err && err.param) {
    box.append(' ', h('span', {}, '(field ', h('span', { class: 'param' }, err.param), ')'));
    const name = err.param.replace(/^body\./, '').split('.')[0].replace(/\[\]$/, '');
    const target = (form || container).querySelector(`[data-param="${CSS.escape(name)}"], [name="${CSS.escape(name)}"]`);
    if (target) {
      target.classList.add('invalid');
      target.setAttribute('aria-invalid', 'true');
      target.focus();
    }
  }
  if (err && err.retryAfter && (err.status === 429 || err.status === 503)) {
    let left = err.retryAfter;
    const counter = h('span', { class: 'retry' }, ` Retry in ${left} s.`);
    box.append(counter);
    disable.forEach((b) => { b.disabled = true; });
    const timer = setInterval(() => {
      left -= 1;
      counter.textContent = left > 0 ? ` Retry in ${left} s.` : ' You can retry now.';
      if (left <= 0) {
        clearInterval(timer);
        disable.forEach((b) => { b.disabled = false; });
      }
    }, 1000);
  }
  container.append(box);
}

export function clearError(container, form) {
  container.querySelectorAll('.alert').forEach((e) => e.remove());
  (form || container).querySelectorAll('.invalid').forEach((e) => {
    e.classList.remove('invalid');
    e.removeAttribute('aria-invalid');
  });
}

export const dataUrl = (b64, format = 'png') => `data:image/${format};base64,${b64}`;

// Hand an image from one page to another (gallery "send to", chat → tools) in this tab.
const HANDOFF = 'photostudio.handoff';
export function handoff(item) { sessionStorage.setItem(HANDOFF, JSON.stringify(item)); }
export function takeHandoff(page) {
  const raw = sessionStorage.getItem(HANDOFF);
  if (!raw) return null;
  const item = JSON.parse(raw);
  if (item.page !== page) return null;
  sessionStorage.removeItem(HANDOFF);
  return item;
}

export async function urlToFile(url, name = 'image.png') {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`could not load the image (HTTP ${res.status})`);
  const blob = await res.blob();
  return new File([blob], name, { type: blob.type || 'image/png' });
}

export function fmtTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

const SVG = 'http://www.w3.org/2000/svg';
const svgEl = (tag, attrs = {}) => {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
};

// A line chart in plain SVG (Jobs: requests/s and latency over time; Datasets: a training's
// loss per step): `points` are [x, value], the y axis from 0 to the max. `span(x0, x1)` says
// what the x range is (default: seconds); `digits` how the values are written.
export function lineChart(id, title, points, unit, { span = (a, b) => `last ${Math.round(b - a)} s`, digits = 2 } = {}) {
  const w = 320; const hh = 120; const left = 44; const bottom = 18;
  const max = Math.max(1e-9, ...points.map((p) => p[1]));
  const t0 = points.length ? points[0][0] : 0; const t1 = points.length ? points[points.length - 1][0] : 1;
  const x = (t) => left + ((t - t0) / Math.max(1e-9, t1 - t0)) * (w - left - 4);
  const y = (v) => hh - bottom - (v / max) * (hh - bottom - 8);
  const last = points.length ? points[points.length - 1][1] : null;
  const fmt = (v) => v.toFixed(digits);
  const svg = svgEl('svg', { viewBox: `0 0 ${w} ${hh}`, class: 'chart', role: 'img', id, 'data-points': points.length,
    'aria-label': points.length ? `${title}: ${points.length} readings, latest ${fmt(last)}${unit ? ` ${unit}` : ''}, max ${fmt(max)}${unit ? ` ${unit}` : ''}` : `${title}: no readings yet` });
  svg.append(svgEl('line', { x1: left, y1: hh - bottom, x2: w, y2: hh - bottom, class: 'axis' }),
    svgEl('line', { x1: left, y1: 4, x2: left, y2: hh - bottom, class: 'axis' }));
  const label = (tx, ty, text, anchor = 'end') => { const t = svgEl('text', { x: tx, y: ty, 'text-anchor': anchor }); t.textContent = text; return t; };
  svg.append(label(left - 4, 12, max.toFixed(max < 10 ? digits : 0)), label(left - 4, hh - bottom, '0'),
    label(w - 2, hh - 4, points.length > 1 ? span(t0, t1) : 'waiting for readings'));
  if (points.length > 1) svg.append(svgEl('polyline', { points: points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' ') }));
  return h('figure', {}, svg, h('figcaption', {}, `${title}${unit ? ` (${unit})` : ''}${last !== null ? `: ${fmt(last)}` : ''}`));
}

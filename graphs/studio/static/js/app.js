// The studio's shell: key entry, theme, the page router (#/page), capabilities.
import { ApiError, capabilities, clearKey, getKey, setKey } from './api.js';
import { h } from './ui.js';

const PAGES = {
  chat: () => import('./pages/chat.js'),
  create: () => import('./pages/create.js'),
  tools: () => import('./pages/tools.js'),
  video: () => import('./pages/video.js'),
  lab: () => import('./pages/lab.js'),
  gallery: () => import('./pages/gallery.js'),
  models: () => import('./pages/models.js'),
  datasets: () => import('./pages/datasets.js'),
  jobs: () => import('./pages/jobs.js'),
};

const $ = (sel) => document.querySelector(sel);
let cleanup = null;

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  $('#theme').textContent = theme === 'dark' ? 'Light theme' : 'Dark theme';
}

function initTheme() {
  const saved = localStorage.getItem('photostudio.theme');
  const dark = window.matchMedia && window.matchMedia('(prefers-color-scheme: dark)').matches;
  applyTheme(saved || (dark ? 'dark' : 'light'));
  $('#theme').addEventListener('click', () => {
    const next = document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark';
    localStorage.setItem('photostudio.theme', next); // a preference, not a secret
    applyTheme(next);
  });
}

function showKeyPanel(message) {
  $('#key-panel').hidden = false;
  $('#page').hidden = true;
  const err = $('#key-error');
  err.hidden = !message;
  err.textContent = message || '';
  $('#key-input').focus();
}

function showReadiness(caps) {
  const state = caps && caps.readiness;
  if (state && !state.ready) banner(`Gateway warming up (not ready yet): ${state.not_ready.join('; ')}`, 'warn');
  else banner('');
}

async function checkKey() {
  try {
    showReadiness(await capabilities(true));
    return true;
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
      clearKey();
      showKeyPanel(err.message);
      return false;
    }
    throw err;
  }
}

function banner(text, kind = '') {
  const el = $('#banner');
  el.hidden = !text;
  el.className = kind;
  el.textContent = text || '';
}

// Each navigation gets a number; a slower, older one (its key check or module still loading)
// must not replace the page a newer one has rendered meanwhile.
let routeSeq = 0;

async function route() {
  const seq = ++routeSeq;
  const stale = () => seq !== routeSeq;
  if (cleanup) { try { cleanup(); } catch { /* page gone */ } cleanup = null; }
  if (!getKey()) { showKeyPanel(); return; }
  $('#key-panel').hidden = true;
  const pageEl = $('#page');
  pageEl.hidden = false;
  const name = (location.hash.match(/^#\/([a-z]+)/) || [])[1] || 'create';
  const page = PAGES[name] ? name : 'create';
  document.querySelectorAll('#nav a').forEach((a) => {
    if (a.dataset.page === page) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  });
  pageEl.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
  try {
    if (!(await checkKey()) || stale()) return;
    const mod = await PAGES[page]();
    if (stale()) return;
    const root = h('div', { class: 'page', dataset: { page } });
    pageEl.replaceChildren(root);
    const done = (await mod.render(root, { navigate })) || null;
    if (stale()) { if (done) { try { done(); } catch { /* page gone */ } } return; }
    cleanup = done;
    document.title = `${root.querySelector('h1')?.textContent || page} · Photo Studio`;
  } catch (err) {
    if (!stale()) pageEl.replaceChildren(h('div', { class: 'alert error', role: 'alert' }, err.message || String(err)));
  }
}

export function navigate(page) {
  if (location.hash === `#/${page}`) route();
  else location.hash = `#/${page}`;
}

function init() {
  initTheme();
  $('#key-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    setKey($('#key-input').value);
    $('#key-input').value = '';
    try {
      if (await checkKey()) route();
    } catch (err) {
      showKeyPanel(err.message);
    }
  });
  $('#change-key').addEventListener('click', () => { clearKey(); showKeyPanel(); });
  window.addEventListener('hashchange', route);
  route();
}

init();

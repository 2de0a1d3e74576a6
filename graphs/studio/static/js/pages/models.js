// Models: the catalogue (GET /v1/models) and LoRA upload (issue #15's /v1/models/loras).
import { api, hasEndpoint } from '../api.js';
import { clearError, field, h, showError } from '../ui.js';

export async function render(root) {
  const panel = h('section', { class: 'panel', 'aria-labelledby': 'page-title' }, h('h1', { id: 'page-title' }, 'Models'));
  root.append(panel);
  try {
    const models = (await api('/v1/models')).data;
    panel.append(h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'Models table' }, h('table', {}, h('thead', {}, h('tr', {}, ['Model', 'Deployment', 'Tiny', 'Fallback'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, models.map((m) => h('tr', {}, h('td', {}, m.id), h('td', {}, m.deployment), h('td', {}, m.tiny ? 'yes' : 'no'), h('td', {}, m.fallback ? 'yes' : 'no')))))));
  } catch (err) { showError(panel, err); }
  panel.append(h('h2', {}, 'LoRA upload'));
  if (!hasEndpoint('/v1/models/loras')) {
    panel.append(h('div', { class: 'unavailable', role: 'note' }, h('p', {}, h('strong', {}, 'Not available on this gateway.')), h('p', { class: 'muted' }, 'LoRA upload needs the /v1/models/loras API.')));
    return;
  }
  const name = h('input', { name: 'name', dataset: { param: 'name' } });
  const file = h('input', { type: 'file', name: 'file', accept: '.safetensors', dataset: { param: 'file' } });
  const up = h('button', { type: 'submit', class: 'primary' }, 'Upload');
  const form = h('form', {}, field('Name', name), field('LoRA file (.safetensors)', file), up);
  panel.append(form);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault(); clearError(form);
    try { await api('/v1/models/loras', { method: 'POST', form: new FormData(form) }); form.append(h('p', { class: 'ok' }, 'Uploaded.')); } catch (err) { showError(form, err, { form }); }
  });
}

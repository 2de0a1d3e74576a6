// Lab: workflow graphs (issue #17's /v1/workflows), gated on capabilities.
import { api, hasEndpoint } from '../api.js';
import { clearError, field, h, showError, unavailable } from '../ui.js';

export async function render(root) {
  if (!hasEndpoint('/v1/workflows/validate')) {
    root.append(unavailable('Lab', 'The workflow graph editor needs the gateway\'s /v1/workflows API.'));
    return;
  }
  const graph = h('textarea', { name: 'workflow', dataset: { param: 'workflow' }, rows: 14 }, JSON.stringify({ nodes: [], edges: [] }, null, 2));
  const validate = h('button', { type: 'button' }, 'Validate');
  const run = h('button', { type: 'button', class: 'primary' }, 'Run');
  const out = h('pre', { role: 'status', 'aria-live': 'polite' });
  const form = h('form', { class: 'panel', 'aria-labelledby': 'page-title' }, h('h1', { id: 'page-title' }, 'Lab'),
    field('Workflow (JSON: nodes and edges)', graph), h('div', { class: 'row' }, validate, run), out);
  root.append(form);
  const call = async (path) => {
    clearError(form);
    try { out.textContent = JSON.stringify(await api(path, { method: 'POST', json: JSON.parse(graph.value) }), null, 2); } catch (err) { showError(form, err, { form }); }
  };
  validate.addEventListener('click', () => call('/v1/workflows/validate'));
  run.addEventListener('click', () => call('/v1/workflows/execute'));
}

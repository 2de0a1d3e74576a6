// Models: the catalogue (GET /v1/models, ?kind=) with its LoRAs; LoRA upload and removal
// (POST /v1/models/loras, DELETE /v1/models/loras/{name}) where the gateway serves them.
import { api, hasEndpoint } from '../api.js';
import { clearError, field, h, select, showError } from '../ui.js';

const KINDS = ['base', 'lora', 'vae', 'upscaler', 'matting', 'face', 'llm'];

export async function render(root) {
  const kind = select('kind', [['', 'All kinds'], ...KINDS], '');
  const body = h('tbody');
  const panel = h('section', { class: 'panel', 'aria-labelledby': 'page-title' },
    h('h1', { id: 'page-title' }, 'Models'),
    h('div', { class: 'row', role: 'search' }, field('Kind', kind)),
    h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'Models table' },
      h('table', {}, h('caption', { class: 'muted' }, 'Deployed models first, then the catalogue. LoRAs: those that fit the deployed base model.'),
        h('thead', {}, h('tr', {}, ['Model', 'Kind', 'Deployed as', 'Base', 'Tiny', 'Details', ''].map((t) => h('th', { scope: 'col' }, t || h('span', { class: 'muted' }, 'Actions'))))), body)));
  root.append(panel);
  const canDelete = hasEndpoint('/v1/models/loras/{name}');

  async function load() {
    clearError(panel);
    try {
      const q = kind.value ? `?kind=${encodeURIComponent(kind.value)}` : '';
      const models = (await api(`/v1/models${q}`)).data;
      body.replaceChildren(...(models.length ? models.map(row) : [h('tr', {}, h('td', { colspan: 7, class: 'muted' }, `No ${kind.value || ''} models.`))]));
    } catch (err) { showError(panel, err); }
  }

  function row(m) {
    const details = [m.description, m.trigger_words?.length ? `trigger: ${m.trigger_words.join(', ')}` : '',
      m.default_weight !== null && m.default_weight !== undefined ? `weight ${m.default_weight}` : '',
      m.tags?.length ? `tags: ${m.tags.join(', ')}` : '', m.size || '', m.rank ? `rank ${m.rank}` : '',
      m.registered ? `registered by ${m.owned_by}` : ''].filter(Boolean).join(' · ');
    let action = '';
    if (m.kind === 'lora' && canDelete && m.registered) { // built-in ones cannot be deleted
      const del = h('button', { type: 'button', 'aria-label': `Delete LoRA ${m.id}` }, 'Delete');
      del.addEventListener('click', async () => {
        if (del.dataset.armed !== '1') { del.dataset.armed = '1'; del.textContent = 'Confirm delete'; return; }
        try { await api(`/v1/models/loras/${encodeURIComponent(m.id)}`, { method: 'DELETE' }); await load(); } catch (err) { showError(panel, err); }
      });
      action = del;
    }
    return h('tr', { dataset: { model: m.id } }, h('td', {}, m.id), h('td', {}, m.kind), h('td', {}, m.deployment || '—'),
      h('td', {}, m.base || ''), h('td', {}, m.tiny ? 'yes' : 'no'), h('td', {}, details), h('td', {}, action));
  }
  kind.addEventListener('change', load);
  await load();

  panel.append(h('h2', {}, 'Upload a LoRA'));
  if (!hasEndpoint('/v1/models/loras')) {
    panel.append(h('div', { class: 'unavailable', role: 'note' }, h('p', {}, h('strong', {}, 'Not available on this gateway.')),
      h('p', { class: 'muted' }, 'LoRA upload needs the POST /v1/models/loras API, which this gateway\'s /v1/capabilities does not list.')));
    return undefined;
  }
  const name = h('input', { name: 'name', dataset: { param: 'name' }, required: true, placeholder: 'my-style' });
  const file = h('input', { type: 'file', name: 'file', accept: '.safetensors', dataset: { param: 'file' }, required: true });
  const trigger = h('input', { name: 'trigger_words', dataset: { param: 'trigger_words' }, placeholder: 'mystyle' });
  const weight = h('input', { name: 'default_weight', type: 'number', step: 0.05, min: -4, max: 4, value: 1, dataset: { param: 'default_weight' } });
  const description = h('input', { name: 'description', dataset: { param: 'description' } });
  const up = h('button', { type: 'submit', class: 'primary' }, 'Upload');
  const done = h('p', { class: 'ok', role: 'status', 'aria-live': 'polite' });
  const form = h('form', { id: 'lora-upload' }, h('p', { class: 'muted' }, 'Needs a key with the models (or admin) scope. Checked by loading it onto the deployed base model.'), h('div', { class: 'row' }, field('Name', name, 'lowercase letters, digits, . _ -'), field('LoRA file (.safetensors)', file)),
    h('div', { class: 'row' }, field('Trigger words', trigger), field('Default weight', weight), field('Description', description)), up, done);
  panel.append(form);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault(); clearError(form); done.textContent = ''; up.disabled = true;
    try {
      const card = await api('/v1/models/loras', { method: 'POST', form: new FormData(form) });
      done.textContent = `Registered ${card.id} (fits ${card.base || 'the base model'}): use it in Create, or as <lora:${card.id}:${card.default_weight ?? 1}> in a prompt.`;
      kind.value = 'lora';
      form.reset();
      await load();
    } catch (err) { showError(form, err, { form }); } finally { up.disabled = false; }
  });
  return undefined;
}

// Create: text-to-image with presets, model/LoRA pickers, size, steps, guidance, seed lock,
// n; live partial previews over SSE (n = 1), cancel.
import { api, capabilities, hasEndpoint, sse } from '../api.js';
import { clearError, dataUrl, field, h, select, showError, takeHandoff } from '../ui.js';

function sizes(limits) {
  const lo = limits.min_side || 64; const hi = limits.max_side || 1024; const m = limits.multiple || 8;
  const d = [limits.default_width || lo, limits.default_height || lo];
  const out = new Set([`${d[0]}x${d[1]}`]);
  for (const [w, hh] of [[64, 64], [96, 64], [64, 96], [128, 128], [256, 256], [512, 512], [768, 512], [512, 768], [1024, 1024]]) {
    if (w >= lo && hh >= lo && w <= hi && hh <= hi && w % m === 0 && hh % m === 0) out.add(`${w}x${hh}`);
  }
  return ['auto', ...out];
}

export async function render(root) {
  const caps = await capabilities();
  const gen = caps.deployments.generator || { limits: {} };
  let models = [];
  try { models = (await api('/v1/models')).data.filter((m) => m.deployment === 'generator' || m.deployment === 'Generator'); } catch { models = []; }
  const recipe = takeHandoff('create');
  // presets: the gateway's own (GET /v1/presets?kind=image: built-in styles, templates and
  // named presets, and the project's own); the request names one and the server applies it
  let presets = [];
  if (hasEndpoint('/v1/presets')) {
    try { presets = (await api('/v1/presets?kind=image')).data; } catch { presets = []; }
  }

  const prompt = h('textarea', { name: 'prompt', dataset: { param: 'prompt' }, required: true, rows: 3 });
  const negative = h('textarea', { name: 'negative_prompt', dataset: { param: 'negative_prompt' }, rows: 2 });
  const preset = select('preset', [['', 'None'], ...presets.map((p) => [p.id, p.builtin ? p.title : `${p.title} (yours)`])], '');
  preset.dataset.param = 'preset';
  const presetNote = h('p', { class: 'muted', id: 'preset-note', 'aria-live': 'polite' });
  const model = select('model', [['', `Default (${gen.name || 'generator'})`], ...models.map((m) => [m.id, m.id])], '');
  const size = select('size', sizes(gen.limits || {}), '64x64');
  const steps = h('input', { name: 'steps', type: 'number', min: 1, value: 4 });
  const guidance = h('input', { name: 'guidance_scale', type: 'number', min: 0, max: 30, step: 0.5, value: 7 });
  const seed = h('input', { name: 'seed', type: 'number', min: 0, max: 4294967295, value: Math.floor(Math.random() * 1e6) });
  const lock = h('input', { type: 'checkbox', name: 'seed_lock', id: 'seed-lock' });
  const n = h('input', { name: 'n', type: 'number', min: 1, max: 10, value: 1 });
  const generate = h('button', { type: 'submit', class: 'primary' }, 'Generate');
  const cancel = h('button', { type: 'button', disabled: true }, 'Cancel');
  const status = h('p', { class: 'muted', role: 'status', 'aria-live': 'polite' });
  const progress = h('progress', { max: 1, value: 0, 'aria-label': 'Generation progress', hidden: true });
  const previews = h('div', { class: 'previews', role: 'group', 'aria-label': 'Partial previews' });
  const result = h('div', { class: 'result' });
  // LoRAs: those of the catalogue that fit the deployed base model (GET /v1/models?kind=lora)
  let loraCards = [];
  try { loraCards = (await api('/v1/models?kind=lora')).data; } catch { loraCards = []; }
  const loraRows = h('div', { id: 'lora-rows' });
  const addLora = h('button', { type: 'button' }, 'Add LoRA');
  function loraRow(name = '', weight = '') {
    const i = loraRows.children.length + 1;
    const pick = select(`lora_${i}`, [['', 'None'], ...loraCards.map((m) => [m.id, m.trigger_words?.length ? `${m.id} (${m.trigger_words.join(', ')})` : m.id])], name);
    pick.dataset.param = 'loras';
    const w = h('input', { type: 'number', name: `lora_weight_${i}`, min: -4, max: 4, step: 0.05, value: weight, placeholder: 'default' });
    const remove = h('button', { type: 'button', 'aria-label': `Remove LoRA ${i}` }, 'Remove');
    const row = h('div', { class: 'row lora-row' }, field(`LoRA ${i}`, pick), field(`Weight of LoRA ${i}`, w), remove);
    remove.addEventListener('click', () => row.remove());
    loraRows.append(row);
  }
  addLora.addEventListener('click', () => { if (loraRows.children.length < 5) loraRow(); });
  const chosenLoras = () => [...loraRows.querySelectorAll('.lora-row')].map((row) => {
    const [pick, w] = row.querySelectorAll('select, input');
    return pick.value ? { name: pick.value, ...(w.value !== '' ? { weight: Number(w.value) } : {}) } : null;
  }).filter(Boolean);
  const loras = loraCards.length
    ? h('fieldset', { class: 'loras' }, h('legend', {}, 'LoRAs'), loraRows, addLora)
    : h('p', { class: 'muted', id: 'lora-na' }, hasEndpoint('/v1/models/loras')
      ? 'LoRAs: none registered for this base model yet (upload one on the Models page).'
      : 'LoRAs: none in this gateway\'s catalogue for its base model.');

  // the preset's own steps / guidance / size fill the form (what the form sends wins on the
  // server, so the form shows what will be used); its template and negative prompt are applied
  // by the server around the prompt typed here
  preset.addEventListener('change', () => {
    const p = presets.find((x) => x.id === preset.value);
    if (!p) { presetNote.textContent = ''; return; }
    const params = p.params || {};
    if (params.steps) steps.value = params.steps;
    if (params.guidance_scale !== undefined && params.guidance_scale !== null) guidance.value = params.guidance_scale;
    if (params.size && [...size.options].some((o) => o.value === params.size)) size.value = params.size;
    presetNote.textContent = `${p.description ? `${p.description} ` : ''}Prompt: ${p.prompt_template}${p.negative_prompt ? `; negative: ${p.negative_prompt}` : ''}`;
  });

  if (recipe) {
    const p = recipe.parameters || {};
    prompt.value = recipe.prompt || '';
    if (p.negative_prompt) negative.value = p.negative_prompt;
    if (p.steps) steps.value = p.steps;
    if (p.guidance_scale !== undefined && p.guidance_scale !== null) guidance.value = p.guidance_scale;
    const wanted = p.size || (p.width && p.height ? `${p.width}x${p.height}` : null);
    if (wanted && ![...size.options].some((o) => o.value === wanted)) size.append(h('option', { value: wanted }, wanted));
    if (wanted) size.value = wanted;
    if (p.model && [...model.options].some((o) => o.value === p.model)) model.value = p.model;
    if (p.seed !== undefined && p.seed !== null) seed.value = recipe.remix ? Number(p.seed) + 1 : p.seed;
    for (const l of Array.isArray(p.loras) ? p.loras : []) {
      if (l && l.name && loraCards.some((m) => m.id === l.name)) loraRow(l.name, l.weight ?? '');
    }
  }

  const form = h('form', { class: 'panel', 'aria-labelledby': 'page-title' },
    h('h1', { id: 'page-title' }, 'Create'),
    recipe ? h('p', { class: 'muted', id: 'remix-note' }, recipe.remix ? `Remixing ${recipe.id}: same recipe, next seed.` : `From ${recipe.id}.`) : null,
    field('Prompt', prompt),
    field('Negative prompt', negative),
    h('div', { class: 'row' }, field('Preset', preset), field('Model', model), field('Size', size)),
    presetNote,
    h('div', { class: 'row' }, field('Steps', steps), field('Guidance', guidance), field('Seed', seed),
      h('div', { class: 'field' }, h('label', { for: 'seed-lock' }, lock, ' Lock seed')), field('Images (n)', n)),
    loras,
    h('div', { class: 'row' }, generate, cancel),
    progress, status);
  root.append(form, h('section', { class: 'panel', 'aria-label': 'Results' }, h('h2', {}, 'Previews'), previews, h('h2', {}, 'Result'), result));

  let controller = null;
  cancel.addEventListener('click', () => { if (controller) controller.abort(); });

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearError(form);
    previews.replaceChildren();
    result.replaceChildren();
    if (!lock.checked && !recipe) seed.value = Math.floor(Math.random() * 1e6);
    const body = {
      prompt: prompt.value, size: size.value, n: Number(n.value), steps: Number(steps.value),
      guidance_scale: Number(guidance.value), seed: Number(seed.value),
    };
    if (negative.value.trim()) body.negative_prompt = negative.value;
    if (model.value) body.model = model.value;
    if (preset.value) body.preset = preset.value;
    const picked = chosenLoras();
    if (picked.length) body.loras = picked;
    controller = new AbortController();
    generate.disabled = true; cancel.disabled = false;
    progress.hidden = false; progress.value = 0;
    status.textContent = 'Generating…';
    try {
      if (body.n === 1) {
        body.stream = true; body.partial_images = 2;
        for await (const ev2 of sse('/v1/images/generations', { method: 'POST', json: body, signal: controller.signal })) {
          const d = ev2.data;
          if (ev2.event.endsWith('.partial_image')) {
            previews.append(h('figure', {}, h('img', { src: dataUrl(d.b64_json, d.output_format), alt: `Partial preview ${d.partial_image_index + 1}`, class: 'preview' }),
              h('figcaption', {}, `preview ${d.partial_image_index + 1}`)));
            progress.value = Math.min(0.9, (d.partial_image_index + 1) / 3);
            status.textContent = `Preview ${d.partial_image_index + 1} received…`;
          } else if (ev2.event.endsWith('.completed')) {
            result.append(h('figure', {}, h('img', { src: dataUrl(d.b64_json, d.output_format), alt: `Generated image for: ${body.prompt}`, class: 'final', dataset: { asset: d.id } }),
              h('figcaption', {}, `${d.id} · seed ${body.seed} · ${d.metadata?.model || ''}`)));
          } else if (ev2.event === 'error') {
            const e = d.error || {}; const err = new Error(e.message); err.param = e.param; throw err;
          }
        }
      } else {
        const res = await api('/v1/images/generations', { method: 'POST', json: body, signal: controller.signal });
        res.data.forEach((d, i) => result.append(h('figure', {}, h('img', { src: dataUrl(d.b64_json, res.output_format), alt: `Generated image ${i + 1} for: ${body.prompt}`, class: 'final', dataset: { asset: d.id } }), h('figcaption', {}, `${d.id} · seed ${d.seed}`))));
      }
      progress.value = 1;
      status.textContent = 'Done.';
      generate.disabled = false;
    } catch (err) {
      generate.disabled = false; // showError disables it again during a Retry-After
      status.textContent = err.name === 'AbortError' ? 'Cancelled.' : 'Failed.';
      showError(form, err, { form, disable: [generate] });
    } finally {
      cancel.disabled = true; progress.hidden = true; controller = null;
    }
  });
  prompt.focus();
  return () => { if (controller) controller.abort(); };
}

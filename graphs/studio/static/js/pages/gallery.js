// Gallery: the project's assets, newest first, filters, each with its recipe; remix, send to
// edit/tools/video, download, delete; images picked here are added to a dataset (LoRA
// training) in one click.
import { api, hasEndpoint } from '../api.js';
import { clearError, field, fmtTime, h, handoff, select, showError } from '../ui.js';

async function projectIds() {
  const list = await api('/v1/projects?limit=200');
  const ids = list.data.map((p) => p.id);
  if (ids.includes('default')) return ['default', ...ids.filter((i) => i !== 'default')];
  return ids;
}

// The recipe (how the asset was made) comes with the listing; uploads have none.
const RECIPE_KEYS = ['negative_prompt', 'model', 'seed', 'steps', 'guidance_scale', 'preset', 'loras', 'workflow_id', 'node'];
const show = (v) => (typeof v === 'object' ? JSON.stringify(v) : String(v));

export async function render(root, { navigate }) {
  const projects = await projectIds();
  const project = select('project', projects, projects[0]);
  const kind = select('kind', [['', 'All kinds']], '');
  const model = h('input', { name: 'model', type: 'search', placeholder: 'any model' });
  const since = h('input', { name: 'since', type: 'date' });
  const refresh = h('button', { type: 'button' }, 'Refresh');
  const grid = h('div', { class: 'grid', id: 'assets', 'aria-live': 'polite' });
  const more = h('button', { type: 'button', hidden: true }, 'Load more');
  // gallery → dataset: pick images on their cards, then add them to one of your datasets
  // (POST /v1/datasets/{id}/images with asset_id fields; the dataset keeps its own copies)
  const canDataset = hasEndpoint('/v1/datasets');
  const picked = new Set();
  const dataset = select('dataset', [['', 'Choose a dataset']], '');
  const add = h('button', { type: 'button', id: 'add-to-dataset', disabled: true }, 'Add picked images to dataset');
  const addStatus = h('span', { class: 'muted', role: 'status', 'aria-live': 'polite' });
  const toolbar = canDataset ? h('div', { class: 'row', id: 'dataset-picker' }, field('Dataset', dataset), add, addStatus) : null;
  const panel = h('section', { class: 'panel', 'aria-labelledby': 'page-title' },
    h('h1', { id: 'page-title' }, 'Gallery'),
    h('div', { class: 'row', role: 'search' }, field('Project', project), field('Kind', kind), field('Model', model), field('Since', since), refresh),
    toolbar, grid, more);
  root.append(panel);

  function updateAdd() {
    add.disabled = !picked.size || !dataset.value;
    add.textContent = picked.size ? `Add ${picked.size} picked image${picked.size === 1 ? '' : 's'} to dataset` : 'Add picked images to dataset';
  }
  async function loadDatasets() {
    try {
      const list = await api('/v1/datasets?limit=100');
      const chosen = dataset.value;
      dataset.replaceChildren(h('option', { value: '' }, list.data.length ? 'Choose a dataset' : 'No dataset yet (make one on Datasets & training)'),
        ...list.data.map((d) => h('option', { value: d.id, selected: d.id === chosen }, `${d.name} (${d.images} images)`)));
    } catch (err) { showError(panel, err); }
    updateAdd();
  }
  dataset.addEventListener('change', updateAdd);
  add.addEventListener('click', async () => {
    clearError(panel);
    const fd = new FormData();
    picked.forEach((id) => fd.append('asset_id', id));
    const name = dataset.selectedOptions[0]?.textContent || dataset.value;
    add.disabled = true;
    try {
      const res = await api(`/v1/datasets/${encodeURIComponent(dataset.value)}/images`, { method: 'POST', form: fd });
      picked.clear();
      draw();
      await loadDatasets();
      addStatus.textContent = `Added ${res.added.length} image(s) to ${name.replace(/ \(\d+ images\)$/, '')}.`;
    } catch (err) { showError(panel, err); updateAdd(); }
  });

  let assets = []; let cursor = null;
  async function load(reset = true) {
    clearError(panel);
    try {
      const q = new URLSearchParams({ limit: '50' });
      if (!reset && cursor) q.set('cursor', cursor);
      const page = await api(`/v1/projects/${encodeURIComponent(project.value)}/assets?${q}`);
      assets = reset ? page.data : assets.concat(page.data);
      cursor = page.next_cursor; more.hidden = !cursor;
      const kinds = [...new Set(assets.map((a) => a.kind))];
      const current = kind.value;
      kind.replaceChildren(h('option', { value: '' }, 'All kinds'), ...kinds.map((k) => h('option', { value: k, selected: k === current }, k)));
      draw();
    } catch (err) { showError(panel, err); }
  }

  function draw() {
    const m = model.value.trim().toLowerCase();
    const after = since.value ? new Date(since.value) : null;
    const shown = assets.filter((a) => (!kind.value || a.kind === kind.value)
      && (!m || String(a.recipe?.model || a.parameters?.model || '').toLowerCase().includes(m))
      && (!after || new Date(a.created_at) >= after));
    grid.replaceChildren(...(shown.length ? shown.map(card) : [h('p', { class: 'muted' }, 'No images yet: make one on the Create page.')]));
  }

  function card(asset) {
    const r = asset.recipe;
    const recipe = h('dl', { class: 'recipe' },
      h('dt', {}, 'prompt'), h('dd', {}, (r && r.prompt) || asset.prompt || '—'),
      ...(r ? RECIPE_KEYS.filter((k) => r[k] !== undefined && r[k] !== null && r[k] !== '')
        .flatMap((k) => [h('dt', {}, k), h('dd', {}, show(r[k]))]) : [h('dt', {}, 'recipe'), h('dd', {}, 'none (an upload or an edit of one)')]),
      h('dt', {}, 'size'), h('dd', {}, `${asset.width}×${asset.height}`),
      h('dt', {}, 'kind'), h('dd', {}, r && r.kind === 'workflow' ? `${asset.kind} (workflow)` : asset.kind),
      h('dt', {}, 'made'), h('dd', {}, fmtTime(asset.created_at)));
    const del = h('button', { type: 'button', 'aria-label': `Delete ${asset.id}` }, 'Delete');
    del.addEventListener('click', async () => {
      if (del.dataset.armed !== '1') { del.dataset.armed = '1'; del.textContent = 'Confirm delete'; return; }
      try { await api(`/v1/assets/${encodeURIComponent(asset.id)}`, { method: 'DELETE' }); assets = assets.filter((a) => a.id !== asset.id); draw(); } catch (err) { showError(panel, err); }
    });
    const send = (page) => () => { handoff({ page, id: asset.id, url: asset.url, prompt: asset.prompt }); navigate(page); };
    // Remix: a generation's recipe back in Create with the next seed (edit, then Generate);
    // Regenerate: POST /v1/assets/{id}/remix, the same recipe and seed again (workflows too).
    // (an image without a recipe but made from a prompt: its job's prompt and parameters)
    const remixable = r || (asset.prompt ? { prompt: asset.prompt, ...(asset.parameters || {}) } : null);
    const remix = remixable ? h('button', { type: 'button', 'aria-label': `Remix ${asset.id}` }, 'Remix') : null;
    remix?.addEventListener('click', async () => {
      if (remixable.kind === 'workflow') { handoff({ page: 'lab', id: asset.id, workflow: remixable.workflow }); navigate('lab'); return; }
      handoff({ page: 'create', id: asset.id, prompt: remixable.prompt, parameters: remixable, remix: true });
      navigate('create');
    });
    const again = r ? h('button', { type: 'button', 'aria-label': `Regenerate ${asset.id}` }, 'Regenerate') : null;
    again?.addEventListener('click', async () => {
      again.disabled = true;
      try {
        await api(`/v1/assets/${encodeURIComponent(asset.id)}/remix`, { method: 'POST', json: {} });
        await load();
      } catch (err) { showError(panel, err); } finally { again.disabled = false; }
    });
    const toVideo = hasEndpoint('/v1/videos')
      ? h('button', { type: 'button', onclick: send('video'), 'aria-label': `Send to video: ${asset.id}` }, 'Send to video') : null;
    const pick = canDataset && String(asset.content_type || '').startsWith('image/') ? h('label', { class: 'pick' },
      h('input', { type: 'checkbox', checked: picked.has(asset.id), 'aria-label': `Pick ${asset.id} for a dataset`, onchange: (ev) => { if (ev.target.checked) picked.add(asset.id); else picked.delete(asset.id); updateAdd(); } }),
      ' Pick for a dataset') : null;
    return h('article', { class: 'card', dataset: { asset: asset.id }, 'aria-label': `Image ${asset.id}` },
      h('img', { src: asset.url, alt: asset.prompt ? `Image: ${asset.prompt}` : `Image ${asset.id}`, loading: 'lazy', width: asset.width, height: asset.height }),
      recipe,
      h('div', { class: 'actions' },
        remix, again,
        h('button', { type: 'button', onclick: send('tools'), 'aria-label': `Send to tools: ${asset.id}` }, 'Send to tools'),
        toVideo,
        h('a', { class: 'button', href: asset.url, download: `${asset.id}.${(asset.content_type || 'image/png').split('/')[1]}` }, 'Download'),
        del),
      pick);
  }

  project.addEventListener('change', () => load());
  [kind, model, since].forEach((c) => c.addEventListener('input', draw));
  refresh.addEventListener('click', () => load());
  more.addEventListener('click', () => load(false));
  await Promise.all([load(), canDataset ? loadDatasets() : null]);
}

// Datasets & training: image datasets (POST/GET/DELETE /v1/datasets, multipart uploads to
// /v1/datasets/{id}/images, /stats) and LoRA trainings on them (POST /v1/trainings, its SSE
// /events for the live loss chart, DELETE to cancel), gated on capabilities.
import { api, capabilities, hasEndpoint, sse } from '../api.js';
import { clearError, field, fmtTime, h, handoff, lineChart, select, showError, unavailable } from '../ui.js';

const ACTIVE = ['queued', 'running'];
const SOURCES = { user: 'your caption', file: 'caption file', vision: 'vision model' };
const pct = (x) => `${Math.round((x || 0) * 100)}%`;
const kb = (n) => (n >= 1048576 ? `${(n / 1048576).toFixed(1)} MB` : `${Math.max(1, Math.round((n || 0) / 1024))} kB`);
const eta = (s) => (s === null || s === undefined ? '—' : s >= 90 ? `${Math.round(s / 60)} min` : `${Math.round(s)} s`);

export async function render(root, { navigate } = {}) {
  if (!hasEndpoint('/v1/datasets')) {
    root.append(unavailable('Datasets & training', 'Dataset upload, captioning and LoRA training need the gateway\'s /v1/datasets and /v1/trainings APIs.'));
    return undefined;
  }
  const caps = await capabilities();
  const gen = caps.deployments.generator || {};
  const canTrain = hasEndpoint('/v1/trainings');
  let current = null; // the open dataset
  let follow = null; // AbortController of the followed training's event stream
  const timers = [];

  // -- datasets: list and create ------------------------------------------------------------
  const listBody = h('tbody', { id: 'dataset-rows' });
  const dsName = h('input', { name: 'name', dataset: { param: 'name' }, required: true, maxlength: 200, placeholder: 'my-style-photos' });
  const dsDesc = h('input', { name: 'description', dataset: { param: 'description' } });
  const dsTags = h('input', { name: 'tags', dataset: { param: 'tags' }, placeholder: 'style, portraits' });
  const createBtn = h('button', { type: 'submit', class: 'primary' }, 'Create dataset');
  const createForm = h('form', { id: 'dataset-create', 'aria-label': 'New dataset' }, h('h2', {}, 'New dataset'),
    h('div', { class: 'row' }, field('Dataset name', dsName), field('Description', dsDesc), field('Tags', dsTags, 'comma separated')), createBtn);
  const panel = h('section', { class: 'panel', 'aria-labelledby': 'page-title' },
    h('h1', { id: 'page-title' }, 'Datasets & training'),
    h('p', { class: 'muted' }, `Images to train a LoRA adapter for ${gen.name || 'the deployed base model'}${gen.tiny ? ' (tiny, random weights)' : ''}.`),
    h('h2', {}, 'Datasets'),
    h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'Datasets table' }, h('table', {},
      h('thead', {}, h('tr', {}, ['Dataset', 'Images', 'Captions', 'Tags', 'Created', ''].map((t) => h('th', { scope: 'col' }, t || h('span', { class: 'muted' }, 'Actions'))))), listBody)),
    createForm);
  const detail = h('section', { class: 'panel', id: 'dataset-detail', 'aria-label': 'Dataset', hidden: true });
  const training = h('section', { class: 'panel', id: 'trainings', 'aria-labelledby': 'trainings-title' });
  root.append(panel, detail, training);

  async function loadList() {
    try {
      const rows = (await api('/v1/datasets?limit=100')).data;
      listBody.replaceChildren(...(rows.length ? rows.map((d) => h('tr', { dataset: { dataset: d.id } },
        h('td', {}, d.name, h('div', { class: 'muted' }, d.description || '')), h('td', {}, d.images),
        h('td', {}, `${pct(d.captions?.coverage)} captioned`), h('td', {}, (d.tags || []).join(', ')), h('td', {}, fmtTime(d.created_at)),
        h('td', {}, h('div', { class: 'actions' },
          h('button', { type: 'button', 'aria-label': `Open dataset ${d.name}`, onclick: () => open(d.id) }, 'Open'),
          deleteButton(`Delete dataset ${d.name}`, async () => {
            await api(`/v1/datasets/${encodeURIComponent(d.id)}`, { method: 'DELETE' });
            if (current && current.id === d.id) { current = null; detail.hidden = true; }
            await loadList(); await loadTrainingForm();
          })))))
        : [h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No datasets yet: create one below.'))]));
    } catch (err) { showError(panel, err); }
  }

  function deleteButton(label, action) { // two clicks: arm, then confirm
    const del = h('button', { type: 'button', 'aria-label': label }, 'Delete');
    del.addEventListener('click', async () => {
      if (del.dataset.armed !== '1') { del.dataset.armed = '1'; del.textContent = 'Confirm delete'; return; }
      try { await action(); } catch (err) { showError(panel, err); }
    });
    return del;
  }

  createForm.addEventListener('submit', async (ev) => {
    ev.preventDefault(); clearError(createForm); createBtn.disabled = true;
    try {
      const tags = dsTags.value.split(',').map((t) => t.trim()).filter(Boolean);
      const ds = await api('/v1/datasets', { method: 'POST', json: { name: dsName.value.trim(), description: dsDesc.value.trim() || undefined, kind: 'image', tags } });
      createForm.reset();
      await loadList(); await loadTrainingForm();
      await open(ds.id);
    } catch (err) { showError(createForm, err, { form: createForm }); } finally { createBtn.disabled = false; }
  });

  // -- one dataset: stats, images with their captions, upload --------------------------------
  async function open(id) {
    clearError(detail);
    try {
      const [ds, stats] = await Promise.all([api(`/v1/datasets/${encodeURIComponent(id)}`), api(`/v1/datasets/${encodeURIComponent(id)}/stats`)]);
      current = ds;
      showDataset(ds, stats);
      if (trainDataset) trainDataset.value = ds.id;
    } catch (err) { showError(panel, err); }
  }

  function showDataset(ds, stats) {
    const c = ds.captions || {};
    // training puts the trigger word in front of every caption, and uses it alone where none
    const missingBy = `trained with the trigger word alone; ${c.missing_captions === 'vision' ? `new uploads are captioned by the vision model${c.auto_captioner ? ` (${c.auto_captioner})` : ''} where you give none`
      : 'no vision model is deployed to caption uploads'}`;
    const sources = Object.entries(stats.caption_sources || {}).filter(([, n]) => n).map(([k, n]) => `${n} by ${SOURCES[k] || k}`).join(', ');
    const statsEl = h('dl', { class: 'stats', id: 'dataset-stats' },
      h('dt', {}, 'Images'), h('dd', {}, `${stats.images} (${kb(stats.bytes)})`),
      h('dt', {}, 'Captions'), h('dd', {}, `${stats.captioned} of ${stats.images} (${pct(stats.caption_coverage)})${sources ? `: ${sources}` : ''}`),
      h('dt', {}, 'Without a caption'), h('dd', {}, `${c.missing ?? stats.images - stats.captioned}, ${missingBy}`),
      h('dt', {}, 'Sizes'), h('dd', {}, stats.images ? `${stats.min_width}–${stats.max_width} × ${stats.min_height}–${stats.max_height} px` : '—'),
      h('dt', {}, 'Trainable'), h('dd', {}, stats.trainable ? 'yes' : 'no: add images first'));
    const images = h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'Images of the dataset' }, h('table', {},
      h('thead', {}, h('tr', {}, ['Image', 'File', 'Caption', 'Caption from', 'Size', ''].map((t) => h('th', { scope: 'col' }, t || h('span', { class: 'muted' }, 'Actions'))))),
      h('tbody', { id: 'dataset-images' }, ...(ds.data || []).map((im) => imageRow(ds, im)))));
    detail.replaceChildren(h('h2', { id: 'dataset-title' }, `Dataset: ${ds.name}`),
      ds.description ? h('p', {}, ds.description) : null, statsEl, uploadForm(ds), images);
    detail.setAttribute('aria-labelledby', 'dataset-title');
    detail.dataset.dataset = ds.id;
    detail.hidden = false;
  }

  // one image: its caption edited in place (PATCH …/images/{id}: yours from then on; empty:
  // none) and its removal from the dataset (DELETE …/images/{id}, with a confirming click)
  function imageRow(ds, im) {
    const name = im.filename || im.id;
    const base = `/v1/datasets/${encodeURIComponent(ds.id)}/images/${encodeURIComponent(im.id)}`;
    const captionCell = h('td', {});
    const edit = h('button', { type: 'button', 'aria-label': `Edit the caption of ${name}` }, 'Edit');
    const showCaption = () => captionCell.replaceChildren(im.caption || h('span', { class: 'muted' }, '(none)'), ' ', edit);
    edit.addEventListener('click', () => {
      const input = h('input', { name: 'caption', value: im.caption || '', maxlength: 2000, 'aria-label': `Caption of ${name}`, dataset: { param: 'caption' } });
      const save = h('button', { type: 'submit' }, 'Save');
      const cancel = h('button', { type: 'button', onclick: showCaption }, 'Cancel');
      const form = h('form', { class: 'row caption-edit', 'aria-label': `Editing the caption of ${name}` }, input, save, cancel);
      form.addEventListener('submit', async (ev) => {
        ev.preventDefault(); clearError(form);
        save.disabled = true;
        try {
          await api(base, { method: 'PATCH', json: { caption: input.value } });
          await open(ds.id);
        } catch (err) { showError(form, err, { form }); save.disabled = false; }
      });
      captionCell.replaceChildren(form);
      input.focus();
    });
    showCaption();
    const remove = h('button', { type: 'button', 'aria-label': `Remove ${name} from the dataset` }, 'Remove');
    remove.addEventListener('click', async () => {
      if (remove.dataset.armed !== '1') { remove.dataset.armed = '1'; remove.textContent = 'Confirm remove'; return; }
      try { await api(base, { method: 'DELETE' }); await open(ds.id); await loadList(); } catch (err) { showError(detail, err); }
    });
    return h('tr', { dataset: { image: im.id } },
      h('td', {}, h('img', { src: im.url, alt: im.caption || im.filename || im.id, class: 'thumb', width: 48, height: 48, loading: 'lazy' })),
      h('td', {}, im.filename || im.asset_id), captionCell,
      h('td', {}, im.caption_source ? SOURCES[im.caption_source] || im.caption_source : 'trigger word only'),
      h('td', {}, `${im.width}×${im.height}, ${kb(im.size_bytes)}`), h('td', {}, remove));
  }

  function uploadForm(ds) {
    let files = [];
    const picker = h('input', { type: 'file', name: 'image', accept: 'image/*', multiple: true, dataset: { param: 'image' } });
    const captions = h('textarea', { name: 'caption', rows: 3, dataset: { param: 'caption' } });
    const assets = h('input', { name: 'asset_id', dataset: { param: 'asset_id' }, placeholder: 'asset ids from the gallery' });
    const auto = h('input', { type: 'checkbox', name: 'auto_caption', id: 'auto-caption', checked: true });
    const chosen = h('p', { class: 'muted', id: 'upload-chosen', 'aria-live': 'polite' }, 'No images chosen.');
    const send = h('button', { type: 'submit', class: 'primary' }, 'Upload images');
    const done = h('p', { class: 'ok', role: 'status', 'aria-live': 'polite' });
    const drop = h('div', { class: 'dropzone' }, field('Images (or drop them here)', picker), chosen,
      field('Captions (optional, one line per image, in order; empty line: none)', captions),
      field('Add from the gallery', assets, 'asset ids, comma separated'),
      h('div', { class: 'row' }, auto, h('label', { for: 'auto-caption' }, 'Caption images without one with the vision model (where deployed)')));
    const form = h('form', { id: 'dataset-upload', 'aria-label': `Add images to ${ds.name}` }, h('h3', {}, 'Add images'), drop, send, done);
    const pick = (list) => {
      files = files.concat([...list].filter((f) => f.type.startsWith('image/')));
      chosen.textContent = files.length ? `${files.length} image(s): ${files.map((f) => f.name).join(', ')}` : 'No images chosen.';
    };
    picker.addEventListener('change', () => { files = []; pick(picker.files); });
    drop.addEventListener('dragover', (ev) => { ev.preventDefault(); drop.classList.add('over'); });
    drop.addEventListener('dragleave', () => drop.classList.remove('over'));
    drop.addEventListener('drop', (ev) => { ev.preventDefault(); drop.classList.remove('over'); pick(ev.dataTransfer.files); });
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault(); clearError(form); done.textContent = '';
      const ids = assets.value.split(',').map((s) => s.trim()).filter(Boolean);
      if (!files.length && !ids.length) { showError(form, { message: 'choose or drop images, or give gallery asset ids', param: 'image' }, { form }); return; }
      const lines = captions.value.split('\n');
      const fd = new FormData();
      files.forEach((f, i) => { fd.append('image', f, f.name); fd.append('caption', (lines[i] || '').trim()); });
      ids.forEach((id) => fd.append('asset_id', id));
      fd.append('auto_caption', auto.checked ? 'true' : 'false');
      send.disabled = true;
      try {
        const res = await api(`/v1/datasets/${encodeURIComponent(ds.id)}/images`, { method: 'POST', form: fd });
        await open(ds.id);
        await loadList(); await loadTrainingForm();
        const status = detail.querySelector('#dataset-upload [role=status]');
        status.textContent = `Added ${res.added.length} image(s)${res.skipped?.length ? `, skipped ${res.skipped.length}` : ''}.`;
      } catch (err) { showError(form, err, { form }); send.disabled = false; }
    });
    return form;
  }

  // -- trainings: start one, follow it (status, step, ETA, loss chart), cancel ----------------
  let trainDataset = null;
  const trainingsBody = h('tbody', { id: 'training-rows' });
  const live = h('div', { id: 'training-live', hidden: true });
  const formSlot = h('div');
  training.append(h('h2', { id: 'trainings-title' }, 'LoRA trainings'), formSlot, live,
    h('h3', {}, 'Recent trainings'),
    h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'Trainings table' }, h('table', {},
      h('thead', {}, h('tr', {}, ['Adapter', 'Status', 'Step', 'Loss', 'Created', ''].map((t) => h('th', { scope: 'col' }, t || h('span', { class: 'muted' }, 'Actions'))))), trainingsBody)));

  let startButton = null;
  // the dataset picker follows the list; the rest of the form (what was typed) stays
  async function loadTrainingForm() {
    if (!canTrain) {
      formSlot.replaceChildren(h('div', { class: 'unavailable', role: 'note' }, h('p', {}, h('strong', {}, 'Training not available on this gateway.')),
        h('p', { class: 'muted' }, 'LoRA training needs the POST /v1/trainings API, which this gateway\'s /v1/capabilities does not list.')));
      return;
    }
    let datasets = [];
    try { datasets = (await api('/v1/datasets?limit=100')).data; } catch (err) { showError(training, err); return; }
    const options = datasets.length ? datasets.map((d) => h('option', { value: d.id }, `${d.name} (${d.images} images)`))
      : [h('option', { value: '' }, 'No datasets yet')];
    if (trainDataset) {
      const keep = trainDataset.value || (current && current.id);
      trainDataset.replaceChildren(...options);
      if (keep && datasets.some((d) => d.id === keep)) trainDataset.value = keep;
      startButton.disabled = !datasets.length;
      return;
    }
    const bases = await api('/v1/models?kind=base').then((r) => r.data.filter((m) => m.deployment)).catch(() => []);
    trainDataset = select('dataset_id', [], '');
    trainDataset.replaceChildren(...options);
    if (current) trainDataset.value = current.id;
    const name = h('input', { name: 'name', dataset: { param: 'name' }, required: true, pattern: '[A-Za-z0-9][A-Za-z0-9._\\-]{0,63}', placeholder: 'my-style' });
    const base = select('base_model', [['', `Default (${gen.name || 'the served base'})`], ...bases.map((m) => m.id)], '');
    const num = (n, attrs) => h('input', { type: 'number', name: n, dataset: { param: n }, ...attrs });
    const rank = num('rank', { min: 1, max: 256, value: 8 });
    const alpha = num('alpha', { min: 0, step: 'any', placeholder: '= rank' });
    const lr = num('learning_rate', { min: 0, max: 1, step: 'any', value: 0.0001 });
    const steps = num('steps', { min: 1, max: 5000, value: 500 });
    const batch = num('batch_size', { min: 1, max: 64, value: 1 });
    const res = num('resolution', { min: 32, max: 1024, step: 8, placeholder: 'base default' });
    const trigger = h('input', { name: 'trigger_word', dataset: { param: 'trigger_word' }, placeholder: '= adapter name' });
    const seed = num('seed', { min: 0, max: 4294967295, value: 0 });
    const start = h('button', { type: 'submit', class: 'primary', disabled: !datasets.length }, 'Start training');
    startButton = start;
    const form = h('form', { id: 'training-start', 'aria-label': 'Start a training' },
      h('p', { class: 'muted' }, 'Pick a dataset with images. Needs a key with the models (or admin) scope: the trained adapter is registered as a LoRA.'),
      h('div', { class: 'row' }, field('Dataset', trainDataset), field('Adapter name', name, 'letters, digits, . _ -'), field('Base model', base)),
      h('div', { class: 'row' }, field('Rank', rank), field('Alpha', alpha), field('Learning rate', lr), field('Steps', steps), field('Batch size', batch)),
      h('div', { class: 'row' }, field('Resolution', res, 'px, multiple of 8'), field('Trigger word', trigger), field('Seed', seed)), start);
    formSlot.replaceChildren(form);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault(); clearError(form); start.disabled = true;
      const body = { dataset_id: trainDataset.value, name: name.value.trim(), kind: 'lora' };
      if (base.value) body.base_model = base.value;
      for (const [k, el] of [['rank', rank], ['alpha', alpha], ['learning_rate', lr], ['steps', steps], ['batch_size', batch], ['resolution', res], ['seed', seed]]) {
        if (el.value !== '') body[k] = Number(el.value);
      }
      if (trigger.value.trim()) body.trigger_word = trigger.value.trim();
      try {
        const t = await api('/v1/trainings', { method: 'POST', json: body });
        start.disabled = false;
        await loadTrainings();
        followTraining(t);
      } catch (err) { start.disabled = false; showError(form, err, { form, disable: [start] }); }
    });
  }

  async function loadTrainings() {
    if (!canTrain) return;
    try {
      const rows = (await api('/v1/trainings?limit=20')).data;
      trainingsBody.replaceChildren(...(rows.length ? rows.map((t) => h('tr', { dataset: { training: t.id } },
        h('td', {}, t.name), h('td', { class: t.status === 'failed' ? 'error' : t.status === 'succeeded' ? 'ok' : '' }, t.status),
        h('td', {}, `${t.step}/${t.total_steps}`), h('td', {}, t.loss !== null && t.loss !== undefined ? Number(t.loss).toFixed(4) : '—'), h('td', {}, fmtTime(t.created_at)),
        h('td', {}, h('button', { type: 'button', 'aria-label': `Show training ${t.name}`, onclick: () => followTraining(t) }, 'Show'))))
        : [h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No trainings yet.'))]));
    } catch (err) { showError(training, err); }
  }

  function followTraining(t0) {
    if (follow) follow.abort();
    follow = new AbortController();
    const { signal } = follow;
    const losses = new Map((t0.losses || []).map((l, i) => [i + 1, l]));
    const status = h('p', { role: 'status', 'aria-live': 'polite', id: 'training-status' });
    const progress = h('progress', { max: 1, value: t0.progress || 0, 'aria-label': `Progress of training ${t0.name}` });
    const chartSlot = h('div', { class: 'loss-chart' });
    const cancel = h('button', { type: 'button', id: 'training-cancel' }, 'Cancel training');
    const after = h('div', { class: 'actions', id: 'training-done' });
    live.replaceChildren(h('h3', {}, `Training ${t0.name}`), status, progress, chartSlot, h('div', { class: 'actions' }, cancel), after);
    live.dataset.training = t0.id;
    live.hidden = false;
    const draw = () => {
      const points = [...losses.entries()].sort((a, b) => a[0] - b[0]).filter(([, v]) => Number.isFinite(v));
      chartSlot.replaceChildren(lineChart('loss-chart', 'Training loss', points, '', { span: (a, b) => `steps ${a}–${b}`, digits: 4 }));
    };
    const show = (t) => {
      live.dataset.status = t.status;
      progress.value = t.total_steps ? t.step / t.total_steps : 0;
      const bits = [`${t.status}`, `step ${t.step || 0} of ${t.total_steps}`];
      if (t.loss !== null && t.loss !== undefined) bits.push(`loss ${Number(t.loss).toFixed(4)}`);
      if (ACTIVE.includes(t.status)) bits.push(`ETA ${eta(t.eta_s)}`);
      if (t.steps_per_s) bits.push(`${Number(t.steps_per_s).toFixed(2)} steps/s`);
      if (t.error) bits.push(`error: ${t.error.message || t.error}`);
      status.textContent = bits.join(' · ');
      cancel.hidden = !ACTIVE.includes(t.status);
      if (t.step && t.loss !== null && t.loss !== undefined && !losses.has(t.step)) losses.set(t.step, Number(t.loss));
      (t.losses || []).forEach((l, i) => losses.set(i + 1, l));
      draw();
    };
    const finished = (t) => {
      show(t);
      if (t.status === 'succeeded' && (t.model || t.adapter)) {
        const model = t.model || t.adapter.name;
        const trig = (t.adapter && t.adapter.trigger_words && t.adapter.trigger_words[0]) || t.params?.trigger_word || '';
        after.replaceChildren(h('span', { class: 'ok' }, `LoRA ${model} registered.`),
          h('a', { href: '#/models', id: 'training-models-link' }, 'See it on the Models page'),
          h('button', { type: 'button', onclick: () => { handoff({ page: 'create', id: `training ${t.id}`, prompt: trig ? `${trig} ` : '', parameters: { loras: [{ name: model }] } }); if (navigate) navigate('create'); } }, `Use ${model} in Create`));
      }
      loadTrainings();
    };
    cancel.addEventListener('click', async () => {
      try { finished(await api(`/v1/trainings/${encodeURIComponent(t0.id)}`, { method: 'DELETE' })); } catch (err) { showError(live, err); }
    });
    show(t0);
    if (!ACTIVE.includes(t0.status)) { finished(t0); return; }
    (async () => {
      try {
        for await (const ev of sse(`/v1/trainings/${encodeURIComponent(t0.id)}/events`, { signal })) {
          if (ev.event === 'progress') show({ ...ev.data, name: t0.name });
          else if (['succeeded', 'failed', 'cancelled'].includes(ev.event)) { finished(ev.data); return; }
        }
        finished(await api(`/v1/trainings/${encodeURIComponent(t0.id)}`, { signal })); // stream ended early
      } catch (err) { if (err.name !== 'AbortError') showError(live, err); }
    })();
  }

  await loadList();
  await Promise.all([loadTrainingForm(), loadTrainings()]);
  timers.push(setInterval(() => { if (!document.hidden) loadTrainings(); }, 10000));
  return () => { if (follow) follow.abort(); timers.forEach(clearInterval); };
}

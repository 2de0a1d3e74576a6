// Edit & tools: inpaint with a brush-drawn mask, multi-reference edits, remove background,
// face swap, upscale, edit ops, style transfer; before/after view.
import { api, hasEndpoint } from '../api.js';
import { clearError, dataUrl, field, h, select, showError, takeHandoff, urlToFile } from '../ui.js';

const TOOLS = [
  ['remove-background', 'Remove background', '/v1/images/remove-background'],
  ['upscale', 'Upscale', '/v1/images/upscale'],
  ['inpaint', 'Inpaint (brush a mask)', '/v1/images/edits'],
  ['edit', 'Edit with a prompt (one or more references)', '/v1/images/edits'],
  ['style-transfer', 'Style transfer', '/v1/images/style-transfer'],
  ['face-swap', 'Face swap', '/v1/images/face-swap'],
  ['edit-ops', 'Edit operations', '/v1/images/edit-ops'],
];

export async function render(root) {
  const incoming = takeHandoff('tools');
  const available = TOOLS.filter(([, , path]) => hasEndpoint(path));
  let image = null; // File
  const fileInput = h('input', { type: 'file', accept: 'image/*', name: 'image', dataset: { param: 'image' } });
  const extraRefs = h('input', { type: 'file', accept: 'image/*', multiple: true, name: 'references' });
  const tool = select('tool', available.map(([id, label]) => [id, label]), available[0]?.[0]);
  const before = h('img', { alt: 'Before', class: 'thumb', id: 'before', hidden: true });
  const after = h('img', { alt: 'After', class: 'thumb', id: 'after', hidden: true });
  const options = h('div', { id: 'tool-options' });
  const run = h('button', { type: 'submit', class: 'primary' }, 'Run');
  const status = h('p', { class: 'muted', role: 'status', 'aria-live': 'polite' });
  let styles = [];
  try { styles = (await api('/v1/styles')).data || []; } catch { styles = []; }

  // the mask canvas (inpaint): painted pixels = the area to change
  const canvas = h('canvas', { width: 256, height: 256, 'aria-label': 'Mask: paint over the area to change' });
  const brush = h('input', { type: 'range', min: 2, max: 64, value: 16, name: 'brush' });
  const clearMask = h('button', { type: 'button' }, 'Clear mask');
  let painted = null; // offscreen canvas at the image's size holding the strokes

  function setupCanvas() {
    if (!image) return;
    const img = new Image();
    img.onload = () => {
      canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
      painted = document.createElement('canvas');
      painted.width = img.naturalWidth; painted.height = img.naturalHeight;
      redraw(img);
      canvas._img = img;
    };
    img.src = URL.createObjectURL(image);
  }
  function redraw(img = canvas._img) {
    const ctx = canvas.getContext('2d');
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (img) ctx.drawImage(img, 0, 0);
    ctx.globalAlpha = 0.55; if (painted) ctx.drawImage(painted, 0, 0); ctx.globalAlpha = 1;
  }
  let drawing = false;
  const paint = (ev) => {
    if (!drawing || !painted) return;
    const r = canvas.getBoundingClientRect();
    const x = (ev.clientX - r.left) * (canvas.width / r.width);
    const y = (ev.clientY - r.top) * (canvas.height / r.height);
    const ctx = painted.getContext('2d');
    ctx.fillStyle = '#ff3b3b';
    ctx.beginPath(); ctx.arc(x, y, Number(brush.value) * (canvas.width / Math.max(r.width, 1)) / 2, 0, Math.PI * 2); ctx.fill();
    redraw();
  };
  canvas.addEventListener('pointerdown', (ev) => { drawing = true; canvas.setPointerCapture(ev.pointerId); paint(ev); });
  canvas.addEventListener('pointermove', paint);
  canvas.addEventListener('pointerup', () => { drawing = false; });
  clearMask.addEventListener('click', () => { if (painted) painted.getContext('2d').clearRect(0, 0, painted.width, painted.height); redraw(); });

  function maskBlob() {
    // the API's convention: transparent mask pixels are the area to change
    const m = document.createElement('canvas');
    m.width = painted.width; m.height = painted.height;
    const ctx = m.getContext('2d');
    ctx.fillStyle = '#000'; ctx.fillRect(0, 0, m.width, m.height);
    ctx.globalCompositeOperation = 'destination-out';
    ctx.drawImage(painted, 0, 0);
    return new Promise((resolve) => m.toBlob(resolve, 'image/png'));
  }

  function optionsFor(id) {
    const prompt = () => field('Prompt', h('textarea', { name: 'prompt', dataset: { param: 'prompt' }, rows: 2 }));
    switch (id) {
      case 'remove-background': return [field('Output', select('output', [['cutout', 'Cutout (transparent)'], ['mask', 'Mask'], ['solid', 'Solid colour']], 'cutout')),
        field('Background colour (solid)', h('input', { name: 'bg_color', type: 'text', value: '#ffffff', dataset: { param: 'bg_color' } }))];
      case 'upscale': return [field('Scale', select('scale', [['2', '2×'], ['4', '4×']], '2'))];
      case 'inpaint': return [prompt(), h('div', { class: 'mask-wrap' }, canvas), h('div', { class: 'row' }, field('Brush size', brush), clearMask)];
      case 'edit': return [prompt(), field('More reference images (optional)', extraRefs), field('Input fidelity', select('input_fidelity', ['low', 'high'], 'low'))];
      case 'style-transfer': return [field('Style', select('style', styles.map((s) => [s.name, s.title || s.name]), undefined)), prompt(),
        field('Strength', h('input', { name: 'strength', type: 'number', min: 0.05, max: 1, step: 0.05, value: 0.6 }))];
      case 'face-swap': return [field('Source face image', h('input', { type: 'file', accept: 'image/*', name: 'source', dataset: { param: 'source' } }), 'The face to put onto the image above.'),
        h('div', { class: 'field' }, h('label', { for: 'all-faces' }, h('input', { type: 'checkbox', name: 'all_faces', id: 'all-faces' }), ' All faces'))];
      case 'edit-ops': return [field('Operations (JSON list)', h('textarea', { name: 'ops', dataset: { param: 'ops' }, rows: 3 }, '[{"op": "rotate", "degrees": 90}, {"op": "grayscale"}]'))];
      default: return [];
    }
  }
  function showOptions() { options.replaceChildren(...optionsFor(tool.value)); if (tool.value === 'inpaint') setupCanvas(); }
  tool.addEventListener('change', showOptions);

  function setImage(file) {
    image = file;
    before.src = URL.createObjectURL(file); before.hidden = false;
    after.hidden = true;
    if (tool.value === 'inpaint') setupCanvas();
  }
  fileInput.addEventListener('change', () => { if (fileInput.files[0]) setImage(fileInput.files[0]); });

  const form = h('form', { class: 'panel', 'aria-labelledby': 'page-title' },
    h('h1', { id: 'page-title' }, 'Edit & tools'),
    available.length ? null : h('p', {}, 'Not available on this gateway.'),
    field('Image', fileInput, incoming ? `From the gallery: ${incoming.id}` : 'Choose an image, or send one here from the gallery.'),
    field('Tool', tool), options, h('div', { class: 'row' }, run), status);
  const compare = h('section', { class: 'panel', 'aria-label': 'Before and after' }, h('h2', {}, 'Before / after'),
    h('div', { class: 'cols' }, h('figure', {}, before, h('figcaption', {}, 'Before')), h('figure', {}, after, h('figcaption', {}, 'After'))));
  root.append(form, compare);
  showOptions();
  if (incoming) {
    try { setImage(await urlToFile(incoming.url, `${incoming.id}.png`)); } catch (err) { showError(form, err); }
  }

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearError(form);
    if (!image) { showError(form, Object.assign(new Error('choose an image first'), { param: 'image' }), { form }); return; }
    const [id, , path] = TOOLS.find(([t]) => t === tool.value);
    const fd = new FormData();
    const fields = new FormData(form);
    if (id === 'edit' || id === 'inpaint') {
      const refs = id === 'edit' ? [...extraRefs.files] : [];
      if (refs.length) { fd.append('image[]', image); refs.forEach((f) => fd.append('image[]', f)); } else fd.append('image', image);
      fd.append('prompt', fields.get('prompt') || '');
      if (id === 'inpaint') {
        if (!painted) { showError(form, new Error('paint the area to change first'), { form }); return; }
        fd.append('mask', await maskBlob(), 'mask.png');
      } else fd.append('input_fidelity', fields.get('input_fidelity'));
      fd.append('size', 'auto');
    } else if (id === 'face-swap') {
      const source = form.querySelector('[name="source"]').files[0];
      if (!source) { showError(form, Object.assign(new Error('choose the source face image'), { param: 'source' }), { form }); return; }
      fd.append('source', source); fd.append('target', image);
      if (form.querySelector('[name="all_faces"]').checked) fd.append('all_faces', 'true');
    } else {
      fd.append('image', image);
      for (const [k, v] of fields.entries()) {
        if (['image', 'tool', 'brush', 'references'].includes(k) || v instanceof File) continue;
        if (id === 'remove-background' && k === 'bg_color' && fields.get('output') !== 'solid') continue;
        if (v !== '') fd.append(k, v);
      }
    }
    run.disabled = true; status.textContent = 'Working…';
    try {
      const res = await api(path, { method: 'POST', form: fd });
      const d = res.data[0];
      after.src = d.b64_json ? dataUrl(d.b64_json, res.output_format) : d.url;
      after.hidden = false; after.dataset.asset = d.id;
      status.textContent = `Done: ${d.id}`;
      run.disabled = false;
    } catch (err) {
      run.disabled = false;
      status.textContent = 'Failed.';
      showError(form, err, { form, disable: [run] });
    }
  });
}

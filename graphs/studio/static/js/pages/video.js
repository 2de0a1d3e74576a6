// Video: text-to-video and image-to-video (issue #18's /v1/videos), gated on capabilities.
import { api, apiUrl, getKey, hasEndpoint } from '../api.js';
import { clearError, field, h, select, showError, takeHandoff, unavailable, urlToFile } from '../ui.js';

export async function render(root) {
  if (!hasEndpoint('/v1/videos')) {
    root.append(unavailable('Video', 'Text-to-video and image-to-video need the gateway\'s /v1/videos API.'));
    return;
  }
  const incoming = takeHandoff('video');
  const prompt = h('textarea', { name: 'prompt', dataset: { param: 'prompt' }, rows: 2 });
  const image = h('input', { type: 'file', accept: 'image/*', name: 'input_reference', dataset: { param: 'input_reference' } });
  const seconds = select('seconds', ['1', '2', '4', '8'], '2');
  const fps = h('input', { type: 'number', name: 'fps', min: 1, max: 60, value: 8 });
  const camera = select('camera', [['', 'Static'], 'pan_left', 'pan_right', 'zoom_in', 'zoom_out', 'orbit'], '');
  const motion = h('input', { type: 'number', name: 'motion', min: 0, max: 1, step: 0.1, value: 0.5 });
  const go = h('button', { type: 'submit', class: 'primary' }, 'Make video');
  const progress = h('progress', { max: 100, value: 0, 'aria-label': 'Video progress' });
  const player = h('video', { controls: true, hidden: true, 'aria-label': 'Generated video' });
  const form = h('form', { class: 'panel', 'aria-labelledby': 'page-title' }, h('h1', { id: 'page-title' }, 'Video'),
    field('Prompt', prompt), field('Start image (optional)', image, incoming ? `From the gallery: ${incoming.id}` : null),
    h('div', { class: 'row' }, field('Seconds', seconds), field('Frames per second', fps), field('Camera', camera), field('Motion', motion)), go, progress, player);
  root.append(form);
  let startImage = null;
  if (incoming) startImage = await urlToFile(incoming.url, `${incoming.id}.png`);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault(); clearError(form); go.disabled = true;
    try {
      const fd = new FormData(form);
      const file = image.files[0] || startImage;
      fd.delete('input_reference');
      if (file) fd.append('input_reference', file);
      let video = await api('/v1/videos', { method: 'POST', form: fd });
      while (!['completed', 'failed'].includes(video.status)) {
        progress.value = video.progress || 0;
        await new Promise((r) => setTimeout(r, 1000));
        video = await api(`/v1/videos/${encodeURIComponent(video.id)}`);
      }
      if (video.status === 'failed') throw new Error(video.error?.message || 'the video failed');
      progress.value = 100;
      const res = await fetch(apiUrl(`/v1/videos/${encodeURIComponent(video.id)}/content`), { headers: { Authorization: `Bearer ${getKey()}` } });
      player.src = URL.createObjectURL(await res.blob()); player.hidden = false;
    } catch (err) { showError(form, err, { form, disable: [go] }); } finally { go.disabled = false; }
  });
}

// Video: text-to-video and image-to-video through the gateway's Videos API (OpenAI's shape:
// POST /v1/videos, poll GET /v1/videos/{id}, play its content), gated on capabilities.
import { api, capabilities, hasEndpoint } from '../api.js';
import { clearError, field, h, select, showError, takeHandoff, unavailable, urlToFile } from '../ui.js';

const CAMERAS = ['static', 'pan-left', 'pan-right', 'tilt-up', 'tilt-down', 'zoom-in', 'zoom-out', 'dolly-in', 'dolly-out'];
const wait = (ms, signal) => new Promise((resolve, reject) => {
  const t = setTimeout(resolve, ms);
  signal.addEventListener('abort', () => { clearTimeout(t); reject(new DOMException('stopped', 'AbortError')); }, { once: true });
});

function sizes(l) {
  const lo = l.min_side || 64; const hi = l.max_side || 1024; const m = l.multiple || 32;
  const out = new Set([`${l.default_width || lo}x${l.default_height || lo}`]);
  for (const [w, hh] of [[96, 64], [64, 96], [128, 96], [256, 160], [512, 320], [768, 512], [512, 768]]) {
    if (w >= lo && hh >= lo && w <= hi && hh <= hi && w % m === 0 && hh % m === 0) out.add(`${w}x${hh}`);
  }
  return [...out];
}

export async function render(root) {
  if (!hasEndpoint('/v1/videos')) {
    root.append(unavailable('Video', 'Text-to-video and image-to-video need the gateway\'s /v1/videos API.'));
    return undefined;
  }
  const caps = await capabilities();
  const info = caps.deployments.video || { limits: {} };
  const l = info.limits || {};
  const incoming = takeHandoff('video');
  const prompt = h('textarea', { name: 'prompt', dataset: { param: 'prompt' }, rows: 2, required: true });
  const image = h('input', { type: 'file', accept: 'image/*', name: 'input_reference', dataset: { param: 'input_reference' } });
  const seconds = h('input', { type: 'number', name: 'seconds', min: 0.5, max: l.max_seconds || 10, step: 0.5, value: 2 });
  const fps = h('input', { type: 'number', name: 'fps', min: l.min_fps || 8, max: l.max_fps || 30, value: l.min_fps || 8 });
  const size = select('size', sizes(l), sizes(l)[0]);
  const steps = h('input', { type: 'number', name: 'steps', min: 1, max: l.max_steps || 100, value: Math.min(l.default_steps || 8, 8) });
  const camera = select('camera', [['', 'Default'], ...CAMERAS], '');
  const motion = h('input', { type: 'number', name: 'motion', min: 0, max: 1, step: 0.05, value: 0.5 });
  const go = h('button', { type: 'submit', class: 'primary' }, 'Make video');
  const stop = h('button', { type: 'button', disabled: true }, 'Cancel');
  const status = h('p', { class: 'muted', role: 'status', 'aria-live': 'polite' });
  const progress = h('progress', { max: 100, value: 0, 'aria-label': 'Video progress', hidden: true });
  const player = h('video', { controls: true, hidden: true, playsinline: true, muted: true, preload: 'auto', 'aria-label': 'Generated video', id: 'video-player' });
  const form = h('form', { class: 'panel', 'aria-labelledby': 'page-title' }, h('h1', { id: 'page-title' }, 'Video'),
    h('p', { class: 'muted' }, `Model: ${info.name || 'video'}${info.tiny ? ' (tiny, random weights)' : ''}. Without a start image: text-to-video.`),
    field('Prompt', prompt), field('Start image (optional)', image, incoming ? `From the gallery: ${incoming.id}` : null),
    h('div', { class: 'row' }, field('Seconds', seconds), field('Frames per second', fps), field('Size', size), field('Steps', steps), field('Camera', camera), field('Motion (0–1)', motion)),
    h('div', { class: 'row' }, go, stop), progress, status, player);
  root.append(form);
  let startImage = null;
  if (incoming) {
    prompt.value = incoming.prompt || '';
    startImage = await urlToFile(incoming.url, `${incoming.id}.png`);
  }
  let controller = null;
  stop.addEventListener('click', () => { if (controller) controller.abort(); });
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault(); clearError(form); go.disabled = true; stop.disabled = false;
    controller = new AbortController();
    const { signal } = controller;
    progress.hidden = false; progress.value = 0; player.hidden = true;
    status.textContent = 'Queued…';
    let video = null;
    try {
      const fd = new FormData(form);
      const file = image.files[0] || startImage;
      fd.delete('input_reference');
      if (file) fd.append('input_reference', file);
      video = await api('/v1/videos', { method: 'POST', form: fd, signal });
      while (!['completed', 'failed'].includes(video.status)) {
        progress.value = video.progress || 0;
        status.textContent = `${video.status === 'queued' ? 'Queued' : 'Rendering'}… ${video.progress || 0}%`;
        await wait(1000, signal);
        video = await api(`/v1/videos/${encodeURIComponent(video.id)}`, { signal });
      }
      if (video.status === 'failed') throw new Error(video.error?.message || 'the video failed');
      progress.value = 100;
      // the signed URL: a media element sends no Authorization header
      player.src = video.metadata?.urls?.video;
      // the clip has no sound: its caption track says what it shows (the prompt)
      const vtt = `WEBVTT\n\n00:00.000 --> 59:59.000\n${(video.prompt || prompt.value).replace(/-->/g, '->')} (no sound)\n`;
      player.replaceChildren(h('track', { kind: 'captions', srclang: 'en', label: 'Prompt', src: URL.createObjectURL(new Blob([vtt], { type: 'text/vtt' })) }));
      player.dataset.video = video.id;
      player.hidden = false;
      status.textContent = `Done: ${video.id}, ${video.seconds} s at ${video.fps} fps, ${video.size}.`;
      go.disabled = false;
    } catch (err) {
      if (err.name === 'AbortError' && video && video.job_id) {
        try { await api(`/v1/jobs/${encodeURIComponent(video.job_id)}`, { method: 'DELETE' }); } catch { /* already ended */ }
      }
      status.textContent = err.name === 'AbortError' ? 'Cancelled.' : 'Failed.';
      go.disabled = false; // showError disables it again during a Retry-After
      showError(form, err, { form, disable: [go] });
    } finally {
      stop.disabled = true; progress.hidden = true; controller = null;
    }
  });
  return () => { if (controller) controller.abort(); };
}

// Chat: messages with image uploads (drag and drop, paste, file picker), the reply's images,
// actions as buttons, suggestions as chips, the session list, progress while a plan runs.
import { api, sse } from '../api.js';
import { clearError, field, fmtTime, h, handoff, showError } from '../ui.js';

export async function render(root, { navigate }) {
  let sessionId = null;
  let files = [];
  const list = h('ul', { class: 'sessions', 'aria-label': 'Chat sessions' });
  const messages = h('div', { class: 'messages', role: 'log', tabindex: 0, 'aria-live': 'polite', 'aria-label': 'Messages' });
  const input = h('textarea', { name: 'message', dataset: { param: 'message' }, rows: 2, placeholder: 'e.g. a cat in a crown, then remove the background' });
  const picker = h('input', { type: 'file', accept: 'image/*', multiple: true, name: 'image' });
  const attached = h('div', { class: 'previews', role: 'group', 'aria-label': 'Attached images' });
  const send = h('button', { type: 'submit', class: 'primary' }, 'Send');
  const progress = h('progress', { hidden: true, 'aria-label': 'Chat progress' });
  const status = h('p', { class: 'muted', role: 'status', 'aria-live': 'polite' });
  const suggestions = h('div', { class: 'actions', role: 'group', 'aria-label': 'Suggestions' });
  const drop = h('div', { class: 'dropzone' }, field('Message', input), field('Attach images (or drop / paste them here)', picker), attached);
  const form = h('form', { 'aria-label': 'Send a message' }, drop, h('div', { class: 'row' }, send), progress, status);
  const newChat = h('button', { type: 'button' }, 'New chat');

  root.append(h('div', { class: 'chat' },
    h('aside', { class: 'panel', 'aria-label': 'Sessions' }, h('h2', {}, 'Sessions'), newChat, list),
    h('section', { class: 'panel', 'aria-labelledby': 'page-title' }, h('h1', { id: 'page-title' }, 'Chat'), messages, suggestions, form)));

  function attach(newFiles) {
    files = files.concat([...newFiles].filter((f) => f.type.startsWith('image/')));
    attached.replaceChildren(...files.map((f, i) => h('figure', {}, h('img', { src: URL.createObjectURL(f), alt: `Attachment ${i + 1}: ${f.name}` }),
      h('button', { type: 'button', onclick: () => { files.splice(i, 1); attach([]); } }, `Remove ${f.name}`))));
  }
  picker.addEventListener('change', () => { attach(picker.files); picker.value = ''; });
  drop.addEventListener('dragover', (ev) => { ev.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (ev) => { ev.preventDefault(); drop.classList.remove('over'); attach(ev.dataTransfer.files); });
  input.addEventListener('paste', (ev) => { const f = [...(ev.clipboardData?.files || [])]; if (f.length) { ev.preventDefault(); attach(f); } });

  function bubble(role, text, images = [], extra = null) {
    const el = h('div', { class: `msg ${role}` }, h('div', {}, text),
      images.length ? h('div', {}, images.map((img, i) => h('img', { src: img.url, alt: `${role === 'user' ? 'Uploaded' : 'Reply'} image ${i + 1}`, class: 'chat-image', dataset: { asset: img.id || '' } }))) : null,
      extra);
    messages.append(el);
    messages.scrollTop = messages.scrollHeight;
    return el;
  }

  function actionsFor(reply) {
    if (!reply.actions?.length) return null;
    return h('div', { class: 'actions', role: 'group', 'aria-label': 'Actions' }, reply.actions.map((a) => {
      if (a.type === 'link') return h('a', { class: 'button', href: a.data.url || '#', download: '' }, a.label);
      return h('button', { type: 'button', class: 'action', dataset: { action: a.id }, onclick: () => ask(a.data.message || a.label, [], a.data.context) }, a.label);
    }).concat((reply.data?.images || []).slice(0, 1).map((img) => h('button', { type: 'button', onclick: () => { handoff({ page: 'tools', id: img.id, url: img.url }); navigate('tools'); } }, 'Open in tools'))));
  }

  async function follow(jobId) {
    progress.hidden = false; progress.max = 1;
    for await (const ev of sse(`/v1/jobs/${encodeURIComponent(jobId)}/events`)) {
      progress.value = ev.data.progress || 0;
      status.textContent = ev.data.step || ev.data.status;
      if (['succeeded', 'failed', 'cancelled'].includes(ev.event)) return ev.data;
    }
    return null;
  }

  async function ask(message, uploads, context) {
    clearError(form);
    bubble('user', message, uploads.map((f) => ({ url: URL.createObjectURL(f) })));
    send.disabled = true; progress.hidden = false; progress.removeAttribute('value');
    status.textContent = 'Planning…';
    suggestions.replaceChildren();
    try {
      let reply;
      if (uploads.length) {
        const fd = new FormData();
        fd.append('message', message);
        if (sessionId) fd.append('session_id', sessionId);
        if (context) fd.append('context', JSON.stringify(context));
        uploads.forEach((f) => fd.append('image', f));
        reply = await api('/v1/chat', { method: 'POST', form: fd });
      } else {
        reply = await api('/v1/chat', { method: 'POST', json: { message, session_id: sessionId || undefined, context: context || undefined } });
      }
      sessionId = reply.session_id;
      if (reply.type === 'processing' && reply.data?.job_id) {
        bubble('assistant', reply.message);
        const job = await follow(reply.data.job_id);
        const images = (job?.assets || []).map((a) => ({ id: a.id, url: a.url }));
        bubble('assistant', job?.status === 'succeeded' ? 'Done.' : `The job ${job?.status}: ${job?.error || ''}`, images);
      } else {
        bubble('assistant', reply.message, reply.data?.images || [], actionsFor(reply));
      }
      suggestions.replaceChildren(...(reply.suggestions || []).map((s) => h('button', { type: 'button', class: 'chip', onclick: () => { input.value = s; input.focus(); } }, s)));
      status.textContent = '';
      loadSessions();
    } catch (err) {
      status.textContent = '';
      showError(form, err, { form, disable: [send] });
    } finally {
      send.disabled = send.disabled && !!form.querySelector('.retry');
      progress.hidden = true;
    }
  }

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const message = input.value.trim();
    if (!message) { showError(form, Object.assign(new Error('type a message'), { param: 'message' }), { form }); return; }
    const uploads = files; files = []; attach([]); input.value = '';
    ask(message, uploads);
  });

  async function open(id) {
    try {
      const s = await api(`/v1/sessions/${encodeURIComponent(id)}`);
      sessionId = s.id; messages.replaceChildren();
      (s.messages || []).forEach((m) => bubble(m.role === 'user' ? 'user' : 'assistant', m.content, m.images || []));
    } catch (err) { showError(form, err); }
  }

  async function loadSessions() {
    try {
      const res = await api('/v1/sessions?limit=30');
      list.replaceChildren(...res.data.map((s) => h('li', {}, h('button', { type: 'button', onclick: () => open(s.id), 'aria-current': s.id === sessionId ? 'true' : null, title: fmtTime(s.updated_at) }, s.title || s.id))));
    } catch (err) { showError(form, err); }
  }
  newChat.addEventListener('click', () => { sessionId = null; messages.replaceChildren(); suggestions.replaceChildren(); input.focus(); });
  await loadSessions();
}

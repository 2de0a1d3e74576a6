// Datasets & training: gated on capabilities (the API is not designed yet).
import { hasEndpoint } from '../api.js';
import { h, unavailable } from '../ui.js';

export async function render(root) {
  if (!hasEndpoint('/v1/datasets')) {
    root.append(unavailable('Datasets & training', 'Dataset upload, captioning and LoRA training need the gateway\'s /v1/datasets API.'));
    return;
  }
  root.append(h('section', { class: 'panel' }, h('h1', { id: 'page-title' }, 'Datasets & training'),
    h('p', {}, 'This gateway lists /v1/datasets; this studio does not have a page for it yet.')));
}

// Lab: workflow graphs (the gateway's /v1/workflows) as nodes and edges in drawflow (vendored,
// vendor/README.md). Drag nodes and connect ports with the mouse, or use the side panel
// (keyboard): add a node, pick its inputs, edit its params. Validate shows each problem on its
// node; Run follows the job's per-node events (SSE); saved workflows load and save.
import { api, hasEndpoint, sse } from '../api.js';
import { clearError, field, h, select, showError, takeHandoff, unavailable } from '../ui.js';

const VENDOR = new URL('../../vendor/drawflow/', import.meta.url);
const NODE_ID = /^[A-Za-z_][A-Za-z0-9_-]{0,63}$/;
// params shown first in the side panel (the rest under "More parameters")
const COMMON = new Set(['text', 'prompt', 'negative_prompt', 'size', 'steps', 'seed', 'guidance_scale', 'scale', 'style', 'strength', 'asset_id', 'mode', 'model', 'n', 'preset', 'op', 'operations']);

async function loadDrawflow() {
  if (!document.querySelector('link[data-vendor="drawflow"]')) {
    document.head.append(h('link', { rel: 'stylesheet', href: new URL('drawflow.min.css', VENDOR).href, dataset: { vendor: 'drawflow' } }));
  }
  await import(new URL('drawflow.min.js', VENDOR).href); // UMD: defines self.Drawflow
  return self.Drawflow;
}

// The JSON-schema type of a params property (pydantic writes optionals as anyOf [T, null]).
function schemaOf(prop) {
  if (prop.anyOf) return { ...prop, ...(prop.anyOf.find((p) => p.type !== 'null') || {}) };
  return prop;
}

// "the workflow has 2 problems: node 'g': ...; node 'u': ..." -> [{node, message}]
export function problemsOf(err) {
  const text = String(err.message || '').replace(/^the workflow (is invalid|has \d+ problems): /, '');
  const parts = text.split(/; (?=node '|outputs\[|the |[A-Za-z_][\w-]*\.[\w-]+ feeds )/);
  return parts.map((p) => {
    const m = p.match(/^node '([^']+)': (.*)$/s);
    return m ? { node: m[1], message: m[2] } : { node: null, message: p };
  });
}

export async function render(root) {
  if (!hasEndpoint('/v1/workflows/validate')) {
    root.append(unavailable('Lab', 'The workflow graph editor needs the gateway\'s /v1/workflows API.'));
    return undefined;
  }
  const [Drawflow, ops, saved] = await Promise.all([loadDrawflow(), api('/v1/workflows/ops'), api('/v1/workflows?limit=200')]);
  const OPS = Object.fromEntries(ops.data.map((o) => [o.op, o]));

  // --- state: the graph ({nodes: {id: {op, params, in}}, outputs}) and drawflow's ids ---------
  let graph = { nodes: {}, outputs: [] };
  let current = null; // the saved workflow loaded (id, name, builtin)
  const dfOf = {}; // node id -> drawflow id
  const idOf = {}; // drawflow id -> node id
  let loading = false;
  let selected = null;

  // --- layout -----------------------------------------------------------------------------
  const canvas = h('div', { class: 'wf-canvas', id: 'wf-canvas', role: 'region', 'aria-label': 'Workflow graph (drag nodes; drag from an output dot to an input dot to connect)' });
  const opSelect = select('op', ops.data.map((o) => [o.op, o.available ? o.op : `${o.op} (not available)`]), 'generate');
  const addBtn = h('button', { type: 'button' }, 'Add node');
  const nodeSelect = select('node', [], '');
  const nodeBox = h('div', { id: 'wf-node-editor' });
  const savedSelect = select('saved', [], '');
  const loadBtn = h('button', { type: 'button' }, 'Load');
  const newBtn = h('button', { type: 'button' }, 'New');
  const name = h('input', { name: 'name', dataset: { param: 'name' }, maxlength: 200, placeholder: 'my workflow' });
  const saveBtn = h('button', { type: 'button' }, 'Save');
  const zoomIn = h('button', { type: 'button', 'aria-label': 'Zoom in' }, '+');
  const zoomOut = h('button', { type: 'button', 'aria-label': 'Zoom out' }, '−');
  const fitBtn = h('button', { type: 'button' }, 'Fit');
  const validateBtn = h('button', { type: 'button' }, 'Validate');
  const runBtn = h('button', { type: 'button', class: 'primary' }, 'Run');
  const cancelBtn = h('button', { type: 'button', disabled: true }, 'Cancel');
  const status = h('p', { class: 'muted', role: 'status', 'aria-live': 'polite', id: 'wf-status' });
  const problems = h('ul', { class: 'wf-problems', id: 'wf-problems' });
  const outputs = h('div', { class: 'previews', id: 'wf-outputs', role: 'group', 'aria-label': 'Workflow outputs' });
  const panel = h('section', { class: 'panel', 'aria-labelledby': 'page-title' },
    h('h1', { id: 'page-title' }, 'Lab'),
    h('div', { class: 'row' }, field('Saved workflows', savedSelect), loadBtn, newBtn, field('Name', name), saveBtn),
    h('div', { class: 'wf-layout' },
      h('div', { class: 'wf-main' }, canvas, h('div', { class: 'row wf-zoom' }, zoomIn, zoomOut, fitBtn)),
      h('div', { class: 'wf-side' },
        h('h2', {}, 'Nodes'),
        h('div', { class: 'row' }, field('Op', opSelect), addBtn),
        field('Node', nodeSelect),
        nodeBox)),
    h('div', { class: 'row' }, validateBtn, runBtn, cancelBtn),
    status, problems, h('h2', {}, 'Outputs'), outputs);
  root.append(panel);

  const editor = new Drawflow(canvas);
  editor.reroute = false;
  editor.start();
  zoomIn.addEventListener('click', () => editor.zoom_in());
  zoomOut.addEventListener('click', () => editor.zoom_out());
  fitBtn.addEventListener('click', () => fit());

  // --- helpers ----------------------------------------------------------------------------
  const inPorts = (op) => Object.keys(OPS[op]?.inputs || {});
  const outPorts = (op) => Object.keys(OPS[op]?.outputs || {});
  const nodeEl = (id) => canvas.querySelector(`#node-${dfOf[id]}`);
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

  function nodeHtml(id, op) {
    const ins = inPorts(op).map((p) => `${p} (${OPS[op].inputs[p].type})`).join(', ') || '—';
    const outs = outPorts(op).map((p) => `${p} (${OPS[op].outputs[p]})`).join(', ') || '—';
    return `<div class="wf-title"><strong>${esc(id)}</strong> <span class="wf-op">${esc(op)}</span></div>`
      + `<div class="wf-ports">in: ${esc(ins)}<br>out: ${esc(outs)}</div>`
      + `<progress class="wf-progress" max="1" value="0" aria-label="Progress of node ${esc(id)}"></progress>`
      + '<div class="wf-msg"></div>';
  }

  function setNodeState(id, state, message = '') {
    const el = nodeEl(id);
    if (!el) return;
    el.classList.remove('wf-invalid', 'wf-running', 'wf-done', 'wf-failed', 'wf-skipped');
    if (state) el.classList.add(`wf-${state}`);
    el.dataset.state = state || '';
    const msg = el.querySelector('.wf-msg');
    msg.textContent = message;
    msg.classList.toggle('error', state === 'invalid' || state === 'failed');
    if (state !== 'running' && state !== 'done') el.querySelector('.wf-progress').value = 0;
    if (state === 'done') el.querySelector('.wf-progress').value = 1;
  }
  const resetStates = () => Object.keys(graph.nodes).forEach((id) => setNodeState(id, null));

  function freshId(op) {
    let i = 1;
    while (graph.nodes[`${op}${i}`]) i += 1;
    return `${op}${i}`;
  }

  function addNode(id, node, x, y) {
    const op = node.op;
    const dfId = editor.addNode(op, inPorts(op).length, outPorts(op).length, x, y, 'wf-node', { id }, nodeHtml(id, op));
    dfOf[id] = dfId; idOf[dfId] = id;
    graph.nodes[id] = { op, params: { ...(node.params || {}) }, in: { ...(node.in || {}) } };
    if (node.preset) graph.nodes[id].preset = node.preset;
    const el = nodeEl(id);
    el.dataset.node = id;
    return dfId;
  }

  function connect(src, srcPort, dst, dstPort) {
    const o = outPorts(graph.nodes[src]?.op).indexOf(srcPort);
    const i = inPorts(graph.nodes[dst]?.op).indexOf(dstPort);
    if (o < 0 || i < 0) return;
    editor.addConnection(dfOf[src], dfOf[dst], `output_${o + 1}`, `input_${i + 1}`);
  }

  function disconnectInput(dst, dstPort) {
    const ref = graph.nodes[dst]?.in[dstPort];
    if (!ref) return;
    const [src, srcPort] = ref.split('.');
    const o = outPorts(graph.nodes[src]?.op || '').indexOf(srcPort);
    const i = inPorts(graph.nodes[dst].op).indexOf(dstPort);
    delete graph.nodes[dst].in[dstPort];
    if (o >= 0 && i >= 0 && dfOf[src] !== undefined) {
      loading = true;
      try { editor.removeSingleConnection(dfOf[src], dfOf[dst], `output_${o + 1}`, `input_${i + 1}`); } finally { loading = false; }
    }
  }

  // Lay the graph out in columns by depth (a node right of every node it reads).
  function load(workflow) {
    loading = true;
    try {
      editor.clear();
      Object.keys(dfOf).forEach((k) => delete dfOf[k]);
      Object.keys(idOf).forEach((k) => delete idOf[k]);
      graph = { nodes: {}, outputs: [...(workflow.outputs || [])] };
      const nodes = workflow.nodes || {};
      const depth = {};
      const depthOf = (id, seen = new Set()) => {
        if (depth[id] !== undefined) return depth[id];
        if (seen.has(id)) return 0;
        seen.add(id);
        const ins = Object.values(nodes[id]?.in || {}).map((r) => r.split('.')[0]).filter((s) => nodes[s]);
        depth[id] = ins.length ? 1 + Math.max(...ins.map((s) => depthOf(s, seen))) : 0;
        return depth[id];
      };
      const rows = {};
      for (const id of Object.keys(nodes)) {
        const d = depthOf(id);
        rows[d] = (rows[d] || 0) + 1;
        addNode(id, nodes[id], 20 + d * 215, 20 + (rows[d] - 1) * 160);
      }
      for (const [id, node] of Object.entries(nodes)) {
        for (const [port, ref] of Object.entries(node.in || {})) {
          const [src, srcPort] = ref.split('.');
          if (graph.nodes[src]) connect(src, srcPort, id, port);
        }
      }
    } finally { loading = false; }
    refreshNodeList(Object.keys(graph.nodes)[0] || '');
    fit();
  }

  // Zoom so that every node is in view (the phone's canvas is narrow), never above 1.
  function fit() {
    const els = [...canvas.querySelectorAll('.drawflow-node')];
    if (!els.length) return;
    const right = Math.max(...els.map((el) => el.offsetLeft + el.offsetWidth)) + 20;
    const bottom = Math.max(...els.map((el) => el.offsetTop + el.offsetHeight)) + 20;
    editor.zoom = Math.max(0.3, Math.min(1, canvas.clientWidth / right, canvas.clientHeight / bottom));
    editor.canvas_x = 0; editor.canvas_y = 0;
    editor.zoom_refresh();
  }

  // --- drawflow -> graph --------------------------------------------------------------------
  editor.on('connectionCreated', ({ output_id: o, input_id: i, output_class: oc, input_class: ic }) => {
    if (loading) return;
    const src = idOf[o]; const dst = idOf[i];
    const srcPort = outPorts(graph.nodes[src].op)[Number(oc.split('_')[1]) - 1];
    const dstPort = inPorts(graph.nodes[dst].op)[Number(ic.split('_')[1]) - 1];
    const old = graph.nodes[dst].in[dstPort];
    if (old && old !== `${src}.${srcPort}`) disconnectInput(dst, dstPort); // one source per input
    graph.nodes[dst].in[dstPort] = `${src}.${srcPort}`;
    if (selected === dst) drawNodeEditor();
  });
  editor.on('connectionRemoved', ({ output_id: o, input_id: i, output_class: oc, input_class: ic }) => {
    if (loading) return;
    const src = idOf[o]; const dst = idOf[i];
    if (!graph.nodes[dst] || !graph.nodes[src]) return;
    const srcPort = outPorts(graph.nodes[src].op)[Number(oc.split('_')[1]) - 1];
    const dstPort = inPorts(graph.nodes[dst].op)[Number(ic.split('_')[1]) - 1];
    if (graph.nodes[dst].in[dstPort] === `${src}.${srcPort}`) delete graph.nodes[dst].in[dstPort];
    if (selected === dst) drawNodeEditor();
  });
  editor.on('nodeRemoved', (dfId) => {
    const id = idOf[dfId];
    if (!id) return;
    delete graph.nodes[id]; delete dfOf[id]; delete idOf[dfId];
    for (const node of Object.values(graph.nodes)) {
      for (const [port, ref] of Object.entries(node.in)) if (ref.split('.')[0] === id) delete node.in[port];
    }
    graph.outputs = graph.outputs.filter((r) => r.split('.')[0] !== id);
    refreshNodeList(Object.keys(graph.nodes)[0] || '');
  });
  editor.on('nodeSelected', (dfId) => { if (idOf[dfId]) refreshNodeList(idOf[dfId]); });

  // --- side panel: the selected node's inputs and params -------------------------------------
  function refreshNodeList(choose) {
    const ids = Object.keys(graph.nodes);
    nodeSelect.replaceChildren(...(ids.length ? ids.map((id) => h('option', { value: id }, `${id} (${graph.nodes[id].op})`)) : [h('option', { value: '' }, 'No nodes yet')]));
    selected = ids.includes(choose) ? choose : (ids[0] || null);
    if (selected) nodeSelect.value = selected;
    drawNodeEditor();
  }

  function paramControl(key, prop, value) {
    const p = schemaOf(prop);
    let control;
    if (p.enum) control = select(key, [['', '(default)'], ...p.enum.map(String)], value ?? '');
    else if (p.type === 'boolean') control = select(key, [['', '(default)'], ['true', 'yes'], ['false', 'no']], value === undefined ? '' : String(value));
    else if (p.type === 'integer' || p.type === 'number') {
      control = h('input', { type: 'number', name: key, step: p.type === 'integer' ? 1 : 'any', value: value ?? '', placeholder: p.default !== undefined && p.default !== null ? `default ${p.default}` : '' });
    } else if (p.type === 'string' && (p.maxLength || 0) > 200) control = h('textarea', { name: key, rows: 2 }, value ?? '');
    else if (p.type === 'string') control = h('input', { name: key, value: value ?? '', placeholder: p.default ? `default ${p.default}` : '' });
    else control = h('input', { name: key, value: value === undefined ? '' : JSON.stringify(value), placeholder: 'JSON' });
    control.dataset.param = key;
    control.addEventListener('change', () => {
      const params = graph.nodes[selected].params;
      const raw = control.value;
      if (raw === '') { delete params[key]; return; }
      if (p.type === 'integer' || p.type === 'number') params[key] = Number(raw);
      else if (p.type === 'boolean') params[key] = raw === 'true';
      else if (p.enum || p.type === 'string') params[key] = raw;
      else { try { params[key] = JSON.parse(raw); } catch { params[key] = raw; } }
    });
    return field(key, control, p.description || null);
  }

  function drawNodeEditor() {
    if (!selected) { nodeBox.replaceChildren(h('p', { class: 'muted' }, 'Add a node, or load a saved workflow.')); return; }
    const node = graph.nodes[selected];
    const spec = OPS[node.op] || { inputs: {}, params: {} };
    const inputs = Object.entries(spec.inputs).map(([port, want]) => {
      const sources = Object.entries(graph.nodes).filter(([id]) => id !== selected)
        .flatMap(([id, n]) => Object.entries(OPS[n.op]?.outputs || {}).filter(([, t]) => want.type === 'any' || t === want.type).map(([p]) => `${id}.${p}`));
      const cur = node.in[port] || '';
      const control = select(`in.${port}`, [['', want.required ? '(not connected)' : '(optional, not connected)'], ...sources, ...(cur && !sources.includes(cur) ? [cur] : [])], cur);
      control.addEventListener('change', () => {
        disconnectInput(selected, port);
        if (control.value) {
          const [src, srcPort] = control.value.split('.');
          graph.nodes[selected].in[port] = control.value;
          loading = true;
          try { connect(src, srcPort, selected, port); } finally { loading = false; }
        }
      });
      return field(`Input ${port} (${want.type})`, control);
    });
    const props = (spec.params && spec.params.properties) || {};
    const shown = (k) => COMMON.has(k) || node.params[k] !== undefined || Object.keys(props).length <= 6;
    const remove = h('button', { type: 'button' }, `Delete node ${selected}`);
    remove.addEventListener('click', () => editor.removeNodeId(`node-${dfOf[selected]}`));
    nodeBox.replaceChildren(
      h('p', { class: 'muted' }, spec.description || ''),
      ...inputs,
      h('fieldset', {}, h('legend', {}, `Parameters of ${selected}`),
        ...Object.entries(props).filter(([k]) => shown(k)).map(([k, prop]) => paramControl(k, prop, node.params[k])),
        Object.keys(props).some((k) => !shown(k)) ? h('details', {}, h('summary', {}, 'More parameters'),
          ...Object.entries(props).filter(([k]) => !shown(k)).map(([k, prop]) => paramControl(k, prop, node.params[k]))) : null),
      remove);
  }

  nodeSelect.addEventListener('change', () => { selected = nodeSelect.value; drawNodeEditor(); });
  addBtn.addEventListener('click', () => {
    const op = opSelect.value;
    const id = freshId(op);
    if (!NODE_ID.test(id)) return;
    const n = Object.keys(graph.nodes).length;
    addNode(id, { op }, 20 + (n % 3) * 215, 20 + Math.floor(n / 3) * 160);
    refreshNodeList(id);
  });

  // --- saved workflows ----------------------------------------------------------------------
  let savedList = saved.data;
  function drawSaved(choose) {
    savedSelect.replaceChildren(...savedList.map((w) => h('option', { value: w.id },
      `${w.name}${w.builtin ? ' (example)' : ''}${w.available ? '' : ' (not available here)'}`)));
    if (choose) savedSelect.value = choose;
  }
  drawSaved();
  function open(w) {
    current = w;
    name.value = w.builtin ? `${w.name} (copy)` : w.name;
    load(w.workflow);
    clearError(panel); problems.replaceChildren(); outputs.replaceChildren();
    status.textContent = `Loaded ${w.name}.`;
  }
  loadBtn.addEventListener('click', () => {
    const w = savedList.find((x) => x.id === savedSelect.value);
    if (w) open(w);
  });
  newBtn.addEventListener('click', () => { current = null; name.value = ''; load({ nodes: {} }); status.textContent = 'New workflow.'; });
  saveBtn.addEventListener('click', async () => {
    clearError(panel);
    try {
      const body = { name: name.value.trim() || 'Untitled workflow', workflow: workflowJson() };
      const w = current && !current.builtin
        ? await api(`/v1/workflows/${encodeURIComponent(current.id)}`, { method: 'PATCH', json: body })
        : await api('/v1/workflows', { method: 'POST', json: body });
      current = w;
      savedList = [...savedList.filter((x) => x.id !== w.id), w];
      drawSaved(w.id);
      status.textContent = `Saved as ${w.name} (${w.id}, version ${w.version}).`;
    } catch (err) { showError(panel, err, { form: panel }); }
  });

  function workflowJson() {
    const nodes = {};
    for (const [id, n] of Object.entries(graph.nodes)) {
      nodes[id] = { op: n.op };
      if (Object.keys(n.params).length) nodes[id].params = n.params;
      if (Object.keys(n.in).length) nodes[id].in = n.in;
      if (n.preset) nodes[id].preset = n.preset;
    }
    const outs = graph.outputs.filter((r) => nodes[r.split('.')[0]]);
    return outs.length ? { nodes, outputs: outs } : { nodes };
  }

  // --- validate / run -----------------------------------------------------------------------
  function showProblems(err) {
    const list = problemsOf(err);
    const byNode = {};
    for (const p of list) if (p.node && graph.nodes[p.node]) (byNode[p.node] ||= []).push(p.message);
    const first = (err.param || '').match(/^nodes\.([^.]+)/);
    if (first && graph.nodes[first[1]] && !byNode[first[1]]) byNode[first[1]] = [err.message];
    for (const [id, msgs] of Object.entries(byNode)) setNodeState(id, 'invalid', msgs.join('; '));
    problems.replaceChildren(...list.map((p) => h('li', { class: 'error' }, p.node ? `${p.node}: ${p.message}` : p.message)));
    const bad = Object.keys(byNode);
    if (bad.length) refreshNodeList(bad[0]);
    // the offending field of the selected node
    const where = (err.param || '').match(/^nodes\.([^.]+)\.(params|in)\.([^.]+)/);
    if (where && where[1] === selected) {
      const control = nodeBox.querySelector(`[data-param="${CSS.escape(where[2] === 'in' ? `in.${where[3]}` : where[3])}"]`);
      if (control) { control.classList.add('invalid'); control.setAttribute('aria-invalid', 'true'); }
    }
  }

  async function validate() {
    clearError(panel); resetStates(); problems.replaceChildren();
    try {
      const res = await api('/v1/workflows/validate', { method: 'POST', json: workflowJson() });
      status.textContent = `Valid: ${res.nodes} nodes in ${res.stages.length} stages (${res.stages.map((s) => s.join(' + ')).join(' → ')}); outputs ${res.outputs.join(', ')}.`;
      return true;
    } catch (err) {
      if (err.status === 400) {
        status.textContent = 'The workflow has problems: see the marked nodes.';
        showProblems(err);
      } else showError(panel, err);
      return false;
    }
  }

  let controller = null; let jobId = null;
  validateBtn.addEventListener('click', validate);
  cancelBtn.addEventListener('click', async () => {
    if (controller) controller.abort();
    if (jobId) { try { await api(`/v1/jobs/${encodeURIComponent(jobId)}`, { method: 'DELETE' }); } catch { /* ended */ } }
  });
  runBtn.addEventListener('click', async () => {
    if (!(await validate())) return;
    runBtn.disabled = true; cancelBtn.disabled = false; outputs.replaceChildren();
    controller = new AbortController();
    try {
      const job = await api('/v1/workflows/execute?async=true', { method: 'POST', json: { workflow: workflowJson() }, signal: controller.signal });
      jobId = job.id;
      status.textContent = `Running (job ${job.id})…`;
      for await (const ev of sse(`/v1/workflows/jobs/${encodeURIComponent(job.id)}/events`, { signal: controller.signal })) {
        const d = ev.data || {};
        if (ev.event === 'node_started') setNodeState(d.node, 'running', 'running…');
        else if (ev.event === 'progress') {
          const el = nodeEl(d.node);
          if (el) { el.querySelector('.wf-progress').value = d.progress || 0; el.querySelector('.wf-msg').textContent = d.step ? `${d.step}` : `${Math.round((d.progress || 0) * 100)}%`; }
        } else if (ev.event === 'node_succeeded') setNodeState(d.node, 'done', d.seconds ? `done in ${d.seconds} s` : 'done');
        else if (ev.event === 'node_failed') setNodeState(d.node, 'failed', d.error || 'failed');
        else if (ev.event === 'node_skipped') setNodeState(d.node, 'skipped', 'skipped');
        else if (['succeeded', 'failed', 'cancelled'].includes(ev.event)) {
          status.textContent = `Job ${d.id}: ${ev.event}.${d.error ? ` ${d.error}` : ''}`;
          for (const a of d.assets || []) {
            outputs.append(h('figure', {}, h('img', { src: a.url, alt: `Workflow output ${a.id}`, class: 'wf-output', dataset: { asset: a.id } }), h('figcaption', {}, a.id)));
          }
          break;
        }
      }
    } catch (err) {
      if (err.status === 400) showProblems(err); else showError(panel, err, { disable: [runBtn] });
      if (err.name === 'AbortError') status.textContent = 'Cancelled.';
    } finally {
      runBtn.disabled = false; cancelBtn.disabled = true; controller = null; jobId = null;
    }
  });

  // --- start: a workflow handed over (a gallery image's recipe), else the first example -----
  const incoming = takeHandoff('lab');
  if (incoming && incoming.workflow) {
    current = null; name.value = `Remix of ${incoming.id}`; load(incoming.workflow);
    status.textContent = `The workflow that made ${incoming.id}.`;
  } else if (savedList.length) {
    const first = savedList.find((w) => w.available) || savedList[0];
    savedSelect.value = first.id; open(first);
  } else refreshNodeList('');
  return () => { if (controller) controller.abort(); };
}

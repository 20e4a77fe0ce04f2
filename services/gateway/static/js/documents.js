// The documents panel: drag-and-drop upload with per-file progress (upload bytes, then SSE), list, delete;
// scoped by the collection chosen in js/collections.js (listed, uploaded into; read-only for a viewer).
import { openEvents, request, uploadFile } from './api.js';
import { $, el, formatBytes, toast } from './dom.js';
import { icons } from './icons.js';

const LABELS = { uploading: 'Uploading', pending: 'Queued', processing: 'Processing', completed: 'Ready', failed: 'Failed' };
const TERMINAL = new Set(['completed', 'failed']);

// Browsers open at most 6 HTTP/1.1 connections per host: keep live streams and uploads below that,
// so that chat requests never wait behind them.
const MAX_WATCHES = 3;
const MAX_UPLOADS = 2;

function limiter(size) {
  let active = 0;
  const waiting = [];
  const next = () => {
    if (active >= size || !waiting.length) return;
    active += 1;
    const { task, resolve } = waiting.shift();
    task().finally(() => { active -= 1; next(); }).then(resolve, resolve);
  };
  return (task) => new Promise((resolve) => { waiting.push({ task, resolve }); next(); });
}

/** "Parsing 3/41", "Embedding 40/132 · 61%": what fits next to the status pill. */
function compactProgress(status, progress) {
  if (status === 'uploading') return progress.message;
  const { stage, pages_done: pages, pages_total: pagesTotal, chunks_done: chunks, chunks_total: chunksTotal } = progress;
  const percent = progress.percent ? ` · ${progress.percent}%` : '';
  if (stage === 'parsing' && pagesTotal) return `Parsing ${pages}/${pagesTotal}${percent}`;
  if (stage === 'embedding' && chunksTotal) return `Embedding ${chunks}/${chunksTotal}${percent}`;
  if (stage) return `${stage.charAt(0).toUpperCase()}${stage.slice(1)}${percent}`;
  return progress.message;
}

export class DocumentsPanel {
  /** collections: the switcher (js/collections.js); onChange: the list changed; onStored: what is stored
   *  changed (an upload was answered, a delete done). */
  constructor({ collections, onChange = () => {}, onStored = () => {} } = {}) {
    this.collections = collections;
    this.generation = 0;
    this.list = $('#doc-list');
    this.count = $('#doc-count');
    this.rows = new Map(); // key (document id or a temporary upload key) -> {doc, node, watcher}
    this.onChange = onChange;
    this.onStored = onStored;
    this.watchSlot = limiter(MAX_WATCHES);
    this.uploadSlot = limiter(MAX_UPLOADS);
    this.fileTypesLoaded = false;
    this.bindDropzone();
  }

  bindDropzone() {
    const zone = $('#dropzone');
    const input = $('#file-input');
    $('.dropzone-icon', zone).innerHTML = icons.upload;
    input.addEventListener('change', () => { this.uploadAll([...input.files]); input.value = ''; });
    for (const type of ['dragenter', 'dragover']) {
      zone.addEventListener(type, (e) => {
        e.preventDefault();
        if (this.collections.canUpload()) zone.classList.add('dragging');
      });
    }
    for (const type of ['dragleave', 'dragend']) zone.addEventListener(type, () => zone.classList.remove('dragging'));
    zone.addEventListener('drop', (e) => {
      e.preventDefault();
      zone.classList.remove('dragging');
      this.uploadAll([...(e.dataTransfer?.files || [])]);
    });
    // a file dropped anywhere else would make the browser navigate away from the app
    window.addEventListener('dragover', (e) => e.preventDefault());
    window.addEventListener('drop', (e) => e.preventDefault());
  }

  /** The picker's `accept` and the hint under it from GET /api/file-types (the ingest service's registry);
   *  when the call fails, the static list in index.html stays. */
  async loadFileTypes() {
    if (this.fileTypesLoaded) return;
    try {
      const { file_types: types } = await request('/api/file-types');
      const extensions = types.flatMap((type) => type.extensions).filter((ext) => ext.startsWith('.'));
      if (!extensions.length) return;
      $('#file-input').accept = extensions.join(',');
      $('.dropzone-hint', $('#dropzone')).textContent = types.map((type) => type.label).join(', ');
      this.fileTypesLoaded = true;
    } catch (failure) {
      console.warn('file types: keeping the built-in list', failure);
    }
  }

  /** The dropzone follows the chosen collection: where uploads go, or why they cannot (a viewer). */
  applyScope() {
    const zone = $('#dropzone');
    const target = $('#upload-target');
    const allowed = this.collections.canUpload();
    const into = this.collections.uploadTarget;
    zone.classList.toggle('disabled', !allowed);
    zone.setAttribute('aria-disabled', String(!allowed));
    $('#file-input').disabled = !allowed;
    $('.dropzone-title', zone).innerHTML = allowed ? 'Drop files here or <u>browse</u>' : 'View only';
    target.textContent = !allowed
      ? `You are a viewer of “${into.name}”: ask an owner for editor access to add documents.`
      : into ? `Adds to ${this.collections.label(into)}` : '';
    target.title = !allowed ? '' : 'Choose another collection above to upload there';
    for (const [key, row] of this.rows) this.render(row, key);
  }

  async load() {
    const generation = ++this.generation;
    const scope = this.collections.current;
    const documents = await request(scope ? `/api/upload/?collection_id=${encodeURIComponent(scope)}` : '/api/upload/');
    if (generation !== this.generation) return; // another collection was chosen meanwhile
    this.stopAll();
    // uploads still on their way (or refused) into what is shown stay
    const keep = [...this.rows].filter(([key, row]) => !row.doc.id && this.inScope(row.doc));
    this.rows = new Map(keep);
    this.list.replaceChildren(...keep.map(([, row]) => row.node));
    for (const doc of documents) {
      this.upsert(doc.id, doc);
      if (!TERMINAL.has(doc.processing_status)) this.watch(doc.id);
    }
    this.refreshCount();
  }

  stopAll() {
    for (const row of this.rows.values()) row.watcher?.abort();
  }

  /** Sign-out: nothing of the last user stays on the page. */
  clear() {
    this.generation += 1;
    this.stopAll();
    this.rows.clear();
    this.list.replaceChildren();
    this.count.textContent = '';
  }

  inScope(doc) {
    const scope = this.collections.current;
    return !scope || (doc.collection_id || this.collections.personal?.id) === scope;
  }

  completedCount() {
    return [...this.rows.values()].filter((row) => row.doc.processing_status === 'completed').length;
  }

  refreshCount() {
    const docs = [...this.rows.values()].filter((row) => row.doc.id);
    this.count.textContent = String(docs.length);
    if (!this.rows.size) {
      this.list.replaceChildren(el('li', { class: 'doc-empty', text: 'No documents yet. Upload a PDF to get started.' }));
    } else {
      this.list.querySelector('.doc-empty')?.remove();
    }
    this.onChange();
  }

  uploadAll(files) {
    if (!files.length) return;
    if (!this.collections.canUpload()) {
      toast(`You can only read “${this.collections.selected.name}”: ask an owner for editor access to add documents.`, 'error');
      return;
    }
    const target = this.collections.current; // '' = the personal collection
    const into = this.collections.uploadTarget;
    for (const file of files) {
      const key = `upload-${crypto.randomUUID()}`;
      this.upsert(key, {
        filename: file.name, file_size: file.size, processing_status: 'uploading', collection_id: into?.id,
        progress: { percent: 0, message: 'Waiting to upload…' },
      }, true);
      this.uploadSlot(() => this.uploadOne(file, key, target));
    }
    this.refreshCount();
  }

  async uploadOne(file, key, target) {
    if (!this.rows.has(key)) return; // dismissed while waiting
    const into = this.rows.get(key).doc.collection_id;
    try {
      const doc = await uploadFile(file, (fraction) => this.setUploadProgress(key, fraction), target);
      const row = this.rows.get(key);
      if (this.rows.has(doc.id) || !row) {
        this.remove(key);
        if (row) toast(`${file.name} was already uploaded`);
      } else {
        // the placeholder row becomes the document's row, in place
        this.rows.delete(key);
        this.rows.set(doc.id, row);
        row.doc = doc;
        this.render(row, doc.id);
        if (!TERMINAL.has(doc.processing_status)) this.watch(doc.id);
      }
    } catch (failure) {
      if (this.rows.has(key)) {
        this.upsert(key, { filename: file.name, file_size: file.size, processing_status: 'failed', collection_id: into,
                           processing_error: failure.message, progress: { percent: 0 } });
      }
      toast(`${file.name}: ${failure.message}`, 'error');
    }
    this.refreshCount();
    this.onStored();
  }

  setUploadProgress(key, fraction) {
    const row = this.rows.get(key);
    if (!row) return;
    row.doc.progress = { percent: Math.round(fraction * 100), message: `Uploading ${Math.round(fraction * 100)}%` };
    this.render(row);
  }

  watch(id, attempt = 0) {
    this.watchSlot(() => this.follow(id, attempt));
  }

  /** Follow one document's progress over SSE until it is completed or failed. */
  async follow(id, attempt) {
    const row = this.rows.get(id);
    if (!row || TERMINAL.has(row.doc.processing_status)) return;
    const controller = new AbortController();
    row.watcher = controller;
    try {
      const events = await openEvents(`/api/upload/${encodeURIComponent(id)}/events`, { signal: controller.signal });
      for await (const { event, data } of events) {
        if (event === 'progress' || event === 'done') {
          this.upsert(id, data.document);
          if (event === 'done') { this.onChange(); return; }
        } else if (event === 'error') {
          throw new Error(data.detail);
        }
      }
    } catch (failure) {
      if (controller.signal.aborted || failure.status === 404 || failure.status === 401) return;
      if (attempt < 8) setTimeout(() => this.watch(id, attempt + 1), Math.min(1000 * 2 ** attempt, 15000));
    }
  }

  upsert(key, doc, prepend = false) {
    let row = this.rows.get(key);
    if (!row) {
      row = { doc, node: el('li', { class: 'doc' }) };
      this.rows.set(key, row);
      if (prepend) this.list.prepend(row.node); else this.list.append(row.node);
    } else {
      row.doc = doc;
    }
    this.render(row, key);
    return row;
  }

  remove(key) {
    const row = this.rows.get(key);
    row?.watcher?.abort();
    row?.node.remove();
    this.rows.delete(key);
  }

  async delete(id) {
    const row = this.rows.get(id);
    if (!row || !window.confirm(`Delete “${row.doc.filename}”? Its passages leave the index.`)) return;
    try {
      await request(`/api/upload/${encodeURIComponent(id)}`, { method: 'DELETE' });
      this.remove(id);
      this.refreshCount();
      this.onStored();
      toast(`Deleted ${row.doc.filename}`);
    } catch (failure) {
      toast(failure.message, 'error');
    }
  }

  render(row, key = row.doc.id) {
    const { doc } = row;
    const status = doc.processing_status;
    const extension = (doc.filename.split('.').pop() || '').toLowerCase().slice(0, 4);
    const progress = doc.progress || {};
    let detail = formatBytes(doc.file_size);
    if (status === 'completed') detail += doc.page_count ? ` · ${doc.page_count} page${doc.page_count === 1 ? '' : 's'}` : '';
    else if (status !== 'failed') detail = compactProgress(status, progress) || detail;
    row.node.dataset.status = status;
    row.node.dataset.testid = 'doc-row';
    row.node.setAttribute('data-testid', 'doc-row');
    row.node.dataset.filename = doc.filename;
    if (doc.id) row.node.dataset.id = doc.id;
    let sub;
    const children = [
      el('div', { class: `doc-icon ${extension}`, text: extension.toUpperCase() || 'FILE' }),
      el('div', { class: 'doc-name', title: doc.filename, text: doc.filename }),
      doc.id && this.collections.roleOf(doc.collection_id) === 'viewer' ? el('span', {
        class: 'doc-lock', title: 'View only: you are a viewer of its collection', 'aria-label': 'View only',
        'data-testid': 'doc-readonly', html: icons.lock,
      }) : doc.id ? el('button', {
        type: 'button', class: 'icon-btn', title: 'Delete', 'aria-label': `Delete ${doc.filename}`,
        'data-testid': 'doc-delete', html: icons.trash, onclick: () => this.delete(doc.id),
      }) : el('button', { type: 'button', class: 'icon-btn', 'aria-label': 'Dismiss', html: icons.x,
                          onclick: () => { this.remove(key); this.refreshCount(); } }),
      sub = el('div', { class: 'doc-sub' },
        el('span', { class: `pill pill-${status}`, 'data-testid': 'doc-status', text: LABELS[status] || status }),
        el('span', { class: 'detail', title: progress.message || detail, text: detail })),
    ];
    if (!TERMINAL.has(status)) {
      const bar = el('div', { class: 'progress', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100',
                              'aria-valuenow': String(progress.percent || 0) }, el('span'));
      bar.firstChild.style.width = `${Math.max(progress.percent || 0, 3)}%`;
      children.push(bar);
    }
    if (status === 'failed' && doc.processing_error) {
      children.push(el('div', {
        class: 'doc-error', 'data-testid': 'doc-error', text: doc.processing_error,
        title: doc.error_reason ? `reason: ${doc.error_reason}` : '',
      }));
    }
    // which collection: when all are shown, for documents outside the personal one
    const collection = !this.collections.current && doc.collection_id ? this.collections.byId(doc.collection_id) : null;
    if (collection && !collection.personal) {
      sub.append(el('span', { class: 'doc-collection', 'data-testid': 'doc-collection', title: `In the collection “${collection.name}”` },
        el('span', { html: collection.member_count > 1 ? icons.users : icons.folder }), collection.name));
    }
    row.node.replaceChildren(...children);
  }
}

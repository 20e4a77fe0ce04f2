// Collections in the documents panel: "All collections" and each collection the user belongs to, with
// their role. The chosen one filters the document list, receives uploads and scopes chat; the choice is
// kept per browser tab (sessionStorage). "New" creates a collection; a shared collection's manage button
// opens the share dialog (js/share.js).
import { request } from './api.js';
import { $, el, toast } from './dom.js';
import { icons } from './icons.js';

const STORE = 'docent.collection';
export const ROLE_LABELS = { viewer: 'Viewer', editor: 'Editor', owner: 'Owner' };
export const ROLE_HINTS = {
  viewer: 'Viewer: reads the documents and asks questions',
  editor: 'Editor: also adds and deletes documents',
  owner: 'Owner: also shares, renames and deletes the collection',
};
const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;

export class Collections {
  /** onSelect: the user chose another collection; onManage(collection): open its share dialog. */
  constructor({ onSelect = () => {}, onManage = () => {} } = {}) {
    this.node = $('#collection-list');
    this.form = $('#collection-create');
    this.onSelect = onSelect;
    this.onManage = onManage;
    this.items = [];
    this.current = sessionStorage.getItem(STORE) || '';
    this.timer = null;
    this.bind();
  }

  bind() {
    const open = $('#collection-new');
    open.innerHTML = `${icons.plus}<span>New</span>`;
    $('#collection-create-cancel').innerHTML = icons.x;
    open.addEventListener('click', () => this.showCreate(true));
    $('#collection-create-cancel').addEventListener('click', () => this.showCreate(false));
    this.form.addEventListener('submit', (event) => { event.preventDefault(); this.create(); });
    this.form.addEventListener('keydown', (event) => {
      if (event.key === 'Escape') { event.stopPropagation(); this.showCreate(false); }
    });
  }

  // state ---------------------------------------------------------------------------------------------

  /** The chosen collection, or null for all of them. */
  get selected() { return this.byId(this.current); }
  get personal() { return this.items.find((c) => c.personal) || null; }
  byId(id) { return (id && this.items.find((c) => c.id === id)) || null; }
  label(collection) { return collection ? (collection.personal ? 'Personal' : collection.name) : 'All collections'; }

  /** The caller's role in a document's collection (a document without one is in the personal collection). */
  roleOf(collectionId) {
    const collection = collectionId ? this.byId(collectionId) : this.personal;
    return collection ? collection.role : null;
  }

  /** Where an upload goes: the chosen collection, else the personal one (the server's default). */
  get uploadTarget() { return this.selected || this.personal; }
  canUpload() { return !this.selected || this.selected.role !== 'viewer'; }
  /** collection_ids for chat: only the chosen collection, or null (all of the caller's). */
  scopeIds() { return this.selected ? [this.selected.id] : null; }

  clear() {
    clearTimeout(this.timer);
    this.items = [];
    this.current = '';
    sessionStorage.removeItem(STORE);
    this.showCreate(false);
    this.node.replaceChildren();
  }

  /** Fetch the list; a remembered choice that is gone (removed from it, deleted) falls back to all. */
  async load() {
    clearTimeout(this.timer);
    const reply = await request('/api/collections/');
    this.items = reply.collections;
    if (this.current && !this.byId(this.current)) this.remember('');
    this.render();
    return this.items;
  }

  /** Call after() soon (several uploads finishing together make one request for fresh counts). */
  refreshSoon(after, ms = 400) {
    clearTimeout(this.timer);
    this.timer = setTimeout(after, ms);
  }

  remember(id) {
    this.current = id;
    if (id) sessionStorage.setItem(STORE, id); else sessionStorage.removeItem(STORE);
  }

  select(id) {
    if (id === this.current) return;
    this.remember(id);
    this.render();
    this.onSelect(this.selected);
  }

  /** Keyboard focus on the chosen row (from the scope chip under the question box). */
  focusCurrent() {
    $(`[data-testid="collection"][aria-checked="true"]`, this.node)?.focus();
  }

  // new collection ------------------------------------------------------------------------------------

  showCreate(show) {
    this.form.hidden = !show;
    $('#collection-new').hidden = show;
    this.form.reset();
    if (show) this.form.elements.name.focus();
  }

  async create() {
    const name = this.form.elements.name.value.trim();
    if (!name) { this.form.elements.name.focus(); return; }
    const submit = $('[type="submit"]', this.form);
    submit.disabled = true;
    try {
      const created = await request('/api/collections/', { method: 'POST', json: { name } });
      this.showCreate(false);
      await this.load().catch(() => { this.items = [...this.items, created]; });
      this.select(created.id);
      toast(`Created “${created.name}”: uploads now go there`);
    } catch (failure) {
      toast(`Could not create the collection: ${failure.message}`, 'error');
    } finally {
      submit.disabled = false;
    }
  }

  // rendering -----------------------------------------------------------------------------------------

  row(collection) {
    const id = collection ? collection.id : '';
    const checked = id === this.current;
    const total = this.items.reduce((sum, c) => sum + c.document_count, 0);
    const shared = collection && !collection.personal && collection.member_count > 1;
    const icon = !collection ? icons.layers : collection.personal ? icons.lock : shared ? icons.users : icons.folder;
    const meta = !collection ? plural(total, 'document')
      : [plural(collection.document_count, 'document'), shared ? plural(collection.member_count, 'member') : '']
        .filter(Boolean).join(' · ');
    const badge = !collection ? null : collection.personal
      ? el('span', { class: 'pill pill-personal', 'data-testid': 'collection-role',
                   title: 'Your personal collection: only you see it; it cannot be shared', text: 'Only you' })
      : el('span', { class: `pill pill-role-${collection.role}`, 'data-testid': 'collection-role',
                     title: ROLE_HINTS[collection.role], text: ROLE_LABELS[collection.role] });
    const manage = collection && !collection.personal ? el('button', {
      type: 'button', class: 'icon-btn coll-manage', html: icons.users, tabindex: '-1',
      title: collection.role === 'owner' ? 'Share, rename or delete' : 'Members',
      'aria-label': `${collection.role === 'owner' ? 'Share and manage' : 'Members of'} ${collection.name}`,
      'data-testid': 'collection-manage',
      onclick: (event) => { event.stopPropagation(); this.onManage(collection); },
    }) : null;
    return el('div', {
      class: 'coll', role: 'radio', tabindex: checked ? '0' : '-1', 'aria-checked': String(checked),
      'data-testid': 'collection', 'data-id': id, 'data-name': this.label(collection),
      'data-role': collection ? collection.role : '',
      onclick: () => this.select(id),
      onkeydown: (event) => this.onKey(event, id),
    },
    el('span', { class: 'coll-icon', html: icon }),
    el('span', { class: 'coll-text' },
      el('span', { class: 'coll-name', title: this.label(collection), text: this.label(collection) }),
      el('span', { class: 'coll-meta', text: meta })),
    badge, manage);
  }

  onKey(event, id) {
    const ids = ['', ...this.items.map((c) => c.id)];
    const at = ids.indexOf(id);
    let next = null;
    if (event.key === 'ArrowDown' || event.key === 'ArrowRight') next = ids[(at + 1) % ids.length];
    else if (event.key === 'ArrowUp' || event.key === 'ArrowLeft') next = ids[(at - 1 + ids.length) % ids.length];
    else if (event.key === ' ' || event.key === 'Enter') next = id;
    else return;
    event.preventDefault();
    this.select(next);
    this.focusCurrent();
  }

  render() {
    this.node.replaceChildren(this.row(null), ...this.items.map((c) => this.row(c)));
  }
}

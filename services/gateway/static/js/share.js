// The share dialog of a collection: its members and their roles. The owner adds people by email with a
// role, changes roles, removes members, renames and deletes the collection; any member sees who shares
// it and may leave. Refusals (an unknown email, the last owner, a collection that still holds documents)
// are shown in the dialog, in words (api.js REASONS).
import { request } from './api.js';
import { $, el, timeAgo, toast } from './dom.js';
import { icons } from './icons.js';
import { ROLE_HINTS, ROLE_LABELS } from './collections.js';

const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;

export class ShareDialog {
  /** me(): the signed-in user; onChanged({left, deleted}): the collection changed (refresh the list). */
  constructor({ me, onChanged = async () => {} }) {
    this.dialog = $('#share-dialog');
    this.error = $('[data-testid="share-error"]');
    this.form = $('#share-form');
    this.renameForm = $('#rename-form');
    this.list = $('#member-list');
    this.me = me;
    this.onChanged = onChanged;
    this.collection = null;
    this.members = [];
    this.bind();
  }

  bind() {
    $('#share-close').innerHTML = icons.x;
    $('#share-close').addEventListener('click', () => this.close());
    this.dialog.addEventListener('click', (event) => { if (event.target === this.dialog) this.close(); });
    this.form.addEventListener('submit', (event) => { event.preventDefault(); this.add(); });
    this.renameForm.addEventListener('submit', (event) => { event.preventDefault(); this.rename(); });
    $('#collection-delete').addEventListener('click', () => this.remove());
    $('#collection-leave').addEventListener('click', () => this.leave());
  }

  get id() { return encodeURIComponent(this.collection.id); }
  get owner() { return this.collection.role === 'owner'; }

  async open(collection) {
    document.body.dispatchEvent(new Event('closepanels'));
    this.collection = collection;
    this.members = [];
    this.showError('');
    this.form.reset();
    this.renameForm.reset();
    this.renameForm.elements.name.value = collection.name;
    this.renderHead();
    this.list.replaceChildren();
    this.dialog.showModal();
    if (this.owner) this.form.elements.email.focus(); else $('#share-close').focus();
    await this.load();
  }

  close() {
    if (this.dialog.open) this.dialog.close();
  }

  showError(message) {
    this.error.textContent = message;
    this.error.hidden = !message;
  }

  async load() {
    this.list.setAttribute('aria-busy', 'true');
    try {
      const reply = await request(`/api/collections/${this.id}/members`);
      this.members = reply.members;
      this.render();
    } catch (failure) {
      this.showError(`Could not load the members: ${failure.message}`);
    } finally {
      this.list.removeAttribute('aria-busy');
    }
  }

  /** After a change: the collection's row (role, counts) comes back from the list. */
  async changed(extra = {}) {
    const items = await this.onChanged(extra);
    const fresh = items && items.find((c) => c.id === this.collection.id);
    if (fresh) { this.collection = fresh; this.renderHead(); this.render(); }
  }

  // owner actions -------------------------------------------------------------------------------------

  async add() {
    this.showError('');
    const fields = this.form.elements;
    const email = fields.email.value.trim();
    if (!email || !fields.email.checkValidity()) {
      this.showError('Enter the email address of the account to share with.');
      fields.email.focus();
      return;
    }
    const submit = $('[type="submit"]', this.form);
    submit.disabled = true;
    try {
      const member = await request(`/api/collections/${this.id}/members`, {
        method: 'POST', json: { email, role: fields.role.value } });
      const known = this.members.some((m) => m.user_id === member.user_id);
      this.members = known ? this.members.map((m) => (m.user_id === member.user_id ? member : m)) : [...this.members, member];
      this.render();
      this.form.reset();
      fields.email.focus();
      toast(`${known ? 'Changed' : 'Shared with'} ${member.email || email}: ${ROLE_LABELS[member.role].toLowerCase()}`);
      await this.changed();
    } catch (failure) {
      this.showError(failure.message);
    } finally {
      submit.disabled = false;
    }
  }

  async setRole(member, role, select) {
    this.showError('');
    select.disabled = true;
    try {
      const updated = await request(`/api/collections/${this.id}/members`, {
        method: 'POST', json: { email: member.email, role } });
      this.members = this.members.map((m) => (m.user_id === updated.user_id ? updated : m));
      await this.changed();
      this.render();
    } catch (failure) {
      select.value = member.role;
      this.showError(failure.message);
    } finally {
      select.disabled = false;
    }
  }

  async removeMember(member) {
    const who = member.username || member.email || 'this member';
    if (!window.confirm(`Remove ${who} from “${this.collection.name}”? They no longer see its documents.`)) return;
    this.showError('');
    try {
      await request(`/api/collections/${this.id}/members/${encodeURIComponent(member.user_id)}`, { method: 'DELETE' });
    } catch (failure) {
      if (failure.status !== 404 || failure.reason === 'COLLECTION_NOT_FOUND') { this.showError(failure.message); return; }
    }
    this.members = this.members.filter((m) => m.user_id !== member.user_id);
    this.render();
    toast(`Removed ${who}`);
    await this.changed();
  }

  async rename() {
    this.showError('');
    const name = this.renameForm.elements.name.value.trim();
    if (!name) { this.showError('Give the collection a name.'); return; }
    if (name === this.collection.name) return;
    try {
      this.collection = await request(`/api/collections/${this.id}`, { method: 'PATCH', json: { name } });
      this.renderHead();
      toast(`Renamed to “${name}”`);
      await this.changed();
    } catch (failure) {
      this.showError(failure.message);
    }
  }

  async remove() {
    const { name } = this.collection;
    if (!window.confirm(`Delete the collection “${name}”? Its members lose access to it.`)) return;
    this.showError('');
    try {
      await request(`/api/collections/${this.id}`, { method: 'DELETE' });
    } catch (failure) {
      const count = this.collection.document_count;
      this.showError(failure.reason === 'COLLECTION_NOT_EMPTY' && count
        ? `“${name}” still holds ${plural(count, 'document')}: delete them first, only an empty collection can be deleted.`
        : failure.message);
      return;
    }
    this.close();
    toast(`Deleted the collection “${name}”`);
    await this.onChanged({ deleted: true });
  }

  // any member ----------------------------------------------------------------------------------------

  async leave() {
    const { name } = this.collection;
    if (!window.confirm(`Leave “${name}”? You no longer see its documents until someone shares it again.`)) return;
    this.showError('');
    try {
      await request(`/api/collections/${this.id}/members/${encodeURIComponent(this.me().id)}`, { method: 'DELETE' });
    } catch (failure) {
      this.showError(failure.message);
      return;
    }
    this.close();
    toast(`You left “${name}”`);
    await this.onChanged({ left: true });
  }

  // rendering -----------------------------------------------------------------------------------------

  renderHead() {
    const c = this.collection;
    $('#share-title').textContent = c.name;
    const role = $('#share-role-badge');
    role.className = `pill pill-role-${c.role}`;
    role.textContent = `You: ${ROLE_LABELS[c.role]}`;
    role.title = ROLE_HINTS[c.role];
    $('#share-sub').textContent = this.owner
      ? 'Share it by email: viewers read and ask, editors also add and delete documents, owners also manage it.'
      : `Shared with you. ${ROLE_HINTS[c.role]}. Only owners change who shares it.`;
    for (const node of this.dialog.querySelectorAll('[data-owner-only]')) node.hidden = !this.owner;
  }

  render() {
    const me = this.me();
    $('#member-count').textContent = String(this.members.length);
    this.list.replaceChildren(...this.members.map((member) => {
      const self = member.user_id === me.id;
      const name = member.username || member.email || member.user_id;
      const role = this.owner && !self
        ? el('select', {
          class: 'member-role-select', 'data-testid': 'member-role', 'aria-label': `Role of ${name}`,
          onchange: (event) => this.setRole(member, event.target.value, event.target),
        }, ...Object.entries(ROLE_LABELS).map(([value, text]) => {
          const option = el('option', { value, text });
          option.selected = value === member.role;
          return option;
        }))
        : el('span', { class: `pill pill-role-${member.role}`, 'data-testid': 'member-role', title: ROLE_HINTS[member.role],
                       text: ROLE_LABELS[member.role] });
      return el('li', { class: 'member', 'data-testid': 'member', 'data-email': member.email || '',
                        'data-role': member.role, 'data-self': String(self) },
        el('span', { class: 'avatar avatar-sm', 'aria-hidden': 'true', text: name.trim().charAt(0).toUpperCase() }),
        el('span', { class: 'member-text' },
          el('span', { class: 'member-name' }, name, self ? el('span', { class: 'muted', text: ' (you)' }) : null),
          el('span', { class: 'member-email', title: `added ${new Date(member.added_at).toLocaleString()}`,
                       text: [member.email && member.email !== name ? member.email : '', `added ${timeAgo(member.added_at)}`]
                         .filter(Boolean).join(' · ') })),
        role,
        this.owner && !self ? el('button', {
          type: 'button', class: 'icon-btn member-remove', html: icons.trash, title: `Remove ${name}`,
          'aria-label': `Remove ${name}`, 'data-testid': 'member-remove', onclick: () => this.removeMember(member),
        }) : el('span', { class: 'member-spacer' }));
    }));
  }
}

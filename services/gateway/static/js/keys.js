// API keys: list, create (the key is shown once, with a copy button), revoke. Managing keys takes the
// session token the UI signs in with; the keys themselves are for scripts and services.
import { request } from './api.js';
import { $, el, timeAgo } from './dom.js';
import { icons } from './icons.js';

const fullDate = (iso) => (iso ? new Date(iso).toLocaleString() : '');
const shortDate = (iso) => new Date(iso).toLocaleDateString([], { year: 'numeric', month: 'short', day: 'numeric' });

function optionalNumber(input) {
  const text = input.value.trim();
  return text === '' ? undefined : Number(text);
}

export class ApiKeysDialog {
  constructor() {
    this.dialog = $('#keys-dialog');
    this.form = $('#key-form');
    this.error = $('[data-testid="keys-error"]');
    this.list = $('#key-list');
    this.created = $('#key-created');
    this.secret = $('#new-key');
    this.copyButton = $('#copy-key');
    this.submit = $('[data-testid="key-create"]');
    this.keys = [];
    this.bind();
  }

  bind() {
    $('#open-keys').insertAdjacentHTML('afterbegin', icons.key);
    $('#keys-close').innerHTML = icons.x;
    this.copyButton.innerHTML = `${icons.copy}<span>Copy</span>`;
    $('#open-keys').addEventListener('click', () => this.open());
    $('#keys-close').addEventListener('click', () => this.close());
    this.dialog.addEventListener('click', (event) => { if (event.target === this.dialog) this.dialog.close(); });
    // the key is shown once: closing the dialog forgets it
    this.dialog.addEventListener('close', () => this.hideSecret());
    this.form.addEventListener('submit', (event) => { event.preventDefault(); this.create(); });
    this.copyButton.addEventListener('click', () => this.copy());
    $('#key-done').addEventListener('click', () => { this.hideSecret(); this.form.elements.key_name.focus(); });
  }

  async open() {
    document.body.dispatchEvent(new Event('closepanels'));
    this.hideSecret();
    this.showError('');
    this.form.reset();
    this.dialog.showModal();
    this.form.elements.key_name.focus();
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
      const reply = await request('/api/keys/');
      this.keys = reply.keys;
      this.render();
    } catch (failure) {
      this.showError(`Could not load your keys: ${failure.message}`);
    } finally {
      this.list.removeAttribute('aria-busy');
    }
  }

  async create() {
    this.showError('');
    const fields = this.form.elements;
    const name = fields.key_name.value.trim();
    if (!name) {
      this.showError('Give the key a name, for example the script that will use it.');
      fields.key_name.focus();
      return;
    }
    for (const input of [fields.expires_in_days, fields.chats_per_minute, fields.uploads_per_minute]) {
      if (!input.checkValidity()) {
        this.showError(`${input.closest('label').querySelector('span').textContent}: use a whole number from ${input.min} to ${input.max}, or leave it empty.`);
        input.focus();
        return;
      }
    }
    const body = {
      name,
      access: fields.access.value,
      expires_in_days: optionalNumber(fields.expires_in_days),
      chats_per_minute: optionalNumber(fields.chats_per_minute),
      uploads_per_minute: optionalNumber(fields.uploads_per_minute),
    };
    this.submit.disabled = true;
    try {
      const created = await request('/api/keys/', { method: 'POST', json: body });
      const { key, ...listed } = created;
      this.keys = [listed, ...this.keys.filter((k) => k.id !== listed.id)];
      this.render();
      this.form.reset();
      this.showSecret(listed.name, key);
    } catch (failure) {
      this.showError(failure.message);
    } finally {
      this.submit.disabled = false;
    }
  }

  showSecret(name, key) {
    $('#key-created-name').textContent = name;
    this.secret.textContent = key;
    this.copyButton.innerHTML = `${icons.copy}<span>Copy</span>`;
    this.created.hidden = false;
    this.copyButton.focus();
  }

  hideSecret() {
    this.secret.textContent = '';
    this.created.hidden = true;
  }

  async copy() {
    const key = this.secret.textContent;
    if (!key) return;
    let copied = false;
    try {
      await navigator.clipboard.writeText(key);
      copied = true;
    } catch {
      // no clipboard API (plain http on another host): copy the selected text the old way
      const range = document.createRange();
      range.selectNodeContents(this.secret);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      try { copied = document.execCommand('copy'); } catch { copied = false; }
    }
    this.copyButton.innerHTML = copied ? `${icons.check}<span>Copied</span>` : `${icons.copy}<span>Select and copy</span>`;
    this.copyButton.dataset.copied = String(copied);
    if (!copied) this.showError('Copying was not allowed here: the key is selected, copy it with Ctrl+C (⌘C).');
  }

  async revoke(key) {
    if (!window.confirm(`Revoke “${key.name}”? Scripts and services using it stop working at once.`)) return;
    this.showError('');
    try {
      await request(`/api/keys/${encodeURIComponent(key.id)}`, { method: 'DELETE' });
    } catch (failure) {
      if (failure.status !== 404) { this.showError(`Could not revoke “${key.name}”: ${failure.message}`); return; }
      // already revoked elsewhere: drop it from the list all the same
    }
    this.keys = this.keys.filter((k) => k.id !== key.id);
    this.render();
  }

  render() {
    $('#key-count').textContent = String(this.keys.length);
    if (!this.keys.length) {
      this.list.replaceChildren(el('tr', { class: 'keys-empty' }, el('td', {
        colspan: '7', text: 'No API keys yet. Create one for each script or service that uses Docent.',
      })));
      return;
    }
    const now = Date.now();
    this.list.replaceChildren(...this.keys.map((key) => {
      const expired = key.expires_at && new Date(key.expires_at).getTime() <= now;
      const limits = [
        key.chats_per_minute ? `${key.chats_per_minute} questions/min` : '',
        key.uploads_per_minute ? `${key.uploads_per_minute} uploads/min` : '',
      ].filter(Boolean).join(' · ');
      return el('tr', { class: 'key-row', 'data-testid': 'key-row', 'data-id': key.id, 'data-name': key.name },
        el('td', { 'data-label': 'Name' },
          el('div', { class: 'key-name', 'data-testid': 'key-name', text: key.name }),
          limits ? el('div', { class: 'key-limits', text: limits }) : null),
        el('td', { 'data-label': 'Key' }, el('code', { class: 'key-prefix', 'data-testid': 'key-prefix', text: `${key.prefix}…` })),
        el('td', { 'data-label': 'Access' }, el('span', {
          class: `pill pill-${key.access}`, 'data-testid': 'key-access',
          title: key.access === 'write' ? 'Read, chat, upload and delete' : 'List, search and chat',
          text: key.access === 'write' ? 'Write' : 'Read',
        })),
        el('td', { 'data-label': 'Created', title: fullDate(key.created_at), text: timeAgo(key.created_at) }),
        el('td', { 'data-label': 'Expires', title: fullDate(key.expires_at), 'data-testid': 'key-expires' },
          expired ? el('span', { class: 'pill pill-failed', text: 'Expired' })
            : key.expires_at ? shortDate(key.expires_at) : el('span', { class: 'muted', text: 'Never' })),
        el('td', { 'data-label': 'Last used', title: fullDate(key.last_used_at), 'data-testid': 'key-last-used' },
          key.last_used_at ? timeAgo(key.last_used_at) : el('span', { class: 'muted', text: 'Never' })),
        el('td', { class: 'key-actions' }, el('button', {
          type: 'button', class: 'btn btn-danger btn-sm', 'data-testid': 'key-revoke',
          'aria-label': `Revoke ${key.name}`, text: 'Revoke', onclick: () => this.revoke(key),
        })));
    }));
  }
}

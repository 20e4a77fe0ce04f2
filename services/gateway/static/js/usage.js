// Quota usage in the documents panel: stored documents and bytes against the limits (GET /api/usage).
import { request } from './api.js';
import { $, el, formatBytes } from './dom.js';

const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;

/** One line of the meter: "Documents  3 of 10" with a bar when there is a limit. */
function meter({ label, used, limit, text, testid }) {
  const share = limit ? Math.min(1, used / limit) : 0;
  const level = !limit ? '' : share >= 1 ? ' full' : share >= 0.8 ? ' high' : '';
  const row = el('div', { class: `usage-row${level}`, 'data-testid': testid, 'data-used': String(used),
                          'data-limit': limit === null ? '' : String(limit) },
    el('span', { class: 'usage-label', text: label }),
    el('span', { class: 'usage-value', text }));
  if (limit) {
    const bar = el('div', {
      class: 'usage-bar', role: 'meter', 'aria-label': `${label} used`, 'aria-valuemin': '0',
      'aria-valuemax': String(limit), 'aria-valuenow': String(Math.min(used, limit)), 'aria-valuetext': text,
    }, el('span'));
    bar.firstChild.style.width = `${Math.max(share * 100, used ? 2 : 0)}%`;
    row.append(bar);
  }
  return row;
}

export class UsageMeter {
  constructor() {
    this.node = $('#usage');
    this.timer = null;
    this.generation = 0;
  }

  clear() {
    clearTimeout(this.timer);
    this.generation += 1;
    this.node.replaceChildren();
    this.node.hidden = true;
  }

  /** Refresh soon: several uploads finishing together make one request. */
  refreshSoon(ms = 250) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), ms);
  }

  async refresh() {
    clearTimeout(this.timer);
    const generation = ++this.generation;
    let usage;
    try {
      usage = await request('/api/usage');
    } catch (failure) {
      // the meter is a convenience: a failure leaves the last numbers, and says so on hover
      this.node.title = `Usage unavailable: ${failure.message}`;
      return;
    }
    if (generation !== this.generation) return; // a newer refresh (or a sign-out) came after
    this.node.title = '';
    this.render(usage);
  }

  render(usage) {
    const { documents, stored_bytes: bytes, documents_limit: maxDocs, stored_bytes_limit: maxBytes } = usage;
    const rows = [
      meter({ label: 'Documents', used: documents, limit: maxDocs, testid: 'usage-documents',
              text: maxDocs ? `${documents} of ${maxDocs}` : plural(documents, 'document') }),
      meter({ label: 'Storage', used: bytes, limit: maxBytes, testid: 'usage-storage',
              text: maxBytes ? `${formatBytes(bytes)} of ${formatBytes(maxBytes)}` : `${formatBytes(bytes)} stored` }),
    ];
    const rates = [
      usage.uploads_per_minute ? `${usage.uploads_per_minute} uploads` : '',
      usage.chats_per_minute ? `${usage.chats_per_minute} questions` : '',
    ].filter(Boolean);
    if (rates.length) {
      rows.push(el('div', { class: 'usage-rates', 'data-testid': 'usage-rates', text: `Up to ${rates.join(' and ')} a minute` }));
    }
    this.node.replaceChildren(...rows);
    this.node.hidden = false;
  }
}

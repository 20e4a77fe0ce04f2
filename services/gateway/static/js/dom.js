// Small DOM helpers: element builder, toasts, formatting, and the answer renderer.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'html') node.innerHTML = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);

export function toast(message, kind = 'info', ms = 4500) {
  const node = el('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status', text: message });
  $('#toasts').append(node);
  setTimeout(() => node.remove(), ms);
}

export function formatBytes(bytes) {
  if (!bytes && bytes !== 0) return '';
  const units = ['B', 'KB', 'MB', 'GB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${value < 10 && unit ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

export function timeAgo(iso) {
  if (!iso) return '';
  const seconds = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (seconds < 60) return 'just now';
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  if (seconds < 7 * 86400) return `${Math.floor(seconds / 86400)} d ago`;
  return new Date(iso).toLocaleDateString();
}

export const pageLabel = (s) => (s.page_start && s.page_end && s.page_end !== s.page_start
  ? `pp. ${s.page_start}–${s.page_end}` : s.page_start ? `p. ${s.page_start}` : '');

const escapeHtml = (text) => text.replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[c]));

function inline(text, markers) {
  return escapeHtml(text)
    .replace(/`([^`]+)`/g, '<code>$1</code>')
    .replace(/\*\*([^*]+)\*\*/g, '<strong>$1</strong>')
    .replace(/(?<![\w[(])\[(\d+(?:\s*,\s*\d+)*)\]/g, (whole, list) => list.split(/\s*,\s*/).map((n) => (markers.has(Number(n))
      ? `<button type="button" class="cite" data-marker="${n}" title="Show source ${n}">${n}</button>`
      : `[${n}]`)).join(''));
}

/** Plain text or light markdown (paragraphs, bullets, **bold**, `code`) with [n] citations as buttons. */
export function renderAnswer(text, sources = []) {
  const markers = new Set(sources.map((s) => s.marker));
  const blocks = text.trim().split(/\n{2,}/);
  return blocks.map((block) => {
    const lines = block.split('\n');
    if (lines.every((line) => /^\s*[-*•]\s+/.test(line))) {
      return `<ul>${lines.map((line) => `<li>${inline(line.replace(/^\s*[-*•]\s+/, ''), markers)}</li>`).join('')}</ul>`;
    }
    return `<p>${lines.map((line) => inline(line, markers)).join('<br>')}</p>`;
  }).join('');
}

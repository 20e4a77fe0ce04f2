// Docent web UI: boot, sign-in state, and the responsive panels.
import { getToken, request, setToken, setUnauthorizedHandler } from './api.js';
import { initAuth } from './auth.js';
import { ChatView } from './chat.js';
import { Collections } from './collections.js';
import { $, el, toast } from './dom.js';
import { DocumentsPanel } from './documents.js';
import { icons } from './icons.js';
import { ApiKeysDialog } from './keys.js';
import { ShareDialog } from './share.js';
import { UsageMeter } from './usage.js';

const authView = $('#auth-view');
const appView = $('#app-view');
let chat;
let documents;
let usage;
let keys;
let collections;
let share;
let user = null;

function showAuth() {
  user = null;
  documents?.clear();
  collections?.clear();
  usage?.clear();
  keys?.close();
  share?.close();
  appView.hidden = true;
  authView.hidden = false;
  $('[data-testid="auth-email"]').focus();
}

/** The chip under the question box: what a question searches. */
function renderScope() {
  const chosen = collections.selected;
  const chip = $('#chat-scope');
  chip.dataset.scope = chosen ? chosen.id : '';
  chip.replaceChildren(el('span', { class: 'scope-icon', html: chosen ? (chosen.personal ? icons.lock : icons.folder) : icons.layers }),
    el('span', { text: 'Searching' }), el('strong', { 'data-testid': 'chat-scope-name', text: collections.label(chosen) }));
  $('#question').placeholder = chosen ? `Ask about ${collections.label(chosen)}…` : 'Ask about your documents…';
}

/** The chosen collection (or its role) changed: the dropzone, the rows, the chip; reload: list its documents. */
async function applyScope(reload) {
  documents.applyScope();
  renderScope();
  if (!reload) { chat.refreshWelcome(); return; }
  try {
    await documents.load();
  } catch (failure) {
    if (failure.reason === 'COLLECTION_NOT_FOUND') {
      // removed from it meanwhile: the list without it, and everything shown
      toast(failure.message, 'error');
      await collections.load().catch(() => {});
      collections.select('');
      return;
    }
    toast(`Documents: ${failure.message}`, 'error');
  }
  chat.refreshWelcome();
}

/** After the share dialog changed a collection: the fresh list (roles, counts); the choice may be gone. */
async function collectionsChanged() {
  const before = collections.current;
  let items;
  try {
    items = await collections.load();
  } catch (failure) {
    toast(`Collections: ${failure.message}`, 'error');
    return null;
  }
  await applyScope(collections.current !== before);
  return items;
}

async function showApp(signedIn) {
  user = signedIn;
  authView.hidden = true;
  appView.hidden = false;
  $('#account-name').textContent = user.username;
  $('#account-email').textContent = user.email;
  $('#account-avatar').textContent = (user.username || user.email || '?').trim().charAt(0).toUpperCase();
  chat.reset();
  await Promise.allSettled([
    collections.load()
      .catch((failure) => toast(`Collections: ${failure.message}`, 'error'))
      .then(() => { documents.applyScope(); renderScope(); return documents.load(); })
      .catch((failure) => toast(`Documents: ${failure.message}`, 'error')),
    chat.loadConversations(),
    documents.loadFileTypes(),
    usage.refresh(),
  ]);
  chat.refreshWelcome();
  $('#question').focus();
}

function setupPanels() {
  const scrim = $('#scrim');
  const panels = { sidebar: $('#sidebar'), documents: $('#documents') };
  const closeAll = () => {
    for (const panel of Object.values(panels)) panel.classList.remove('open');
    scrim.hidden = true;
  };
  for (const button of document.querySelectorAll('[data-open]')) {
    button.innerHTML = button.dataset.open === 'sidebar' ? icons.menu : `${icons.files}<span>Documents</span>`;
    button.addEventListener('click', () => { panels[button.dataset.open].classList.add('open'); scrim.hidden = false; });
  }
  for (const button of document.querySelectorAll('[data-close]')) {
    button.innerHTML = icons.x;
    button.addEventListener('click', closeAll);
  }
  scrim.addEventListener('click', closeAll);
  document.body.addEventListener('closepanels', closeAll);
  document.addEventListener('keydown', (event) => { if (event.key === 'Escape') closeAll(); });
}

async function logout() {
  try { await request('/api/auth/logout', { method: 'POST' }); } catch { /* the token may already be invalid */ }
  setToken(null);
  showAuth();
}

async function boot() {
  usage = new UsageMeter();
  keys = new ApiKeysDialog();
  collections = new Collections({ onSelect: () => applyScope(true), onManage: (collection) => share.open(collection) });
  share = new ShareDialog({ me: () => user, onChanged: collectionsChanged });
  documents = new DocumentsPanel({
    collections,
    onChange: () => chat?.refreshWelcome(),
    onStored: () => { usage.refreshSoon(); collections.refreshSoon(collectionsChanged); },
  });
  chat = new ChatView({ hasDocuments: () => documents.completedCount() > 0, scope: () => collections.scopeIds() });
  setupPanels();
  $('#chat-scope').addEventListener('click', () => {
    if (window.matchMedia('(max-width: 1180px)').matches) $('#docs-toggle').click();
    collections.focusCurrent();
  });
  $('#logout').innerHTML = icons.logout;
  $('#logout').addEventListener('click', logout);
  setUnauthorizedHandler(() => { setToken(null); toast('Your session ended. Please sign in again.'); showAuth(); });
  initAuth((user) => showApp(user));
  if (!getToken()) { showAuth(); return; }
  try {
    await showApp(await request('/api/auth/me'));
  } catch {
    setToken(null);
    showAuth();
  }
}

boot();

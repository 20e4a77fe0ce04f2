// Docent web UI: boot, sign-in state, and the responsive panels.
import { getToken, request, setToken, setUnauthorizedHandler } from './api.js';
import { initAuth } from './auth.js';
import { ChatView } from './chat.js';
import { $, toast } from './dom.js';
import { DocumentsPanel } from './documents.js';
import { icons } from './icons.js';
import { ApiKeysDialog } from './keys.js';
import { UsageMeter } from './usage.js';

const authView = $('#auth-view');
const appView = $('#app-view');
let chat;
let documents;
let usage;
let keys;

function showAuth() {
  documents?.stopAll();
  usage?.clear();
  keys?.close();
  appView.hidden = true;
  authView.hidden = false;
  $('[data-testid="auth-email"]').focus();
}

async function showApp(user) {
  authView.hidden = true;
  appView.hidden = false;
  $('#account-name').textContent = user.username;
  $('#account-email').textContent = user.email;
  $('#account-avatar').textContent = (user.username || user.email || '?').trim().charAt(0).toUpperCase();
  chat.reset();
  await Promise.allSettled([
    documents.load().catch((failure) => toast(`Documents: ${failure.message}`, 'error')),
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
  documents = new DocumentsPanel({ onChange: () => chat?.refreshWelcome(), onStored: () => usage.refreshSoon() });
  chat = new ChatView({ hasDocuments: () => documents.completedCount() > 0 });
  setupPanels();
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

// Sign in / create account.
import { request, setToken } from './api.js';
import { $ } from './dom.js';

export function initAuth(onSignedIn) {
  const form = $('#auth-form');
  const error = $('[data-testid="auth-error"]');
  const submit = $('[data-testid="auth-submit"]');
  let mode = 'signin';

  function setMode(next) {
    mode = next;
    for (const tab of document.querySelectorAll('.tab')) {
      tab.setAttribute('aria-selected', String(tab.dataset.mode === mode));
    }
    for (const field of form.querySelectorAll('[data-only="signup"]')) field.hidden = mode !== 'signup';
    form.password.autocomplete = mode === 'signup' ? 'new-password' : 'current-password';
    submit.textContent = mode === 'signup' ? 'Create account' : 'Sign in';
    error.hidden = true;
  }

  for (const tab of document.querySelectorAll('.tab')) tab.addEventListener('click', () => setMode(tab.dataset.mode));

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.hidden = true;
    const email = form.email.value.trim();
    const password = form.password.value;
    const username = form.username.value.trim() || email.split('@')[0];
    if (mode === 'signup' && password.length < 8) {
      error.textContent = 'Use at least 8 characters for your password.';
      error.hidden = false;
      return;
    }
    submit.disabled = true;
    try {
      const path = mode === 'signup' ? '/api/auth/signup' : '/api/auth/signin';
      const body = mode === 'signup' ? { email, username, password } : { email, password };
      const reply = await request(path, { method: 'POST', json: body });
      setToken(reply.access_token);
      form.reset();
      onSignedIn(reply.user);
    } catch (failure) {
      error.textContent = failure.message;
      error.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });

  return { setMode };
}

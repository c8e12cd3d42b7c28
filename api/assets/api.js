// Talking to the lpcmon API: JSON fetches, the stream URL, and the bearer token.
//
// The token lives in sessionStorage only: it survives a reload of this tab but not the tab
// itself, and is never written to localStorage or a cookie. fetch() sends it as
// `Authorization: Bearer`; EventSource cannot send headers, so the stream gets `?token=`,
// which the server accepts on that route only.

const TOKEN_KEY = 'lpcmon.token';

export class AuthError extends Error {}

export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

/** GETs `path` (relative to the page) and returns its JSON; throws AuthError on 401. */
export async function getJSON(path) {
  const headers = { Accept: 'application/json' };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  const response = await fetch(path, { headers, cache: 'no-store' });
  if (response.status === 401) throw new AuthError('the server wants a token');
  if (!response.ok) {
    // The API answers every error as {"error":{"code","message"}}; say what it said.
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error.message || message;
    } catch {
      // Not our JSON (a proxy's page, say): the status line is the best there is.
    }
    throw new HttpError(response.status, message);
  }
  return response.json();
}

/** The stream URL for these query parameters, with the token when there is one. */
export function streamUrl(params) {
  const p = new URLSearchParams(params);
  const t = token();
  if (t) p.set('token', t);
  return `events/stream?${p}`;
}

// One prompt at a time: everything that hits a 401 while the dialog is open waits for the
// same answer instead of stacking dialogs.
let asking = null;

/** Asks for the token (once, however many callers) and stores it for this tab. */
export function askToken() {
  if (asking) return asking;
  const dialog = document.getElementById('token-dialog');
  const input = document.getElementById('token-input');
  // A token already stored and still refused is wrong: say so rather than ask blankly.
  document.getElementById('token-error').hidden = !token();
  input.value = '';
  asking = new Promise((resolve) => {
    dialog.addEventListener(
      'close',
      () => {
        const value = input.value.trim();
        if (value) sessionStorage.setItem(TOKEN_KEY, value);
        asking = null;
        resolve();
      },
      { once: true },
    );
  });
  dialog.showModal();
  return asking;
}

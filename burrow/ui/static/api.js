// Calls to the server: the dashboard's JSON (/ui-api) and the v1.0 API for writes, each with
// the token the user signed in with (sessionStorage: this tab only), as Authorization: Bearer.

const KEY = 'burrow.token';

/** A 401: the server wants a (different) token. */
export class AuthError extends Error {}

/** Any other refusal, with the server's reason. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(KEY) || '';
}

export function setToken(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

/** A path segment: names may hold any character, '/' included (sent as %2F). */
export const seg = encodeURIComponent;

async function reason(response) {
  try {
    const body = await response.json();
    return `${response.status} ${body.error}: ${body.message}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

/** One request; resolves to the Response when it succeeded, else throws AuthError or ApiError. */
export async function call(method, path, { query = {}, body } = {}) {
  const headers = {};
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== null && value !== undefined && value !== '') params.set(key, String(value));
  }
  const q = params.toString();
  if (body !== undefined) headers['Content-Type'] = 'application/octet-stream';
  let response;
  try {
    response = await fetch(q ? `${path}?${q}` : path, {
      method, headers, body, cache: 'no-store', credentials: 'omit',
    });
  } catch (error) {
    throw new ApiError(0, `cannot reach the server (${error.message})`);
  }
  if (response.status === 401) throw new AuthError(await reason(response));
  if (!response.ok) throw new ApiError(response.status, await reason(response));
  return response;
}

export async function getJson(path, query = {}) {
  return (await call('GET', path, { query })).json();
}

/** A random message id (crypto.randomUUID needs a secure context; this does not). */
export function randomId() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

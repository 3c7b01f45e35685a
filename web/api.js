// The server's HTTP API: JSON requests that carry the access token, and failures as readable ApiErrors.

export class ApiError extends Error {
  constructor(path, detail, status) {
    super(`${path}: ${detail}`);
    this.detail = detail;
    this.status = status;  // 0: the request never got an answer
  }
}

// The access token of a server started with --auth_token: taken from the page's ?token=, or asked for once
// when the server answers 401, and kept in localStorage for the next visits.
const TOKEN_KEY = "avatar-server-token";
export const auth = {
  get token() {
    return localStorage.getItem(TOKEN_KEY);
  },
  set token(value) {
    if (value) localStorage.setItem(TOKEN_KEY, value);
    else localStorage.removeItem(TOKEN_KEY);
  },
  // A URL for the routes the browser opens itself (EventSource, downloads), which cannot send a header.
  url(path) {
    const token = this.token;
    if (!token) return path;
    return `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
  },
  // After a 401: ask the user (true if a new token was given).
  ask(wrong) {
    const answer = window.prompt(wrong ? "That token was not accepted. Access token:" :
                                         "This server needs an access token:");
    if (!answer || !answer.trim()) return false;
    this.token = answer.trim();
    return true;
  },
};

// A link with ?token=... logs the browser in: the token is kept for the next visits.
export function keepTokenFrom(search) {
  const fromPage = new URLSearchParams(search).get("token");
  if (fromPage) auth.token = fromPage;
}

function request(body, method, token) {
  const isForm = body instanceof FormData;
  const hasBody = method !== "GET";
  const headers = isForm || !hasBody ? {} : { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const payload = !hasBody ? undefined : isForm ? body : JSON.stringify(body);
  return { method, headers, body: payload };
}

// fetch, again after a 401 with the token the user gives (or one another request got meanwhile).
async function fetchWithToken(path, body, method) {
  for (;;) {
    const sent = auth.token;
    const resp = await fetch(path, request(body, method, sent));
    if (resp.status !== 401) return resp;
    if (auth.token && auth.token !== sent) continue;  // answered for another request meanwhile: no question
    if (!auth.ask(Boolean(sent))) return resp;
  }
}

// Resolves with the JSON body, rejects with a readable ApiError (network failure, HTTP error status or a
// non-zero `code`, as LiveTalking's API reports errors).
export async function api(path, body, method = "POST") {
  let resp;
  try {
    resp = await fetchWithToken(path, body, method);
  } catch (e) {
    throw new ApiError(path, `network error (${e.message}). Is the server running?`, 0);
  }
  let json = null;
  try {
    json = await resp.json();
  } catch {
    // not JSON: the HTTP status says what happened
  }
  const code = json && typeof json.code === "number" ? json.code : 0;
  if (!resp.ok || code !== 0 || json === null) {
    const detail = (json && (json.msg || json.message)) || `${resp.status} ${resp.statusText}`.trim();
    throw new ApiError(path, detail, resp.status);
  }
  return json;
}

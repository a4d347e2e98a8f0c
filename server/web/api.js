// Talking to the server: JSON requests with the API key, server-sent events (data and the progress comments),
// and every failure as an ApiError whose message a person can act on.

const KEY_STORE = "rpserve.apiKey";

export class ApiError extends Error {
  constructor(status, message, param = null, code = null) {
    super(message);
    this.status = status;
    this.param = param;
    this.code = code;
  }
}

export function apiKey() {
  return localStorage.getItem(KEY_STORE) ?? "";
}

export function setApiKey(key) {
  localStorage.setItem(KEY_STORE, key.trim());
}

function headers() {
  const h = { "Content-Type": "application/json" };
  if (apiKey()) h.Authorization = `Bearer ${apiKey()}`;
  return h;
}

// A fetch whose failures are ApiErrors: a refused key (401), a busy server (429, with its Retry-After), any other
// error answer, and no answer at all.
export async function api(path, body, signal) {
  let response;
  try {
    response = await fetch(path, {
      method: body === undefined ? "GET" : "POST", headers: headers(), signal,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "The server stopped answering: is it still running? Try again once it is back.");
  }
  if (response.ok) return response;
  throw await failure(response);
}

async function failure(response) {
  let error = null;
  try {
    error = (await response.json()).error;
  } catch { /* not an OpenAI-style error body */ }
  if (response.status === 401) {
    const message = apiKey()
      ? "The server refused this API key: set the right one with the \"API key\" button."
      : "This server needs an API key: set it with the \"API key\" button.";
    return new ApiError(401, message);
  }
  if (response.status === 429) {
    const retry = response.headers.get("Retry-After");
    const wait = retry ? ` Try again in ${retry} s.` : "";
    return new ApiError(429, `The server is busy with other requests.${wait}`);
  }
  return new ApiError(
    response.status, error?.message ?? `The server answered ${response.status}.`, error?.param ?? null, error?.code ?? null,
  );
}

// The events of an SSE response: parsed `data:` payloads, and `{ progress: [read, total] }` for the server's
// "reading prompt" comments. Ends at `[DONE]`; a stream cut before it is an ApiError.
export async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(0, "The server stopped answering in the middle of the reply.");
    }
    if (chunk.done) throw new ApiError(0, "The server stopped answering in the middle of the reply.");
    buffer += decoder.decode(chunk.value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const lines = block.split(/\r?\n/);
      const progress = lines.map((l) => /^: ?reading prompt (\d+)\/(\d+)/.exec(l)).find(Boolean);
      if (progress) yield { progress: [Number(progress[1]), Number(progress[2])] };
      const data = lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      const event = JSON.parse(data);
      if (event.error) throw new ApiError(500, event.error.message ?? String(event.error));
      yield event;
    }
  }
}

// The built-in multi-character roleplay page. It speaks the server's own API (/v1/chat/render,
// /v1/chat/completions, /v1/completions, /v1/models) and keeps every scene in this browser's localStorage.
// No build step, no dependency, nothing fetched from elsewhere.

const STORE = "rpserve.scenes";
const KEY_STORE = "rpserve.apiKey";
const DEFAULT_OPENING = "Let's engage together in a roleplay.";
const CARD_BREAKERS = ["\n", ":", "\"", "*", "::::"];
// The card's sampling, then the rest of the server's samplers under "more" (all at their neutral values).
const SAMPLING = [
  ["max_tokens", 300, "Max tokens"], ["temperature", 1.0, "Temperature"], ["min_p", 0.05, "Min-p"],
  ["dry_multiplier", 0.8, "DRY multiplier"], ["dry_base", 1.75, "DRY base"],
  ["dry_allowed_length", 2, "DRY allowed length"], ["dry_sequence_breakers", JSON.stringify(CARD_BREAKERS), "DRY breakers (JSON)"],
];
const SAMPLING_MORE = [
  ["top_k", 0, "Top-k"], ["top_p", 1.0, "Top-p"], ["repetition_penalty", 1.0, "Repetition penalty"],
  ["frequency_penalty", 0, "Frequency penalty"], ["presence_penalty", 0, "Presence penalty"],
  ["typical_p", 1.0, "Typical"], ["tfs", 1.0, "Tail-free"], ["top_a", 0, "Top-a"], ["top_n_sigma", 0, "Top-n-sigma"],
  ["xtc_threshold", 0.1, "XTC threshold"], ["xtc_probability", 0, "XTC probability"],
  ["smoothing_factor", 0, "Smoothing factor"], ["smoothing_curve", 1, "Smoothing curve"],
  ["dynatemp_low", 1, "Dyn. temp. low"], ["dynatemp_high", 1, "Dyn. temp. high"],
  ["mirostat_mode", 0, "Mirostat (0 or 2)"], ["mirostat_tau", 5, "Mirostat tau"], ["mirostat_eta", 0.1, "Mirostat eta"],
  ["seed", "", "Seed (empty: random)"],
];
// A label inside generated text; a name never starts with a space (as the server's parser reads it).
const LABEL = /\s*::::(user|assistant):(?:([^:\s][^:\n]*):)? ?/;

const $ = (id) => document.getElementById(id);
let state = loadState();
let modelInfo = { id: "", maxLen: null };
let running = null; // the AbortController of the generation in progress
let previewTimer = null;

// ---- Scenes and their storage ----

function newScene() {
  const sampling = {};
  for (const [name, value] of [...SAMPLING, ...SAMPLING_MORE]) sampling[name] = value;
  return { id: crypto.randomUUID(), title: "", opening: DEFAULT_OPENING, scenario: "", cast: [], turns: [], sampling };
}

function loadState() {
  try {
    const stored = JSON.parse(localStorage.getItem(STORE));
    if (stored && stored.scenes && Object.keys(stored.scenes).length) return stored;
  } catch { /* a damaged store starts afresh */ }
  const scene = newScene();
  return { current: scene.id, scenes: { [scene.id]: scene } };
}

function save() {
  localStorage.setItem(STORE, JSON.stringify(state));
}

function scene() {
  return state.scenes[state.current];
}

function changed() {
  save();
  schedulePreview();
}

// ---- From the scene to the API body, and back ----

function turnText(turn) {
  return turn.alternatives[turn.chosen] ?? "";
}

function message(turn) {
  const content = turnText(turn);
  if (turn.kind === "ooc") return { role: "user", ooc: true, content };
  if (turn.kind === "narrator") return { role: "system", content };
  return { role: turn.side === "model" ? "assistant" : "user", name: turn.name, content };
}

function samplingBody(values) {
  const body = {};
  for (const [name] of [...SAMPLING, ...SAMPLING_MORE]) {
    const raw = values[name];
    if (raw === "" || raw === null || raw === undefined) continue;
    if (name === "dry_sequence_breakers") {
      try { body[name] = JSON.parse(raw); } catch { body[name] = raw; } // the server takes comma-separated text too
    } else {
      body[name] = Number(raw);
    }
  }
  return body;
}

// The body /v1/chat/completions takes (also what "Export" writes): `turns` to send, and who speaks next.
function chatBody(s, turns, speaker) {
  const body = {
    characters: s.cast.map((c) => ({ name: c.name, description: c.description, side: c.side })),
    messages: turns.map(message),
    ...samplingBody(s.sampling),
  };
  if (s.title.trim()) body.title = s.title;
  if (s.scenario.trim()) body.scenario = s.scenario;
  if (s.opening.trim() && s.opening !== DEFAULT_OPENING) body.opening = s.opening;
  if (speaker) body.speaker = speaker;
  return body;
}

function sceneFromBody(body) {
  const s = newScene();
  s.title = body.title ?? "";
  s.scenario = body.scenario ?? "";
  s.opening = body.opening ?? DEFAULT_OPENING;
  const speakers = new Set((body.messages ?? []).filter((m) => m.role === "assistant").map((m) => m.name));
  s.cast = (body.characters ?? []).map((c) => ({
    name: c.name ?? "", description: c.description ?? "", side: c.side ?? (speakers.has(c.name) ? "model" : "user"),
  }));
  s.turns = (body.messages ?? []).map(turnFromMessage);
  for (const [name] of [...SAMPLING, ...SAMPLING_MORE]) {
    if (body[name] !== undefined) {
      s.sampling[name] = name === "dry_sequence_breakers" ? JSON.stringify(body[name]) : body[name];
    }
  }
  return s;
}

function turnFromMessage(m) {
  const content = typeof m.content === "string" ? m.content : "";
  if (m.ooc) return makeTurn("ooc", "user", null, content);
  if (m.role === "system") return makeTurn("narrator", "user", null, content);
  if (m.role === "user" && !m.name) {
    const ooc = /^\(OOC:\s*([\s\S]*)\)$/.exec(content.trim());
    return ooc ? makeTurn("ooc", "user", null, ooc[1]) : makeTurn("narrator", "user", null, content);
  }
  return makeTurn("character", m.role === "assistant" ? "model" : "user", m.name, content);
}

function makeTurn(kind, side, name, text) {
  return { id: crypto.randomUUID(), kind, side, name, alternatives: [text], chosen: 0 };
}

// The model's text after a label that ended at its colon, as the server's parser splits it into turns.
function parseTurns(text, speaker) {
  const pieces = text.split(new RegExp(LABEL.source));
  const turns = [{ role: "assistant", name: speaker, content: pieces[0].replace(/^ /, "") }];
  for (let i = 1; i + 2 < pieces.length; i += 3) {
    turns.push({ role: pieces[i], name: pieces[i + 1] || null, content: pieces[i + 2] ?? "" });
  }
  return turns.map((t) => ({ ...t, content: t.content.trim() }));
}

// While streaming, text after the last `::::` that is not yet a whole label is held back (no flicker).
function settledText(text) {
  const mark = text.lastIndexOf("::::");
  if (mark < 0) return text;
  const rest = text.slice(mark);
  return /^::::(user|assistant):(?:[^:\s][^:\n]*:)? /.test(rest) || /^::::(user|assistant): \S/.test(rest)
    ? text : text.slice(0, mark).replace(/\s+$/, "");
}

// ---- Talking to the server ----

function headers() {
  const key = localStorage.getItem(KEY_STORE);
  const h = { "Content-Type": "application/json" };
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function api(path, body, signal) {
  const response = await fetch(path, {
    method: body === undefined ? "GET" : "POST", headers: headers(), signal,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    askForKey("This server needs its API key.");
    throw new ApiError(401, "This server needs its API key: set it with the \"API key\" button.", null);
  }
  return response;
}

class ApiError extends Error {
  constructor(status, message, param) {
    super(message);
    this.status = status;
    this.param = param;
  }
}

async function failure(response) {
  try {
    const error = (await response.json()).error;
    return new ApiError(response.status, error.message, error.param);
  } catch {
    return new ApiError(response.status, `The server answered ${response.status}.`, null);
  }
}

function askForKey(reason) {
  const key = window.prompt(`${reason}\nAPI key (kept in this browser only):`, localStorage.getItem(KEY_STORE) ?? "");
  if (key !== null) {
    localStorage.setItem(KEY_STORE, key.trim());
    loadModel();
    schedulePreview();
  }
}

async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

async function loadModel() {
  try {
    const response = await api("/v1/models");
    if (!response.ok) return;
    const entry = (await response.json()).data[0];
    modelInfo = { id: entry.id, maxLen: entry.max_model_len ?? null };
    $("model-name").textContent = entry.id;
  } catch { /* shown when a request fails */ }
}

// ---- The exact prompt and its token count ----

function schedulePreview() {
  clearTimeout(previewTimer);
  previewTimer = setTimeout(preview, 250);
}

async function preview() {
  const s = scene();
  clearTurnErrors();
  if (!s.turns.length && !s.cast.length && !s.title.trim() && !s.scenario.trim()) {
    $("prompt").textContent = "";
    $("token-count").textContent = "";
    return;
  }
  try {
    const response = await api("/v1/chat/render", chatBody(s, s.turns, $("speaker").value || undefined));
    if (!response.ok) throw await failure(response);
    const rendered = await response.json();
    $("prompt").textContent = rendered.prompt;
    const of = modelInfo.maxLen ? ` / ${modelInfo.maxLen}` : "";
    $("token-count").textContent = `${rendered.token_ids.length}${of} tokens`;
    showError(null);
  } catch (error) {
    $("prompt").textContent = "";
    $("token-count").textContent = "";
    showError(error);
  }
}

// An error goes next to what it is about: a turn (`messages[2]...`), a cast member, or under the transcript.
function showError(error) {
  const box = $("error");
  box.hidden = true;
  if (!error) return;
  const turn = /^messages\[(\d+)\]/.exec(error.param ?? "");
  const member = /^characters\[(\d+)\]/.exec(error.param ?? "");
  if (turn) {
    const item = $("transcript").children[Number(turn[1])];
    if (item) {
      const slot = item.querySelector(".turn-error");
      slot.textContent = error.message;
      slot.hidden = false;
      return;
    }
  }
  if (member) {
    const item = $("cast").children[Number(member[1])];
    if (item) {
      item.querySelector(".field-error").textContent = error.message;
      return;
    }
  }
  box.textContent = error.message;
  box.hidden = false;
}

function clearTurnErrors() {
  for (const slot of document.querySelectorAll(".turn-error")) slot.hidden = true;
}

// ---- Rendering ----

function render() {
  renderSceneList();
  const s = scene();
  $("title").value = s.title;
  $("opening").value = s.opening;
  $("scenario").value = s.scenario;
  renderCast();
  renderSampling();
  renderTranscript();
  renderChoosers();
  schedulePreview();
}

function renderSceneList() {
  const list = $("scene-list");
  list.replaceChildren(...Object.values(state.scenes).map((s) => {
    const option = new Option(s.title.trim() || "Untitled scene", s.id);
    option.selected = s.id === state.current;
    return option;
  }));
}

function nameProblem(name, index) {
  if (!name) return "A name is needed.";
  if (name.includes(":")) return "A name cannot contain ':' (it would end the label).";
  if (/[\r\n]/.test(name)) return "A name cannot contain a line break.";
  if (name !== name.trim()) return "A name cannot start or end with a space.";
  if (scene().cast.some((c, i) => i !== index && c.name === name)) return "Two characters share this name.";
  return "";
}

function renderCast() {
  const s = scene();
  $("cast").replaceChildren(...s.cast.map((c, index) => {
    const item = document.createElement("li");
    const name = Object.assign(document.createElement("input"), { value: c.name, placeholder: "Name" });
    name.setAttribute("aria-label", "Character name");
    const side = document.createElement("select");
    side.setAttribute("aria-label", "Side");
    side.append(new Option("model side", "model", false, c.side === "model"), new Option("user side", "user", false, c.side === "user"));
    const remove = Object.assign(document.createElement("button"), { type: "button", textContent: "Remove" });
    const description = Object.assign(document.createElement("textarea"), { value: c.description, rows: 2, placeholder: "Description" });
    description.setAttribute("aria-label", "Character description");
    const problem = Object.assign(document.createElement("div"), { className: "field-error", textContent: nameProblem(c.name, index) });
    name.addEventListener("input", () => {
      const old = c.name;
      c.name = name.value;
      for (const t of s.turns) if (t.kind === "character" && t.name === old) t.name = c.name;
      problem.textContent = nameProblem(c.name, index);
      renderChoosers();
      renderTranscript();
      changed();
    });
    side.addEventListener("change", () => { c.side = side.value; renderChoosers(); changed(); });
    description.addEventListener("input", () => { c.description = description.value; changed(); });
    remove.addEventListener("click", () => { s.cast.splice(index, 1); renderCast(); renderChoosers(); changed(); });
    const row = document.createElement("div");
    row.className = "row";
    row.append(name, side, remove);
    item.append(row, description, problem);
    return item;
  }));
}

function renderSampling() {
  const s = scene();
  const fields = (list) => list.map(([name, , text]) => {
    const label = document.createElement("label");
    const input = Object.assign(document.createElement("input"), { value: s.sampling[name] ?? "", name });
    input.dataset.field = name;
    input.addEventListener("input", () => { s.sampling[name] = input.value; changed(); });
    label.append(text, input);
    return label;
  });
  $("sampling").replaceChildren(...fields(SAMPLING));
  $("sampling-more").replaceChildren(...fields(SAMPLING_MORE));
}

function whoOf(turn) {
  if (turn.kind === "ooc") return "OOC note";
  if (turn.kind === "narrator") return "Narrator";
  return `${turn.name} (${turn.side === "model" ? "model" : "user"} side)`;
}

function renderTranscript() {
  const s = scene();
  $("transcript").replaceChildren(...s.turns.map((turn, index) => turnElement(turn, index)));
  $("transcript").scrollTop = $("transcript").scrollHeight;
}

function turnElement(turn, index) {
  const item = $("turn-template").content.firstElementChild.cloneNode(true);
  item.dataset.id = turn.id;
  item.classList.add(turn.kind === "character" ? turn.side : turn.kind);
  item.querySelector(".who").textContent = whoOf(turn);
  item.querySelector(".text").textContent = turnText(turn);
  const swipes = item.querySelector(".swipes");
  if (turn.alternatives.length > 1) {
    swipes.hidden = false;
    item.querySelector(".swipe-at").textContent = `${turn.chosen + 1}/${turn.alternatives.length}`;
  }
  item.querySelector(".swipe-left").addEventListener("click", () => swipe(turn, -1));
  item.querySelector(".swipe-right").addEventListener("click", () => swipe(turn, 1));
  item.querySelector(".delete").addEventListener("click", () => { scene().turns.splice(index, 1); renderTranscript(); changed(); });
  item.querySelector(".insert").addEventListener("click", () => insertBelow(index));
  item.querySelector(".edit").addEventListener("click", () => editTurn(item, turn));
  return item;
}

function swipe(turn, step) {
  turn.chosen = (turn.chosen + step + turn.alternatives.length) % turn.alternatives.length;
  renderTranscript();
  changed();
}

function editTurn(item, turn) {
  const text = item.querySelector(".text");
  const area = Object.assign(document.createElement("textarea"), { value: turnText(turn) });
  area.setAttribute("aria-label", "Edit turn");
  const done = () => { turn.alternatives[turn.chosen] = area.value; renderTranscript(); changed(); };
  area.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); done(); }
    if (event.key === "Escape") renderTranscript();
  });
  area.addEventListener("blur", done);
  text.replaceChildren(area);
  area.focus();
}

function insertBelow(index) {
  const [kind, side, name] = writerChoice();
  scene().turns.splice(index + 1, 0, makeTurn(kind, side, name, "..."));
  renderTranscript();
  editTurn($("transcript").children[index + 1], scene().turns[index + 1]);
}

// "Write as": any cast member, a narrator note or an OOC note. "Speaks next": any model-side character.
function renderChoosers() {
  const s = scene();
  const writer = $("writer");
  const keep = writer.value;
  writer.replaceChildren(
    ...s.cast.filter((c) => c.name && !nameProblem(c.name, s.cast.indexOf(c))).map((c) => new Option(c.name, `character:${c.name}`)),
    new Option("Narrator note", "narrator"), new Option("OOC note", "ooc"),
  );
  const userSide = s.cast.find((c) => c.side === "user" && c.name);
  writer.value = [...writer.options].some((o) => o.value === keep) ? keep : (userSide ? `character:${userSide.name}` : "narrator");
  const speaker = $("speaker");
  const keepSpeaker = speaker.value;
  speaker.replaceChildren(...s.cast.filter((c) => c.side === "model" && c.name).map((c) => new Option(c.name, c.name)));
  if ([...speaker.options].some((o) => o.value === keepSpeaker)) speaker.value = keepSpeaker;
}

function writerChoice() {
  const value = $("writer").value;
  if (value === "ooc") return ["ooc", "user", null];
  if (value === "narrator" || !value) return ["narrator", "user", null];
  const name = value.slice("character:".length);
  const member = scene().cast.find((c) => c.name === name);
  return ["character", member?.side ?? "user", name];
}

// ---- Generation ----

function setRunning(controller) {
  running = controller;
  $("stop").disabled = !controller;
  for (const id of ["generate", "regenerate", "continue-turn", "send"]) $(id).disabled = Boolean(controller);
}

async function generate(options = {}) {
  const s = scene();
  const speaker = options.speaker ?? $("speaker").value;
  if (!speaker) return showError(new ApiError(400, "Add a model-side character to the cast: it speaks next.", null));
  const turns = Number($("turns").value) || 1;
  const history = options.history ?? s.turns;
  const body = { ...chatBody(s, history, speaker), stream: true, max_turns: Math.min(Math.max(turns, 1), 16) };
  const controller = new AbortController();
  setRunning(controller);
  // The turns this generation writes: the speaker's first, then any the model goes on to write.
  const target = options.into ?? makeTurn("character", "model", speaker, "");
  if (!options.into) s.turns.push(target);
  const base = options.into ? target.alternatives.length : 0;
  if (options.into) { target.alternatives.push(""); target.chosen = base; }
  const written = [target];
  renderTranscript();
  markStreaming(target, true);
  let text = "";
  try {
    const response = await api("/v1/chat/completions", body, controller.signal);
    if (!response.ok) throw await failure(response);
    for await (const chunk of events(response)) {
      if (chunk.error) throw new ApiError(500, chunk.error.message ?? String(chunk.error), null);
      const choice = chunk.choices?.[0];
      if (!choice) continue;
      if (choice.delta?.content) {
        text += choice.delta.content;
        showStreamed(s, written, settledText(text), speaker);
      }
      if (choice.finish_reason && choice.messages) placeTurns(s, written, choice.messages);
    }
    if (turns <= 1) showStreamed(s, written, text, speaker);
  } catch (error) {
    if (error.name !== "AbortError") showError(error);
  } finally {
    setRunning(null);
    if (!turnText(target) && !running) dropEmpty(s, target, base);
    renderTranscript();
    changed();
  }
}

function dropEmpty(s, target, base) {
  if (target.alternatives.length > 1) {
    target.alternatives.splice(base, 1);
    target.chosen = Math.min(target.chosen, target.alternatives.length - 1);
  } else {
    s.turns.splice(s.turns.indexOf(target), 1);
  }
}

// Streamed text, split into its turns as the server's parser will: each new label becomes its own message.
function showStreamed(s, written, text, speaker) {
  placeTurns(s, written, parseTurns(text, speaker));
}

function placeTurns(s, written, parsed) {
  parsed.forEach((t, i) => {
    if (i === 0) {
      written[0].alternatives[written[0].chosen] = t.content;
      return;
    }
    if (!written[i]) {
      const member = s.cast.find((c) => c.name === t.name);
      const turn = turnFromMessage({ role: t.role, name: t.name, content: t.content });
      if (turn.kind === "character" && member) turn.side = member.side;
      written.push(turn);
      s.turns.splice(s.turns.indexOf(written[i - 1]) + 1, 0, turn);
    } else {
      written[i].alternatives[0] = t.content;
    }
  });
  for (const turn of written) {
    const item = document.querySelector(`[data-id="${turn.id}"]`);
    if (item) item.querySelector(".text").textContent = turnText(turn);
    else { renderTranscript(); break; }
  }
  markStreaming(written[written.length - 1], Boolean(running));
  $("transcript").scrollTop = $("transcript").scrollHeight;
}

function markStreaming(turn, on) {
  for (const item of document.querySelectorAll(".turn.streaming")) item.classList.remove("streaming");
  const item = document.querySelector(`[data-id="${turn.id}"]`);
  if (item && on) item.classList.add("streaming");
}

function lastModelTurn() {
  const turns = scene().turns;
  const last = turns[turns.length - 1];
  return last && last.kind === "character" && last.side === "model" ? last : null;
}

// Regenerate: another alternative for the last model turn, from the same history; swipe between them.
function regenerate() {
  const last = lastModelTurn();
  if (!last) return showError(new ApiError(400, "The last turn is not a model-side character's: nothing to regenerate.", null));
  generate({ speaker: last.name, history: scene().turns.slice(0, -1), into: last });
}

// Continue: the model goes on writing the last model turn. The prompt is the rendered conversation up to that
// turn's label, plus its text so far, sent as a raw completion.
async function continueTurn() {
  const s = scene();
  const last = lastModelTurn();
  if (!last) return showError(new ApiError(400, "The last turn is not a model-side character's: nothing to continue.", null));
  const controller = new AbortController();
  setRunning(controller);
  markStreaming(last, true);
  try {
    const rendered = await api("/v1/chat/render", chatBody(s, s.turns.slice(0, -1), last.name), controller.signal);
    if (!rendered.ok) throw await failure(rendered);
    const prompt = `${(await rendered.json()).prompt} ${turnText(last)}`;
    const body = { prompt, stream: true, ...samplingBody(s.sampling) };
    const response = await api("/v1/completions", body, controller.signal);
    if (!response.ok) throw await failure(response);
    let added = "";
    const start = turnText(last);
    for await (const chunk of events(response)) {
      if (chunk.error) throw new ApiError(500, chunk.error.message ?? String(chunk.error), null);
      added += chunk.choices?.[0]?.text ?? "";
      last.alternatives[last.chosen] = start + added.replace(/\s+$/, "");
      const item = document.querySelector(`[data-id="${last.id}"]`);
      if (item) item.querySelector(".text").textContent = turnText(last);
    }
  } catch (error) {
    if (error.name !== "AbortError") showError(error);
  } finally {
    setRunning(null);
    renderTranscript();
    changed();
  }
}

function send(event) {
  event?.preventDefault();
  const text = $("input").value.trim();
  if (!text || running) return;
  const [kind, side, name] = writerChoice();
  scene().turns.push(makeTurn(kind, side, name, text));
  $("input").value = "";
  renderTranscript();
  changed();
}

// ---- Import and export ----

function download(name, text) {
  const link = Object.assign(document.createElement("a"), {
    href: URL.createObjectURL(new Blob([text], { type: "application/json" })), download: name,
  });
  link.click();
  URL.revokeObjectURL(link.href);
}

function exportScene() {
  const s = scene();
  const body = chatBody(s, s.turns, $("speaker").value || undefined);
  download(`${(s.title.trim() || "scene").replace(/[^\w.-]+/g, "_")}.json`, JSON.stringify(body, null, 2));
}

async function importScene(file) {
  try {
    const imported = sceneFromBody(JSON.parse(await file.text()));
    state.scenes[imported.id] = imported;
    state.current = imported.id;
    save();
    render();
  } catch (error) {
    showError(new ApiError(400, `Cannot import ${file.name}: ${error.message}`, null));
  }
}

// A SillyTavern character card: Character Card V2 JSON (or V1), or a PNG carrying it base64-encoded in a
// `chara` text chunk.
async function importCard(file) {
  try {
    const bytes = new Uint8Array(await file.arrayBuffer());
    const json = bytes[0] === 0x89 && bytes[1] === 0x50 ? charaChunk(bytes) : new TextDecoder().decode(bytes);
    const card = JSON.parse(json);
    const data = card.data ?? card;
    const description = [data.description, data.personality].filter((t) => t && t.trim()).join("\n");
    scene().cast.push({ name: (data.name ?? "").trim(), description, side: "model" });
    if (!scene().scenario.trim() && data.scenario) scene().scenario = data.scenario;
    render();
    changed();
  } catch (error) {
    showError(new ApiError(400, `Cannot read the character card ${file.name}: ${error.message}`, null));
  }
}

function charaChunk(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let at = 8; at + 8 <= bytes.length;) {
    const length = view.getUint32(at);
    const type = String.fromCharCode(...bytes.slice(at + 4, at + 8));
    if (type === "tEXt") {
      const chunk = bytes.slice(at + 8, at + 8 + length);
      const zero = chunk.indexOf(0);
      if (new TextDecoder().decode(chunk.slice(0, zero)) === "chara") {
        const binary = atob(new TextDecoder().decode(chunk.slice(zero + 1)));
        return new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0)));
      }
    }
    at += 12 + length;
  }
  throw new Error("the PNG has no 'chara' text chunk");
}

// ---- Wiring ----

function wire() {
  $("scene-list").addEventListener("change", () => { state.current = $("scene-list").value; save(); render(); });
  $("new-scene").addEventListener("click", () => {
    const s = newScene();
    state.scenes[s.id] = s;
    state.current = s.id;
    save();
    render();
  });
  $("delete-scene").addEventListener("click", () => {
    if (!window.confirm("Delete this scene from this browser?")) return;
    delete state.scenes[state.current];
    if (!Object.keys(state.scenes).length) { const s = newScene(); state.scenes[s.id] = s; }
    state.current = Object.keys(state.scenes)[0];
    save();
    render();
  });
  $("export-scene").addEventListener("click", exportScene);
  $("import-scene").addEventListener("change", (e) => { if (e.target.files[0]) importScene(e.target.files[0]); e.target.value = ""; });
  $("import-card").addEventListener("change", (e) => { if (e.target.files[0]) importCard(e.target.files[0]); e.target.value = ""; });
  $("set-key").addEventListener("click", () => askForKey("Set the server's API key."));
  for (const field of ["title", "opening", "scenario"]) {
    $(field).addEventListener("input", () => {
      scene()[field] = $(field).value;
      if (field === "title") renderSceneList();
      changed();
    });
  }
  $("add-character").addEventListener("click", () => {
    scene().cast.push({ name: "", description: "", side: scene().cast.some((c) => c.side === "user") ? "model" : "user" });
    renderCast();
    changed();
    $("cast").lastElementChild.querySelector("input").focus();
  });
  $("composer").addEventListener("submit", send);
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) send(event);
  });
  $("generate").addEventListener("click", () => generate());
  $("regenerate").addEventListener("click", regenerate);
  $("continue-turn").addEventListener("click", continueTurn);
  $("stop").addEventListener("click", () => running?.abort());
  $("speaker").addEventListener("change", schedulePreview);
}

wire();
render();
loadModel().then(schedulePreview);

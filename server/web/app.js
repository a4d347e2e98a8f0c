// The built-in multi-character roleplay page. It speaks the server's own API (/v1/chat/render,
// /v1/chat/completions, /v1/completions, /v1/models) and keeps every scene in this browser's IndexedDB.
// No build step, no dependency, nothing fetched from elsewhere.

import { ApiError, api, apiKey, events, setApiKey } from "./api.js";
import { cardData, cardJson, exampleText, lorebookOf, substituteMacros } from "./cards.js";
import { hueOf, markedUp } from "./markup.js";
import { SceneStore, StorageFull } from "./store.js";

const DEFAULT_OPENING = "Let's engage together in a roleplay.";
const CARD_BREAKERS = ["\n", ":", "\"", "*", "::::"];
const PRESET_STORE = "rpserve.presets";
// Each sampler: name, the card's value, label, and the kind of value it takes.
const SAMPLING = [
  ["max_tokens", 300, "Max tokens", "count"], ["temperature", 1.0, "Temperature", "number"],
  ["min_p", 0.05, "Min-p", "number"], ["dry_multiplier", 0.8, "DRY multiplier", "number"],
  ["dry_base", 1.75, "DRY base", "number"], ["dry_allowed_length", 2, "DRY allowed length", "count"],
  ["dry_sequence_breakers", JSON.stringify(CARD_BREAKERS), "DRY breakers (JSON)", "json"],
];
const SAMPLING_MORE = [
  ["top_k", 0, "Top-k", "count"], ["top_p", 1.0, "Top-p", "number"], ["repetition_penalty", 1.0, "Repetition penalty", "number"],
  ["frequency_penalty", 0, "Frequency penalty", "number"], ["presence_penalty", 0, "Presence penalty", "number"],
  ["typical_p", 1.0, "Typical", "number"], ["tfs", 1.0, "Tail-free", "number"], ["top_a", 0, "Top-a", "number"],
  ["top_n_sigma", 0, "Top-n-sigma", "number"], ["xtc_threshold", 0.1, "XTC threshold", "number"],
  ["xtc_probability", 0, "XTC probability", "number"], ["smoothing_factor", 0, "Smoothing factor", "number"],
  ["smoothing_curve", 1, "Smoothing curve", "number"], ["dynatemp_low", 1, "Dyn. temp. low", "number"],
  ["dynatemp_high", 1, "Dyn. temp. high", "number"], ["mirostat_mode", 0, "Mirostat (0 or 2)", "count"],
  ["mirostat_tau", 5, "Mirostat tau", "number"], ["mirostat_eta", 0.1, "Mirostat eta", "number"],
  ["seed", "", "Seed (empty: random)", "count"],
];
const SAMPLERS = [...SAMPLING, ...SAMPLING_MORE];
const CARD_PRESET = "The model card's";
// A label inside generated text; a name never starts with a space (as the server's parser reads it).
const LABEL = /\s*::::(user|assistant):(?:([^:\s][^:\n]*):)? ?/;

const $ = (id) => document.getElementById(id);
let store = null;
let state = { scenes: {}, current: null };
let modelInfo = { id: "", maxLen: null };
let running = null; // { controller, turns: Set of turn ids it writes }
let previewTimer = null;
let saveTimer = null;
let pendingSaves = 0;
let keyAsked = false; // a refused key is asked for once, not at every preview
let undo = null;
let trimmedCount = 0;
let writerPick = null; // who the user chose to write as (until then: the first user-side character)

// ---- Scenes and their storage ----

function cardSampling() {
  return Object.fromEntries(SAMPLERS.map(([name, value]) => [name, value]));
}

function newScene() {
  return {
    id: crypto.randomUUID(), title: "", opening: DEFAULT_OPENING, scenario: "", cast: [], turns: [],
    sampling: cardSampling(), lorebook: { scan_depth: 2, token_budget: "", entries: [] },
    note: { content: "", depth: 4 },
  };
}

// Scenes from older versions of the page lack the newer fields.
function completed(s) {
  const fresh = newScene();
  return { ...fresh, ...s, lorebook: { ...fresh.lorebook, ...(s.lorebook ?? {}) }, note: { ...fresh.note, ...(s.note ?? {}) } };
}

function scene() {
  return state.scenes[state.current];
}

// Saved at once on every change (and at most every 300 ms while a reply streams). `data-unsaved` on the body
// says a write is still on its way.
async function persist(s = scene()) {
  clearTimeout(saveTimer);
  saveTimer = null;
  pendingSaves += 1;
  document.body.dataset.unsaved = "true";
  try {
    await store.put(s, state.current);
    if ($("error").dataset.kind === "storage") showError(null);
  } catch (error) {
    const words = error instanceof StorageFull
      ? "The browser's storage for this page is full: the latest changes are kept on this screen but not saved. Export the scene, or delete old scenes, to make room."
      : `The scene could not be saved: ${error.message}`;
    showError(new ApiError(0, words), "storage");
  } finally {
    pendingSaves -= 1;
    if (!pendingSaves) delete document.body.dataset.unsaved;
  }
}

function saveSoon() {
  if (saveTimer === null) saveTimer = setTimeout(() => persist(), 300);
}

function changed() {
  persist();
  schedulePreview();
}

// ---- From the scene to the API body, and back ----

function turnText(turn) {
  return turn.alternatives[turn.chosen] ?? "";
}

// The character the user plays, for `{{user}}`: the first user-side cast member.
function userName(s) {
  return s.cast.find((c) => c.side === "user" && c.name)?.name ?? "User";
}

function message(s, turn) {
  const content = substituteMacros(turnText(turn), { char: turn.name ?? "", user: userName(s) });
  if (turn.kind === "ooc") return { role: "user", ooc: true, content };
  if (turn.kind === "narrator") return { role: "system", content };
  return { role: turn.side === "model" ? "assistant" : "user", name: turn.name, content };
}

// Each sampler's value, or the reason it is not one.
function samplerValue(kind, raw) {
  if (raw === "" || raw === null || raw === undefined) return { value: undefined };
  if (kind === "json") {
    try { return { value: JSON.parse(raw) }; } catch { return { value: raw }; } // the server takes "a, b" too
  }
  const number = Number(String(raw).trim());
  if (String(raw).trim() === "" || !Number.isFinite(number)) return { problem: "not a number" };
  if (kind === "count" && !Number.isInteger(number)) return { problem: "a whole number" };
  return { value: number };
}

function samplingProblems(values) {
  return SAMPLERS.map(([name, , label, kind]) => [name, label, samplerValue(kind, values[name]).problem])
    .filter(([, , problem]) => problem);
}

function samplingBody(values) {
  const body = {};
  for (const [name, , , kind] of SAMPLERS) {
    const { value } = samplerValue(kind, values[name]);
    if (value !== undefined) body[name] = value;
  }
  return body;
}

function characterDescription(s, c) {
  const macros = { char: c.name, user: userName(s) };
  const description = substituteMacros(c.description, macros);
  if (!c.useExamples || !c.examples?.trim()) return description;
  return `${description}\n\nExample dialogue:\n${substituteMacros(c.examples, macros)}`.trim();
}

// Every card's scenario is kept: the scene's own, then each character's under its name.
function scenarioText(s) {
  const parts = [s.scenario.trim()];
  for (const c of s.cast) {
    if (c.scenario?.trim()) parts.push(`${c.name}: ${substituteMacros(c.scenario, { char: c.name, user: userName(s) }).trim()}`);
  }
  return parts.filter(Boolean).join("\n\n");
}

function lorebookBody(s) {
  const entries = s.lorebook.entries.filter((e) => e.content.trim()).map((e) => ({
    keys: splitKeys(e.keys), secondary_keys: splitKeys(e.secondary_keys ?? ""), content: substituteMacros(e.content, { char: "", user: userName(s) }),
    constant: Boolean(e.constant), case_sensitive: Boolean(e.case_sensitive), whole_words: Boolean(e.whole_words),
    position: e.position, depth: Number(e.depth) || 0, order: Number(e.order) || 100, enabled: e.enabled !== false,
  }));
  if (!entries.length) return undefined;
  const budget = String(s.lorebook.token_budget ?? "").trim();
  return {
    entries, scan_depth: Number(s.lorebook.scan_depth) || 0, ...(budget ? { token_budget: Number(budget) } : {}),
  };
}

function splitKeys(text) {
  // A key written /regex/flags may hold commas: it is kept whole.
  const keys = [];
  for (const part of (text ?? "").match(/\/(?:\\.|[^/])+\/[a-z]*|[^,]+/g) ?? []) if (part.trim()) keys.push(part.trim());
  return keys;
}

// The body /v1/chat/completions takes (also what "Export" writes): `turns` to send, and who speaks next.
function chatBody(s, turns, speaker) {
  const body = {
    characters: s.cast.map((c) => ({ name: c.name, description: characterDescription(s, c), side: c.side })),
    messages: turns.map((t) => message(s, t)),
    context_overflow: "trim",
    ...samplingBody(s.sampling),
  };
  if (s.title.trim()) body.title = s.title;
  const scenario = scenarioText(s);
  if (scenario) body.scenario = scenario;
  if (s.opening.trim() && s.opening !== DEFAULT_OPENING) body.opening = s.opening;
  if (speaker) body.speaker = speaker;
  const lorebook = lorebookBody(s);
  if (lorebook) body.lorebook = lorebook;
  if (s.note.content.trim()) body.authors_note = { content: s.note.content, depth: Number(s.note.depth) || 0 };
  return body;
}

// What "Export" writes: the request body, plus each turn's alternatives (swipes) and the page's own fields, so
// that importing it gives the same scene back.
function exportBody(s) {
  const body = chatBody(s, s.turns, $("speaker").value || undefined);
  body.messages = body.messages.map((m, i) => ({ ...m, alternatives: s.turns[i].alternatives, chosen: s.turns[i].chosen }));
  body.rpserve_scene = { cast: s.cast, lorebook: s.lorebook, note: s.note, scenario: s.scenario };
  return body;
}

function sceneFromBody(body) {
  if (!body || typeof body !== "object" || !Array.isArray(body.messages ?? [])) throw new Error("not a scene file");
  const s = newScene();
  s.title = body.title ?? "";
  s.scenario = body.scenario ?? "";
  s.opening = body.opening ?? DEFAULT_OPENING;
  const speakers = new Set((body.messages ?? []).filter((m) => m.role === "assistant").map((m) => m.name));
  s.cast = (body.characters ?? []).map((c) => ({
    name: c.name ?? "", description: c.description ?? "", side: c.side ?? (speakers.has(c.name) ? "model" : "user"),
  }));
  s.turns = (body.messages ?? []).map(turnFromMessage);
  for (const [name] of SAMPLERS) {
    if (body[name] !== undefined) s.sampling[name] = name === "dry_sequence_breakers" ? JSON.stringify(body[name]) : body[name];
  }
  const own = body.rpserve_scene;
  if (own) Object.assign(s, { cast: own.cast ?? s.cast, lorebook: own.lorebook ?? s.lorebook, note: own.note ?? s.note, scenario: own.scenario ?? s.scenario });
  return completed(s);
}

function turnFromMessage(m) {
  const content = typeof m.content === "string" ? m.content : "";
  let turn;
  if (m.ooc) turn = makeTurn("ooc", "user", null, content);
  else if (m.role === "system") turn = makeTurn("narrator", "user", null, content);
  else if (m.role === "user" && !m.name) {
    const ooc = /^\(OOC:\s*([\s\S]*)\)$/.exec(content.trim());
    turn = ooc ? makeTurn("ooc", "user", null, ooc[1]) : makeTurn("narrator", "user", null, content);
  } else turn = makeTurn("character", m.role === "assistant" ? "model" : "user", m.name, content);
  if (Array.isArray(m.alternatives) && m.alternatives.length) {
    turn.alternatives = m.alternatives.map(String);
    turn.chosen = Math.min(Math.max(Number(m.chosen) || 0, 0), turn.alternatives.length - 1);
  }
  return turn;
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

// ---- The server ----

// A refused or missing key: said in the error line; the key is asked for once (later previews do not ask again).
function handleKeyError(error) {
  if (error.status !== 401 || keyAsked) return;
  keyAsked = true;
  askForKey(error.message);
}

function askForKey(reason) {
  const key = window.prompt(`${reason}\nAPI key (kept in this browser only):`, apiKey());
  if (key === null) return;
  setApiKey(key);
  showError(null);
  loadModel();
  schedulePreview();
}

async function loadModel() {
  try {
    const entry = (await (await api("/v1/models")).json()).data[0];
    modelInfo = { id: entry.id, maxLen: entry.max_model_len ?? null };
    $("model-name").textContent = entry.id;
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    handleKeyError(error);
    showError(error, "preview");
  }
}

// ---- The exact prompt, its token count and where old turns are cut ----

function schedulePreview() {
  clearTimeout(previewTimer);
  previewTimer = setTimeout(preview, 250);
}

// The turns a request is built from: never the empty bubble of a reply that is still being read.
function sentTurns(s) {
  return s.turns.filter((t) => !(running?.turns.has(t.id) && !turnText(t).trim()));
}

async function preview() {
  const s = scene();
  clearTurnErrors();
  if (!s.turns.length && !s.cast.length && !s.title.trim() && !s.scenario.trim()) {
    $("prompt").textContent = "";
    $("token-count").textContent = "";
    showCut(0);
    return;
  }
  const turns = sentTurns(s);
  const body = chatBody(s, turns, $("speaker").value || undefined);
  try {
    showRendered(await (await api("/v1/chat/render", body)).json(), turns);
    if ($("error").dataset.kind === "preview") showError(null);
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    handleKeyError(error);
    showError(error, "preview");
    // Too long even after trimming: show the whole prompt and its count, in red.
    if (error.code === "context_length_exceeded") {
      showRendered(await (await api("/v1/chat/render", { ...body, context_overflow: "error" })).json(), turns);
    }
  }
}

function showRendered(rendered, turns) {
  $("prompt").textContent = rendered.prompt;
  showCount(rendered.token_ids.length, samplingBody(scene().sampling).max_tokens ?? 0);
  showCut(rendered.trimmed_messages, turns);
  showFired(rendered.lorebook_entries ?? []);
}

// "n + reply / context": amber near the limit, red over it (the reply's max_tokens is counted in).
function showCount(tokens, reply) {
  const count = $("token-count");
  const total = tokens + reply;
  const of = modelInfo.maxLen;
  count.textContent = of ? `${tokens} + ${reply} reply / ${of} tokens` : `${tokens} tokens`;
  count.classList.toggle("near", Boolean(of) && total > of * 0.85 && total <= of);
  count.classList.toggle("over", Boolean(of) && total > of);
}

// Touches the transcript only where the cut moved (a scene of hundreds of turns previews at every change).
function showCut(trimmed, turns = []) {
  const firstKept = turns[trimmed]?.id ?? null;
  const cut = $("transcript").querySelector(".cut");
  if (trimmed === trimmedCount && (cut?.nextElementSibling?.dataset.id ?? null) === (trimmed ? firstKept : null)) return;
  trimmedCount = trimmed;
  const note = $("trim-note");
  note.hidden = !trimmed;
  note.textContent = trimmed ? `The ${trimmed} oldest turns are left out to fit the context (dimmed in the transcript).` : "";
  const leftOut = new Set(turns.slice(0, trimmed).map((t) => t.id));
  for (const item of $("transcript").querySelectorAll(".turn")) item.classList.toggle("left-out", leftOut.has(item.dataset.id));
  cut?.remove();
  if (trimmed && firstKept) {
    const first = $("transcript").querySelector(`[data-id="${firstKept}"]`);
    first?.before(field("li", { className: "cut", textContent: `${trimmed} older turns are not in the prompt` }));
  }
}

function showFired(indexes) {
  const entries = scene().lorebook.entries.filter((e) => e.content.trim());
  const names = indexes.map((i) => entries[i]?.comment || splitKeys(entries[i]?.keys)[0] || `entry ${i + 1}`);
  $("lore-fired").textContent = names.length ? `In the prompt: ${names.join(", ")}` : "";
}

// An error goes next to what it is about (a turn, a cast member) or into the error line, where it stays until
// the user dismisses it or the next action replaces it. `kind` says what cleared it: a preview only clears its own.
function showError(error, kind = "action") {
  const box = $("error");
  if (!error) {
    box.hidden = true;
    delete box.dataset.kind;
    return;
  }
  const turn = /^messages\[(\d+)\]/.exec(error.param ?? "");
  const member = /^characters\[(\d+)\]/.exec(error.param ?? "");
  if (turn && kind === "preview") {
    const id = sentTurns(scene())[Number(turn[1])]?.id;
    const slot = id && $("transcript").querySelector(`[data-id="${id}"] .turn-error`);
    if (slot) {
      slot.textContent = error.message;
      slot.hidden = false;
      return;
    }
  }
  if (member && kind === "preview") {
    const item = $("cast").children[Number(member[1])];
    if (item) {
      item.querySelector(".field-error").textContent = error.message;
      return;
    }
  }
  if (kind === "preview" && box.dataset.kind && box.dataset.kind !== "preview" && !box.hidden) return;
  $("error-text").textContent = error.message;
  box.dataset.kind = kind;
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
  $("scan-depth").value = s.lorebook.scan_depth;
  $("lore-budget").value = s.lorebook.token_budget ?? "";
  $("note").value = s.note.content;
  $("note-depth").value = s.note.depth;
  renderCast();
  renderLorebook();
  renderPresets();
  renderSampling();
  renderTranscript();
  renderChoosers();
  schedulePreview();
}

function renderSceneList() {
  $("scene-list").replaceChildren(...Object.values(state.scenes).map((s) => {
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

function field(tag, props, label) {
  const element = Object.assign(document.createElement(tag), props);
  if (label) element.setAttribute("aria-label", label);
  return element;
}

function renderCast() {
  const s = scene();
  $("cast").replaceChildren(...s.cast.map((c, index) => {
    const item = document.createElement("li");
    const name = field("input", { value: c.name, placeholder: "Name" }, "Character name");
    const side = field("select", {}, "Side");
    side.append(new Option("model side", "model", false, c.side === "model"), new Option("user side", "user", false, c.side === "user"));
    const remove = field("button", { type: "button", textContent: "Remove" }, `Remove ${c.name || "this character"}`);
    const description = field("textarea", { value: c.description, rows: 2, placeholder: "Description" }, "Character description");
    const problem = field("div", { className: "field-error", textContent: nameProblem(c.name, index) });
    name.addEventListener("input", () => {
      const old = c.name;
      c.name = name.value;
      for (const t of s.turns) if (t.kind === "character" && t.name === old) t.name = c.name;
      problem.textContent = nameProblem(c.name, index);
      renderChoosers();
      renderTranscript();
      changed();
    });
    side.addEventListener("change", () => {
      c.side = side.value;
      for (const t of s.turns) if (t.kind === "character" && t.name === c.name) t.side = c.side;
      renderChoosers();
      renderTranscript();
      changed();
    });
    description.addEventListener("input", () => { c.description = description.value; changed(); });
    remove.addEventListener("click", () => { s.cast.splice(index, 1); renderCast(); renderChoosers(); changed(); });
    const row = document.createElement("div");
    row.className = "row";
    row.append(name, side, remove);
    item.append(row, description);
    if (c.scenario !== undefined) {
      const scenario = field("textarea", { value: c.scenario, rows: 2, placeholder: "This character's scenario" }, `${c.name}'s scenario`);
      scenario.addEventListener("input", () => { c.scenario = scenario.value; changed(); });
      item.append(scenario);
    }
    if (c.examples?.trim()) {
      const box = field("input", { type: "checkbox", checked: Boolean(c.useExamples) });
      box.addEventListener("change", () => { c.useExamples = box.checked; changed(); });
      const label = field("label", { className: "inline check" });
      label.append(box, " include the card's example dialogue");
      item.append(label);
    }
    item.append(problem);
    return item;
  }));
}

function renderLorebook() {
  const s = scene();
  $("lorebook").replaceChildren(...s.lorebook.entries.map((entry, index) => {
    const item = field("li", { className: entry.enabled === false ? "off" : "" });
    const keys = field("input", { value: entry.keys, placeholder: "Keys, comma-separated (/regex/i too)" }, `Entry ${index + 1} keys`);
    const content = field("textarea", { value: entry.content, rows: 2, placeholder: "What the prompt gets when a key appears" }, `Entry ${index + 1} content`);
    const position = field("select", {}, `Entry ${index + 1} position`);
    for (const [value, text] of [["before_characters", "before the characters"], ["after_characters", "after the characters"], ["at_depth", "in the transcript, at depth"]]) {
      position.append(new Option(text, value, false, entry.position === value));
    }
    const depth = field("input", { type: "number", min: 0, value: entry.depth ?? 4 }, `Entry ${index + 1} depth`);
    const checks = ["constant", "case_sensitive", "whole_words"].map((flag) => {
      const box = field("input", { type: "checkbox", checked: Boolean(entry[flag]) });
      box.addEventListener("change", () => { entry[flag] = box.checked; changed(); });
      const label = field("label", { className: "inline check" });
      label.append(box, ` ${flag.replace("_", " ")}`);
      return label;
    });
    const remove = field("button", { type: "button", textContent: "Remove" }, `Remove entry ${index + 1}`);
    keys.addEventListener("input", () => { entry.keys = keys.value; changed(); });
    content.addEventListener("input", () => { entry.content = content.value; changed(); });
    position.addEventListener("change", () => { entry.position = position.value; changed(); });
    depth.addEventListener("input", () => { entry.depth = depth.value; changed(); });
    remove.addEventListener("click", () => { s.lorebook.entries.splice(index, 1); renderLorebook(); changed(); });
    const row = field("div", { className: "row" });
    row.append(position, depth, ...checks, remove);
    item.append(keys, content, row);
    return item;
  }));
}

function presets() {
  try {
    return JSON.parse(localStorage.getItem(PRESET_STORE)) ?? {};
  } catch {
    return {};
  }
}

function renderPresets() {
  const names = [CARD_PRESET, ...Object.keys(presets())];
  $("preset").replaceChildren(new Option("Choose a preset…", ""), ...names.map((n) => new Option(n, n)));
}

function renderSampling() {
  const s = scene();
  const fields = (list) => list.map(([name, , text, kind]) => {
    const label = document.createElement("label");
    const input = Object.assign(document.createElement("input"), { value: s.sampling[name] ?? "", name });
    input.dataset.field = name;
    const problem = field("span", { className: "field-error", id: `problem-${name}` });
    input.setAttribute("aria-describedby", problem.id);
    const check = () => {
      const { problem: reason } = samplerValue(kind, input.value);
      problem.textContent = reason ? `${text}: ${reason}` : "";
      input.setAttribute("aria-invalid", reason ? "true" : "false");
    };
    input.addEventListener("input", () => { s.sampling[name] = input.value; check(); changed(); });
    check();
    label.append(text, input, problem);
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
  const transcript = $("transcript");
  const atBottom = transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 40;
  transcript.replaceChildren(...scene().turns.map((turn, index) => turnElement(turn, index)));
  trimmedCount = 0; // the cut is drawn again by the next preview
  if (atBottom || running) transcript.scrollTop = transcript.scrollHeight;
  schedulePreview();
}

function showText(item, turn) {
  item.querySelector(".text").replaceChildren(markedUp(turnText(turn)));
}

function turnElement(turn, index) {
  const item = $("turn-template").content.firstElementChild.cloneNode(true);
  item.dataset.id = turn.id;
  item.classList.add(turn.kind === "character" ? turn.side : turn.kind);
  if (turn.kind === "character") item.style.setProperty("--hue", hueOf(turn.name));
  item.querySelector(".who").textContent = whoOf(turn);
  showText(item, turn);
  const swipes = item.querySelector(".swipes");
  if (turn.alternatives.length > 1) {
    swipes.hidden = false;
    item.querySelector(".swipe-at").textContent = `${turn.chosen + 1}/${turn.alternatives.length}`;
  }
  for (const button of item.querySelectorAll(".tools button")) button.setAttribute("aria-label", `${button.textContent} turn ${index + 1}`);
  item.querySelector(".swipe-left").addEventListener("click", () => swipe(turn, -1));
  item.querySelector(".swipe-right").addEventListener("click", () => swipe(turn, 1));
  item.querySelector(".delete").addEventListener("click", () => deleteTurn(turn));
  item.querySelector(".insert").addEventListener("click", () => insertBelow(turn));
  item.querySelector(".edit").addEventListener("click", () => editTurn(item, turn));
  const reswipe = item.querySelector(".reswipe");
  reswipe.hidden = !(turn.kind === "character" && turn.side === "model");
  reswipe.addEventListener("click", () => newSwipe(turn));
  return item;
}

function swipe(turn, step) {
  turn.chosen = (turn.chosen + step + turn.alternatives.length) % turn.alternatives.length;
  renderTranscript();
  changed();
}

// A deleted turn can be brought back from the notice under the transcript; deleting a turn being written stops
// that generation first.
function deleteTurn(turn) {
  const s = scene();
  if (running?.turns.has(turn.id)) running.controller.abort();
  const index = s.turns.indexOf(turn);
  if (index < 0) return;
  s.turns.splice(index, 1);
  undo = { sceneId: s.id, turn, index };
  $("toast-text").textContent = `Deleted a turn of ${whoOf(turn)}.`;
  $("toast").hidden = false;
  renderTranscript();
  changed();
}

function undoDelete() {
  if (!undo) return;
  const s = state.scenes[undo.sceneId];
  s?.turns.splice(Math.min(undo.index, s.turns.length), 0, undo.turn);
  undo = null;
  $("toast").hidden = true;
  renderTranscript();
  changed();
}

// Editing a turn: Enter or a click elsewhere saves, Escape cancels; the speaker can be changed too.
function editTurn(item, turn) {
  const area = field("textarea", { value: turnText(turn) }, "Edit turn");
  const who = field("select", {}, "Who says this turn");
  const choices = writerChoices();
  for (const [value, text] of choices) who.append(new Option(text, value));
  who.value = turn.kind === "character" ? `character:${turn.name}` : turn.kind;
  let finished = false;
  const finish = (keep) => {
    if (finished) return;
    finished = true;
    if (keep) {
      turn.alternatives[turn.chosen] = area.value;
      Object.assign(turn, writerTurnFields(who.value));
      changed();
    }
    renderTranscript();
  };
  area.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); finish(true); }
    if (event.key === "Escape") { event.preventDefault(); event.stopPropagation(); finish(false); }
  });
  const editor = field("div", { className: "editor" });
  editor.addEventListener("focusout", (event) => { if (!editor.contains(event.relatedTarget)) finish(true); });
  editor.append(who, area);
  item.querySelector(".text").replaceChildren(editor);
  area.focus();
}

function insertBelow(turn) {
  const s = scene();
  const index = s.turns.indexOf(turn);
  const [kind, side, name] = writerChoice();
  const inserted = makeTurn(kind, side, name, "...");
  s.turns.splice(index + 1, 0, inserted);
  renderTranscript();
  editTurn($("transcript").querySelector(`[data-id="${inserted.id}"]`), inserted);
}

// "Write as": any cast member, a narrator note or an OOC note. "Speaks next": any model-side character.
function writerChoices() {
  const s = scene();
  return [
    ...s.cast.filter((c) => c.name && !nameProblem(c.name, s.cast.indexOf(c))).map((c) => [`character:${c.name}`, c.name]),
    ["narrator", "Narrator note"], ["ooc", "OOC note"],
  ];
}

function writerTurnFields(value) {
  if (value === "ooc" || value === "narrator") return { kind: value, side: "user", name: null };
  const name = value.slice("character:".length);
  return { kind: "character", side: scene().cast.find((c) => c.name === name)?.side ?? "user", name };
}

function renderChoosers() {
  const s = scene();
  const writer = $("writer");
  writer.replaceChildren(...writerChoices().map(([value, text]) => new Option(text, value)));
  const userSide = s.cast.find((c) => c.side === "user" && c.name);
  const picked = [...writer.options].some((o) => o.value === writerPick);
  writer.value = picked ? writerPick : (userSide ? `character:${userSide.name}` : "narrator");
  const speaker = $("speaker");
  const keepSpeaker = speaker.value;
  speaker.replaceChildren(...s.cast.filter((c) => c.side === "model" && c.name).map((c) => new Option(c.name, c.name)));
  if ([...speaker.options].some((o) => o.value === keepSpeaker)) speaker.value = keepSpeaker;
}

function writerChoice() {
  const { kind, side, name } = writerTurnFields($("writer").value || "narrator");
  return [kind, side, name];
}

// ---- Generation ----

function setRunning(run) {
  running = run;
  $("stop").disabled = !run;
  for (const id of ["generate", "regenerate", "continue-turn", "send"]) $(id).disabled = Boolean(run);
}

function ready() {
  const problems = samplingProblems(scene().sampling);
  if (!problems.length) return true;
  showError(new ApiError(400, `Fix the sampler fields first: ${problems.map(([, label, p]) => `${label} is ${p}`).join("; ")}.`));
  return false;
}

function announce(text) {
  $("announce").textContent = text;
}

async function generate(options = {}) {
  const s = scene();
  const speaker = options.speaker ?? $("speaker").value;
  if (!speaker) return showError(new ApiError(400, "Add a model-side character to the cast: it speaks next."));
  if (running || !ready()) return;
  showError(null);
  const turns = options.single ? 1 : Math.min(Math.max(Number($("turns").value) || 1, 1), 16);
  const history = options.history ?? s.turns.slice();
  const body = { ...chatBody(s, history, speaker), stream: true, max_turns: turns };
  if (turns > 1 && $("stop-at-user").checked) body.stop_at_user_turn = true;
  // The turns this generation writes: the speaker's first, then any the model goes on to write.
  const target = options.into ?? makeTurn("character", "model", speaker, "");
  if (!options.into) s.turns.push(target);
  const base = options.into ? target.alternatives.length : 0;
  if (options.into) { target.alternatives.push(""); target.chosen = base; }
  const written = [target];
  const run = { controller: new AbortController(), turns: new Set([target.id]) };
  setRunning(run);
  renderTranscript();
  markStreaming(target, true);
  let text = "";
  try {
    const response = await api("/v1/chat/completions", body, run.controller.signal);
    for await (const chunk of events(response)) {
      if (chunk.progress) { showProgress(target, chunk.progress); continue; }
      const choice = chunk.choices?.[0];
      if (!choice) continue;
      if (choice.delta?.content) {
        text += choice.delta.content;
        showProgress(target, null);
        showStreamed(s, written, settledText(text), speaker, run);
        saveSoon(); // a reload mid-stream keeps what has come
      }
      if (choice.finish_reason && choice.messages) placeTurns(s, written, choice.messages, run);
    }
    if (turns <= 1) showStreamed(s, written, text, speaker, run);
  } catch (error) {
    if (error.name !== "AbortError") {
      if (error instanceof ApiError) handleKeyError(error);
      showError(error instanceof ApiError ? error : new ApiError(0, String(error)));
    }
  } finally {
    setRunning(null);
    const done = written.filter((t) => turnText(t).trim());
    if (done.length) announce(`${done.map((t) => t.name ?? whoOf(t)).join(", ")} wrote ${done.length === 1 ? "a turn" : `${done.length} turns`}.`);
    if (!turnText(target) && s.turns.includes(target)) dropEmpty(s, target, base);
    renderTranscript();
    changed();
    $("input").focus();
  }
}

function showProgress(turn, progress) {
  const slot = document.querySelector(`[data-id="${turn.id}"] .progress`);
  if (!slot) return;
  slot.hidden = !progress;
  slot.textContent = progress ? `Reading the prompt: ${progress[0]} of ${progress[1]} tokens` : "";
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
function showStreamed(s, written, text, speaker, run) {
  placeTurns(s, written, parseTurns(text, speaker), run);
}

function placeTurns(s, written, parsed, run) {
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
      run.turns.add(turn.id);
      const after = s.turns.indexOf(written[i - 1]);
      if (after >= 0) s.turns.splice(after + 1, 0, turn);
    } else {
      written[i].alternatives[0] = t.content;
    }
  });
  for (const turn of written) {
    if (!s.turns.includes(turn)) continue;
    const item = document.querySelector(`[data-id="${turn.id}"]`);
    if (item) showText(item, turn);
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
  if (!last) return showError(new ApiError(400, "The last turn is not a model-side character's: nothing to regenerate."));
  generate({ speaker: last.name, history: scene().turns.slice(0, -1), into: last });
}

// A new alternative for any model turn, written from the turns before it (one turn, whatever "turns" says).
function newSwipe(turn) {
  const s = scene();
  generate({ speaker: turn.name, history: s.turns.slice(0, s.turns.indexOf(turn)), into: turn, single: true });
}

// Continue: the model goes on writing the last model turn. The prompt is the rendered conversation up to that
// turn's label, plus its text so far, sent as a raw completion.
async function continueTurn() {
  const s = scene();
  const last = lastModelTurn();
  if (!last) return showError(new ApiError(400, "The last turn is not a model-side character's: nothing to continue."));
  if (running || !ready()) return;
  showError(null);
  const run = { controller: new AbortController(), turns: new Set([last.id]) };
  setRunning(run);
  markStreaming(last, true);
  try {
    const rendered = await api("/v1/chat/render", chatBody(s, s.turns.slice(0, -1), last.name), run.controller.signal);
    const prompt = `${(await rendered.json()).prompt} ${turnText(last)}`;
    const body = { prompt, stream: true, ...samplingBody(s.sampling) };
    const response = await api("/v1/completions", body, run.controller.signal);
    let added = "";
    const start = turnText(last);
    for await (const chunk of events(response)) {
      if (chunk.progress) { showProgress(last, chunk.progress); continue; }
      added += chunk.choices?.[0]?.text ?? "";
      showProgress(last, null);
      last.alternatives[last.chosen] = start + added.replace(/\s+$/, "");
      const item = document.querySelector(`[data-id="${last.id}"]`);
      if (item) showText(item, last);
      saveSoon();
    }
  } catch (error) {
    if (error.name !== "AbortError") showError(error instanceof ApiError ? error : new ApiError(0, String(error)));
  } finally {
    setRunning(null);
    renderTranscript();
    changed();
    $("input").focus();
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
  download(`${(s.title.trim() || "scene").replace(/[^\w.-]+/g, "_")}.json`, JSON.stringify(exportBody(s), null, 2));
}

// An imported scene becomes the current one only once it is saved: a full storage leaves everything as it was.
async function importScene(file) {
  let imported;
  try {
    imported = sceneFromBody(JSON.parse(await file.text()));
  } catch (error) {
    return showError(new ApiError(400, `Cannot import ${file.name}: ${error.message}`));
  }
  try {
    await store.put(imported, imported.id);
  } catch {
    return showError(new ApiError(0, `Cannot import ${file.name}: the browser's storage for this page is full. Delete old scenes to make room.`), "storage");
  }
  state.scenes[imported.id] = imported;
  state.current = imported.id;
  render();
}

// A SillyTavern character card joins the cast on the model side: its greeting opens an empty transcript (the
// alternate greetings as its swipes), its example dialogue can be included, its lorebook joins the scene's.
async function importCard(file) {
  let data;
  try {
    data = cardData(JSON.parse(cardJson(new Uint8Array(await file.arrayBuffer()))));
  } catch (error) {
    return showError(new ApiError(400, `Cannot read the character card ${file.name}: ${error.message}`));
  }
  const s = scene();
  const name = data.name.trim();
  const description = [data.description, data.personality].filter((t) => t && t.trim()).join("\n");
  s.cast.push({ name, description, side: "model", scenario: data.scenario ?? "", examples: exampleText(data.mes_example), useExamples: false });
  const greetings = [data.first_mes, ...(data.alternate_greetings ?? [])].filter((g) => g && g.trim());
  if (greetings.length && !s.turns.length) {
    const opening = makeTurn("character", "model", name, "");
    opening.alternatives = greetings.map((g) => substituteMacros(g, { char: name, user: userName(s) }).trim());
    s.turns.push(opening);
  }
  s.lorebook.entries.push(...lorebookOf(data.character_book));
  if (!s.title.trim()) s.title = name;
  render();
  changed();
}

// ---- Presets ----

function applyPreset(name) {
  const s = scene();
  s.sampling = name === CARD_PRESET ? cardSampling() : { ...cardSampling(), ...presets()[name] };
  renderSampling();
  changed();
}

function savePreset() {
  const name = window.prompt("Name of the new preset:");
  if (!name || !name.trim() || name === CARD_PRESET) return;
  localStorage.setItem(PRESET_STORE, JSON.stringify({ ...presets(), [name.trim()]: scene().sampling }));
  renderPresets();
  $("preset").value = name.trim();
}

// ---- Wiring ----

function switchScene(id) {
  state.current = id;
  persist();
  render();
}

function wire() {
  $("scene-list").addEventListener("change", () => switchScene($("scene-list").value));
  $("new-scene").addEventListener("click", () => {
    const s = newScene();
    state.scenes[s.id] = s;
    switchScene(s.id);
  });
  $("delete-scene").addEventListener("click", async () => {
    if (!window.confirm("Delete this scene from this browser?")) return;
    await store.remove(state.current);
    delete state.scenes[state.current];
    if (!Object.keys(state.scenes).length) { const s = newScene(); state.scenes[s.id] = s; }
    switchScene(Object.keys(state.scenes)[0]);
  });
  $("export-scene").addEventListener("click", exportScene);
  $("import-scene-button").addEventListener("click", () => $("import-scene").click());
  $("import-card-button").addEventListener("click", () => $("import-card").click());
  $("import-scene").addEventListener("change", (e) => { if (e.target.files[0]) importScene(e.target.files[0]); e.target.value = ""; });
  $("import-card").addEventListener("change", (e) => { if (e.target.files[0]) importCard(e.target.files[0]); e.target.value = ""; });
  $("set-key").addEventListener("click", () => { keyAsked = true; askForKey("Set the server's API key."); });
  $("toggle-setup").addEventListener("click", () => {
    const open = document.body.classList.toggle("setup-open");
    $("toggle-setup").setAttribute("aria-expanded", String(open));
    $("toggle-setup").textContent = open ? "Back to the chat" : "Scene setup";
  });
  for (const id of ["title", "opening", "scenario"]) {
    $(id).addEventListener("input", () => {
      scene()[id] = $(id).value;
      if (id === "title") renderSceneList();
      changed();
    });
  }
  $("scan-depth").addEventListener("input", () => { scene().lorebook.scan_depth = $("scan-depth").value; changed(); });
  $("lore-budget").addEventListener("input", () => { scene().lorebook.token_budget = $("lore-budget").value; changed(); });
  $("note").addEventListener("input", () => { scene().note.content = $("note").value; changed(); });
  $("note-depth").addEventListener("input", () => { scene().note.depth = $("note-depth").value; changed(); });
  $("add-lore").addEventListener("click", () => {
    scene().lorebook.entries.push({ keys: "", content: "", position: "before_characters", depth: 4, order: 100, enabled: true });
    renderLorebook();
    $("lorebook").lastElementChild.querySelector("input").focus();
  });
  $("add-character").addEventListener("click", () => {
    scene().cast.push({ name: "", description: "", side: scene().cast.some((c) => c.side === "user") ? "model" : "user" });
    renderCast();
    changed();
    $("cast").lastElementChild.querySelector("input").focus();
  });
  $("preset").addEventListener("change", () => { if ($("preset").value) applyPreset($("preset").value); });
  $("save-preset").addEventListener("click", savePreset);
  $("writer").addEventListener("change", () => { writerPick = $("writer").value; });
  $("composer").addEventListener("submit", send);
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.ctrlKey && !event.metaKey) send(event);
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      if ($("input").value.trim()) send();
      generate();
    }
    if (event.key === "Escape" && running) { event.preventDefault(); running.controller.abort(); }
  });
  $("generate").addEventListener("click", () => generate());
  $("regenerate").addEventListener("click", regenerate);
  $("continue-turn").addEventListener("click", continueTurn);
  $("stop").addEventListener("click", () => running?.controller.abort());
  $("speaker").addEventListener("change", schedulePreview);
  $("dismiss-error").addEventListener("click", () => { showError(null); $("input").focus(); });
  $("undo").addEventListener("click", undoDelete);
}

async function start() {
  wire();
  try {
    store = await SceneStore.open();
    const loaded = await store.load();
    state.scenes = Object.fromEntries(Object.entries(loaded.scenes).map(([id, s]) => [id, completed(s)]));
    state.current = state.scenes[loaded.current] ? loaded.current : Object.keys(state.scenes)[0];
  } catch (error) {
    showError(new ApiError(0, `This browser does not let the page keep scenes (${error.message}): they last until the tab closes.`), "storage");
    store = { put: async () => {}, remove: async () => {} };
  }
  if (!state.current) {
    const s = newScene();
    state.scenes[s.id] = s;
    state.current = s.id;
  }
  render();
  document.body.dataset.ready = "true"; // the scenes are loaded (tests wait for this)
  await loadModel();
  schedulePreview();
}

start();

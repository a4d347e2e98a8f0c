// SillyTavern character cards (Character Card V1, V2 and V3: JSON, or a PNG carrying the JSON base64-encoded
// in a `chara` or `ccv3` text chunk) and the macros their text uses.

// The card's data, whatever its version: V2 and V3 keep it under `data`, V1 at the top.
export function cardData(card) {
  const data = card.data ?? card;
  if (typeof data.name !== "string" || !data.name.trim()) throw new Error("the card has no character name");
  return data;
}

// A card file's JSON text: a PNG's `ccv3` chunk (V3) when it has one, else its `chara` chunk.
export function cardJson(bytes) {
  if (!(bytes[0] === 0x89 && bytes[1] === 0x50 && bytes[2] === 0x4e && bytes[3] === 0x47)) {
    return new TextDecoder().decode(bytes);
  }
  const chunks = pngTextChunks(bytes);
  const text = chunks.ccv3 ?? chunks.chara;
  if (!text) throw new Error("the PNG has no 'chara' or 'ccv3' text chunk");
  const binary = atob(text.trim());
  return new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0)));
}

function pngTextChunks(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const found = {};
  for (let at = 8; at + 8 <= bytes.length;) {
    const length = view.getUint32(at);
    const type = String.fromCharCode(...bytes.slice(at + 4, at + 8));
    if (type === "tEXt") {
      const chunk = bytes.slice(at + 8, at + 8 + length);
      const zero = chunk.indexOf(0);
      const keyword = new TextDecoder("latin1").decode(chunk.slice(0, zero)).toLowerCase();
      found[keyword] = new TextDecoder("latin1").decode(chunk.slice(zero + 1));
    }
    if (type === "IEND") break;
    at += 12 + length;
  }
  return found;
}

// Example dialogue as the card writes it: blocks opened by <START>; returned as plain text, one block after another.
export function exampleText(mesExample) {
  return (mesExample ?? "").split(/<START>/i).map((block) => block.trim()).filter(Boolean).join("\n\n");
}

// The common macros of SillyTavern cards. `{{user}}` is the character the card is played against.
export function substituteMacros(text, { char, user }) {
  if (!text) return "";
  const now = new Date();
  return text
    .replace(/\{\{\/\/[\s\S]*?\}\}/g, "")
    .replace(/\{\{(char|charname)\}\}|<BOT>/gi, char ?? "")
    .replace(/\{\{(user|persona)\}\}|<USER>/gi, user ?? "")
    .replace(/\{\{newline\}\}/gi, "\n")
    .replace(/\{\{time\}\}/gi, now.toLocaleTimeString())
    .replace(/\{\{date\}\}/gi, now.toLocaleDateString())
    .replace(/\{\{weekday\}\}/gi, now.toLocaleDateString(undefined, { weekday: "long" }))
    .replace(/\{\{noop\}\}/gi, "")
    .replace(/\{\{trim\}\}/gi, "");
}

// SillyTavern's World Info positions (extensions.position): 0 before the character, 1 after, 4 at a depth; the
// others (author's note and example positions) land nearest in meaning.
const ST_POSITIONS = { 0: "before_characters", 1: "after_characters", 2: "at_depth", 3: "at_depth", 4: "at_depth" };

// A card's `character_book` as the page's lorebook entries.
export function lorebookOf(book) {
  return (book?.entries ?? []).map((entry) => {
    const extensions = entry.extensions ?? {};
    const position = ST_POSITIONS[extensions.position]
      ?? (entry.position === "after_char" ? "after_characters" : "before_characters");
    return {
      keys: (entry.keys ?? []).join(", "),
      secondary_keys: (entry.secondary_keys ?? []).join(", "),
      content: entry.content ?? "",
      constant: Boolean(entry.constant),
      case_sensitive: Boolean(entry.case_sensitive ?? extensions.case_sensitive),
      whole_words: Boolean(extensions.match_whole_words),
      position,
      depth: Number(extensions.depth ?? 4),
      order: Number(entry.insertion_order ?? 100),
      enabled: entry.enabled !== false,
      comment: entry.comment ?? entry.name ?? "",
    };
  });
}

// A turn's text as DOM nodes: `*actions*`, "quoted speech", **strong** and _emphasis_ styled. Only text nodes
// are ever made from the model's words: no HTML it writes is ever interpreted.

const PATTERN = /(\*\*[^*\n]+\*\*|\*[^*\n]+\*|"[^"\n]*"|“[^”\n]*”|\b_[^_\n]+_\b)/g;

export function markedUp(text) {
  const fragment = document.createDocumentFragment();
  let at = 0;
  for (const match of text.matchAll(PATTERN)) {
    if (match.index > at) fragment.append(text.slice(at, match.index));
    fragment.append(styled(match[0]));
    at = match.index + match[0].length;
  }
  if (at < text.length) fragment.append(text.slice(at));
  return fragment;
}

function styled(piece) {
  if (piece.startsWith("**")) return element("strong", piece.slice(2, -2));
  if (piece.startsWith("*")) return element("em", piece, "action");
  if (piece.startsWith("_")) return element("em", piece.slice(1, -1));
  return element("span", piece, "quote");
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  node.textContent = text;
  if (className) node.className = className;
  return node;
}

// A steady colour per character name (a hue from the name), so each speaker is told apart at a glance.
export function hueOf(name) {
  let hash = 0;
  for (const char of name ?? "") hash = (hash * 31 + char.codePointAt(0)) >>> 0;
  return hash % 360;
}

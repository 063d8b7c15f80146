// DOM building without HTML parsing: every string becomes a text node or an attribute value,
// so names, ids and bodies (attacker-controlled) can never turn into markup.

/** An element with attributes (`on*` are event listeners) and children (strings become text). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  fill(el, children);
  return el;
}

/** Append children (nodes, strings, numbers, nested arrays; null and false are skipped). */
export function fill(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Replace an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  return fill(el, children);
}

export function $(id) {
  return document.getElementById(id);
}

const number = new Intl.NumberFormat('en-US');

/** A count with thousands separators; '—' for a missing one. */
export function fmt(n) {
  return n === null || n === undefined ? '—' : number.format(n);
}

/** A rate per second, signed when asked ('+1.5/s'); '—' before there are two samples. */
export function rate(r, signed = false) {
  if (r === null || r === undefined || !Number.isFinite(r)) return '—';
  const rounded = Math.abs(r) >= 100 ? Math.round(r) : Math.round(r * 10) / 10;
  const sign = signed && rounded > 0 ? '+' : '';
  return `${sign}${number.format(rounded)}/s`;
}

/** Whole seconds as '45 s', '12 m 5 s', '3 h 2 m', '2 d 4 h'. */
export function duration(s) {
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} m ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} m`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

/** Bytes as '812 B', '3.1 KiB', '2.0 MiB'. */
export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1048576).toFixed(1)} MiB`;
}
